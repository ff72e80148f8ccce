"""Recording overhead: training steps/s without recording vs recording every step, side by side.

    .venv/bin/python benchmarks/record_overhead.py [--trials 5]

For each model, trials alternate between the two loops in the same process (the machine is shared and
noisy; alternating cancels slow drifts), and the table reports medians and their ratio.

- unrecorded: the jitted training step alone, as a user would write it (no probes, no file).
- probe frame, no writer: the jitted step that also computes the probe frame, frames discarded
  (separates the cost of the extra forward pass from the cost of getting frames to disk).
- recorded:   the jitted step that also computes the probe frame, every step, with the frame and the
              training metrics handed to the background HDF5 writer (a real run file in a temp folder).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import get_experiment
from recorder.async_writer import AsyncRunWriter
from recorder.data import load_dataset
from recorder.models import build_model
from recorder.probes import choose_probes
from recorder.run import epoch_permutation, kernel_layers_of, layer_specs
from recorder.summary import summarize
from recorder.train import make_optimizer, make_step_functions, to_inputs
from recorder.writer import H5RunWriter, RunLayout

CASES = (("learn_to_see", 8), ("keras_fashion", 60))  # (experiment, steps per trial)


def bench(experiment: str, steps: int, trials: int, folder: Path, compression: str = "gzip") -> dict:
    config = get_experiment(experiment)
    ds = load_dataset(config.dataset)
    model = build_model(config.model, ds.input_shape, 10, config.activation, config.seed)
    summary = summarize(model, ds.input_shape)
    kernels = kernel_layers_of(config, summary)
    fns = make_step_functions(model, make_optimizer(config.optimizer, config.learning_rate, config.momentum), kernels, jnp.float16)
    probe_idx = choose_probes(ds)
    layout = RunLayout(
        layers=layer_specs(summary, config.activation, kernels),
        num_classes=10, probe_images=ds.test_images[probe_idx], probe_labels=ds.test_labels[probe_idx],
        probe_indices=probe_idx, probe_dataset=ds.name,
        attrs={"experiment": experiment, "config_json": config.to_json(), "versions_json": "{}",
               "summary_json": "{}", "class_names_json": "[]", "planned_steps": 0, "record_schedule": "every"},
        compression=compression,
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

    def recorded(state, writer):
        for step, idx in enumerate(batches, 1):
            state, metrics, frame = fns.recorded_step(state, train_x, train_y, idx, probe_x)
            writer.submit(lambda w, f, s=step: w.write_frame(s, 0.0, f), frame)
            writer.submit(lambda w, m, s=step: w.write_train(np.array([s]), m["loss"], m["accuracy"], np.array([0.0])), metrics)
        writer.wait()  # everything on disk (flushed at least once a second) before the clock stops
        jax.block_until_ready(state)
        return state

    writer = AsyncRunWriter(H5RunWriter(folder / f"{experiment}.h5", layout))
    state = recorded(unrecorded(state), writer)  # compile both and warm the writer
    state = probes_only(state)
    loops = {"unrecorded": unrecorded, "probes": probes_only, "recorded": lambda s: recorded(s, writer)}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(trials):
        for name, loop in loops.items():
            t = time.perf_counter()
            state = loop(state)
            times[name].append(steps / (time.perf_counter() - t))
    writer.close("completed")
    un, pr, rec = (statistics.median(times[k]) for k in ("unrecorded", "probes", "recorded"))
    return {"experiment": experiment, "batch": b, "unrecorded": un, "probes": pr, "recorded": rec, "ratio": rec / un,
            "spread": (min(times["recorded"]) / max(times["unrecorded"]), max(times["recorded"]) / min(times["unrecorded"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--compression", default="gzip", help="run-file compression: gzip (default), lzf, none")
    args = parser.parse_args()
    print(f"JAX {jax.__version__}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{args.trials} alternating trials per loop, medians; run-file compression {args.compression}")
    print()
    print("| model | batch | unrecorded steps/s | step with probe frame, no writer | recorded every step, steps/s | "
          "ratio recorded/unrecorded | ratio range |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for experiment, steps in CASES:
            r = bench(experiment, steps, args.trials, Path(folder), args.compression)
            print(f"| {r['experiment']} | {r['batch']} | {r['unrecorded']:.2f} | {r['probes']:.2f} | {r['recorded']:.2f} | "
                  f"{r['ratio']:.3f} | {r['spread'][0]:.2f}–{r['spread'][1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
