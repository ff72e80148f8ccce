"""Recording overhead: training steps/s without recording vs recording every step, side by side.

    .venv/bin/python benchmarks/record_overhead.py [--trials 5]

For each model, trials alternate between the two loops in the same process (the machine is shared and
noisy; alternating cancels slow drifts), and the table reports medians and their ratio.

- unrecorded: the jitted training step alone, as a user would write it (no probes, no file).
- probe frame, no writer: the jitted step that also computes the probe frame, frames discarded
  (separates the cost of the extra forward pass from the cost of getting frames to disk).
- recorded:   the jitted step that also computes the probe frame, every step, with the frame and the
              training metrics handed to the background HDF5 writer (a real run file in a temp folder),
              and the analysis Grams on the recorder's own analysis schedule (every 7th step for
              learn_to_see, every 98th for keras_fashion), exactly as `emergence record` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments import get_experiment
from recorder.async_writer import AsyncRunWriter
from recorder.data import load_dataset
from recorder.models import build_model
from recorder.probes import choose_probes
from recorder.run import analysis_layout, epoch_permutation, kernel_layers_of, layer_specs, plan
from recorder.schedule import recorded_steps
from recorder.summary import summarize
from recorder.train import make_optimizer, make_step_functions, to_inputs
from recorder.writer import H5RunWriter, RunLayout

CASES = (("learn_to_see", 8), ("keras_fashion", 60))  # (experiment, steps per trial)
PAUSE_S = 0.5


def bench(experiment: str, steps: int, trials: int, folder: Path, compression: str = "gzip",
          others: dict[str, Callable[[int], float]] | None = None) -> dict:
    """Medians of alternating trials; `others` (name -> run(steps) -> steps/s) join every trial's rotation."""
    config = get_experiment(experiment)
    ds = load_dataset(config.dataset)
    model = build_model(config.model, ds.input_shape, 10, config.activation, config.seed)
    summary = summarize(model, ds.input_shape)
    kernels = kernel_layers_of(config, summary)
    fns = make_step_functions(model, make_optimizer(config.optimizer, config.learning_rate, config.momentum), kernels, jnp.float16)
    probe_idx = choose_probes(ds)
    # recording every step, the recorder analyses every K-th step (K = 7 for learn_to_see, 98 for keras_fashion)
    analysis = analysis_layout(config, ds, recorded_steps("every", plan(config, ds)[1]))
    every_k = int(analysis.steps[1] - analysis.steps[0]) if analysis is not None else 0
    layout = RunLayout(
        layers=layer_specs(summary, config.activation, kernels),
        num_classes=10, probe_images=ds.test_images[probe_idx], probe_labels=ds.test_labels[probe_idx],
        probe_indices=probe_idx, probe_dataset=ds.name,
        attrs={"experiment": experiment, "config_json": config.to_json(), "versions_json": "{}",
               "summary_json": "{}", "class_names_json": "[]", "planned_steps": 0, "record_schedule": "every"},
        compression=compression,
        analysis=analysis,
    )
    train_x = jax.device_put(ds.train_images)
    train_y = jax.device_put(ds.train_labels.astype(np.int32))
    probe_x = to_inputs(jax.device_put(ds.test_images[probe_idx]))
    perm = epoch_permutation(0, 0, len(ds.train_labels))
    b = config.batch_size
    batches = [perm[i * b:(i + 1) * b] for i in range(steps)]
    state = fns.init_state

    def unrecorded(state):
        for idx in batches:
            state, metrics = fns.train_step(state, train_x, train_y, idx)
        jax.block_until_ready((state, metrics))
        return state

    def probes_only(state):
        for idx in batches:
            state, metrics, frame = fns.recorded_step(state, train_x, train_y, idx, probe_x)
        jax.block_until_ready((state, metrics, frame))
        return state

    analysis_x = to_inputs(jax.device_put(ds.test_images[analysis.indices])) if analysis is not None else None

    done = [0]  # steps recorded so far, across trials, so that the analysis rate is the recorder's

    def recorded(state, writer):
        for idx in batches:
            done[0] += 1
            step = done[0]
            if every_k and step % every_k == 0:
                state, metrics, frame = fns.analysed_step(state, train_x, train_y, idx, probe_x, analysis_x)
            else:
                state, metrics, frame = fns.recorded_step(state, train_x, train_y, idx, probe_x)
            writer.submit(lambda w, f, s=step: w.write_frame(s, 0.0, f), frame)
            writer.submit(lambda w, m, s=step: w.write_train(np.array([s]), m["loss"], m["accuracy"], np.array([0.0])), metrics)
        writer.wait()  # everything on disk (flushed at least once a second) before the clock stops
        jax.block_until_ready(state)
        return state

    writer = AsyncRunWriter(H5RunWriter(folder / f"{experiment}.h5", layout))
    plain_writer = AsyncRunWriter(H5RunWriter(folder / f"{experiment}-nice0.h5", layout), nice=0)
    state = recorded(unrecorded(state), writer)  # compile both and warm the writer
    state = recorded(state, plain_writer)
    if analysis is not None:  # compile the analysed step too, outside the timed loops
        state = jax.block_until_ready(fns.analysed_step(state, train_x, train_y, batches[0], probe_x, analysis_x))[0]
    state = probes_only(state)
    loops = {"unrecorded": unrecorded, "probes": probes_only, "recorded": lambda s: recorded(s, writer),
             "recorded, writer at normal priority": lambda s: recorded(s, plain_writer)}
    times: dict[str, list[float]] = {name: [] for name in [*loops, *(others or {})]}
    cpu: dict[str, list[float]] = {name: [] for name in loops}  # process CPU seconds per step, all threads
    order = [*loops, *(others or {})]
    for trial in range(trials):
        # rotate the order every trial, and pause between loops: PyTorch's OpenMP threads spin for a while
        # after their work, which would otherwise slow whichever loop comes next
        for name in order[trial % len(order):] + order[: trial % len(order)]:
            time.sleep(PAUSE_S)
            if name in loops:
                t, c = time.perf_counter(), _cpu_seconds()
                state = loops[name](state)
                times[name].append(steps / (time.perf_counter() - t))
                cpu[name].append((_cpu_seconds() - c) / steps)
            else:
                times[name].append(others[name](steps))
    writer.close("completed")
    plain_writer.close("completed")
    un, pr, rec = (statistics.median(times[k]) for k in ("unrecorded", "probes", "recorded"))
    cpu_un, cpu_pr, cpu_rec = (statistics.median(cpu[k]) for k in ("unrecorded", "probes", "recorded"))
    return {"experiment": experiment, "batch": b, "unrecorded": un, "probes": pr, "recorded": rec, "ratio": rec / un,
            "paired_ratio": statistics.median(r / u for r, u in zip(times["recorded"], times["unrecorded"])),
            "nice0": statistics.median(times["recorded, writer at normal priority"]),
            "cpu_unrecorded": cpu_un, "cpu_probes": cpu_pr, "cpu_recorded": cpu_rec, "cpu_ratio": cpu_un / cpu_rec,
            "spread": (min(times["recorded"]) / max(times["unrecorded"]), max(times["recorded"]) / min(times["unrecorded"])),
            "others": {name: statistics.median(times[name]) for name in others or {}}, "times": times}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (every thread): the work done, which a busy neighbour on a
    shared machine slows down far less than it slows down wall-clock time."""
    t = os.times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--compression", default="gzip", help="run-file compression: gzip (default), lzf, zstd, none")
    args = parser.parse_args()
    print(f"JAX {jax.__version__}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{args.trials} alternating trials per loop, medians; run-file compression {args.compression}")
    print()
    print("| model | batch | unrecorded steps/s | step with probe frame, no writer | recorded every step, steps/s | "
          "ratio recorded/unrecorded | median of paired trial ratios | ratio range | CPU ms per step, unrecorded / "
          "probe frame / recorded | CPU ratio | recorded, writer thread at normal priority: steps/s (ratio) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for experiment, steps in CASES:
            r = bench(experiment, steps, args.trials, Path(folder), args.compression)
            print(f"| {r['experiment']} | {r['batch']} | {r['unrecorded']:.2f} | {r['probes']:.2f} | {r['recorded']:.2f} | "
                  f"{r['ratio']:.3f} | {r['paired_ratio']:.3f} | {r['spread'][0]:.2f}–{r['spread'][1]:.2f} | "
                  f"{1000 * r['cpu_unrecorded']:.1f} / {1000 * r['cpu_probes']:.1f} / {1000 * r['cpu_recorded']:.1f} | {r['cpu_ratio']:.3f} | "
                  f"{r['nice0']:.2f} ({r['nice0'] / r['unrecorded']:.3f}) |", flush=True)


if __name__ == "__main__":
    main()
