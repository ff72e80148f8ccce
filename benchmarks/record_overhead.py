"""Recording overhead: training steps/s of the built-in loop without recording vs recording every step.

    .venv/bin/python benchmarks/record_overhead.py [--trials 5] [--experiments vgg_bn:20,resnet8:20]
        [--also channels=0:16]   # each experiment again with these overrides (e.g. a channel subset)

Every loop below is `recorder.run.TrainingLoop`, the loop `emergence record` runs, over the same plan
(data, model, compiled steps); trials alternate between them in one process (the machine is shared and
noisy; alternating cancels slow drifts), and the table reports medians and their ratio. Held-out
evaluations are off in all of them: the comparison is training with and without recording.

- unrecorded: the loop with no recorder: the jitted training step alone.
- probe frame, no writer: the loop computing each step's probe frame inside the step and dropping it
  (separates the cost of the extra forward pass from the cost of getting frames to disk).
- recorded: the loop with the public `Recorder` on its default schedule (every step; the analysis Grams
  every 7th step for learn_to_see, every 98th for keras_fashion), writing a real run file in a temp folder.
- recorded, writer at normal priority: the same with the writer thread not lowered to nice 19.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import jax

from experiments import get_experiment
from recorder.config import apply_overrides
from recorder.run import TrainingLoop, make_plan

CASES = (("learn_to_see", 8), ("keras_fashion", 60))  # (experiment, steps per trial)
PAUSE_S = 0.5
T = TypeVar("T")


def rotated(items: Sequence[T], trial: int) -> list[T]:
    """`items` in the order trial `trial` runs them: rotated by one each trial, so that slow drifts of a
    shared machine fall on every item alike."""
    k = trial % len(items)
    return [*items[k:], *items[:k]]


def advance(loop: TrainingLoop, n: int) -> None:
    """`n` more steps of `loop`, computed and (when it records) on disk before it returns."""
    loop.run(loop.step + n)
    jax.block_until_ready(loop.state)
    if loop.rec is not None:
        loop.rec.wait()  # everything on disk (flushed at least once a second) before the clock stops


def bench(experiment: str, steps: int, trials: int, folder: Path, compression: str = "gzip",
          others: dict[str, Callable[[int], float]] | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """Medians of alternating trials; `others` (name -> run(steps) -> steps/s) join every trial's rotation."""
    config = apply_overrides(dataclasses.replace(get_experiment(experiment), compression=compression), list(overrides))
    plan = make_plan(config)
    recorded = plan.recorder(folder / f"{experiment}.h5", overwrite=True)
    plain = plan.recorder(folder / f"{experiment}-nice0.h5", overwrite=True, writer_nice=0)
    loops = {"unrecorded": TrainingLoop(plan, None, evaluate=False),
             "probes": TrainingLoop(plan, None, frames=True, evaluate=False),
             "recorded": TrainingLoop(plan, recorded, evaluate=False),
             "recorded, writer at normal priority": TrainingLoop(plan, plain, evaluate=False)}

    # compile every step kind, the analysed one included (the recorder's first analysed step after 0)
    warm = max(steps, int(recorded.analysis_steps[1]) if len(recorded.analysis_steps) > 1 else steps)
    for loop in loops.values():
        loop.start()
        advance(loop, warm)
    times: dict[str, list[float]] = {name: [] for name in [*loops, *(others or {})]}
    cpu: dict[str, list[float]] = {name: [] for name in loops}  # process CPU seconds per step, all threads
    order = [*loops, *(others or {})]
    for trial in range(trials):
        # rotate the order every trial, and pause between loops: PyTorch's OpenMP threads spin for a while
        # after their work, which would otherwise slow whichever loop comes next
        for name in rotated(order, trial):
            time.sleep(PAUSE_S)
            if name in loops:
                t, c = time.perf_counter(), _cpu_seconds()
                advance(loops[name], steps)
                times[name].append(steps / (time.perf_counter() - t))
                cpu[name].append((_cpu_seconds() - c) / steps)
            else:
                times[name].append(others[name](steps))
    recorded.close()
    plain.close()
    un, pr, rec = (statistics.median(times[k]) for k in ("unrecorded", "probes", "recorded"))
    cpu_un, cpu_pr, cpu_rec = (statistics.median(cpu[k]) for k in ("unrecorded", "probes", "recorded"))
    return {"experiment": experiment, "batch": config.batch_size, "unrecorded": un, "probes": pr, "recorded": rec,
            "ratio": rec / un,
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
    parser.add_argument("--experiments", default=",".join(f"{e}:{s}" for e, s in CASES),
                        help="EXPERIMENT:STEPS_PER_TRIAL,... (default: %(default)s)")
    parser.add_argument("--also", action="append", metavar="KEY=VALUE", help="measure each experiment again with these "
                        "overrides (repeatable; one extra case with all of them)")
    args = parser.parse_args()
    cases = [(name, int(steps), ()) for name, _, steps in (item.partition(":") for item in args.experiments.split(","))]
    if args.also:
        cases = [c for name, steps, _ in cases for c in ((name, steps, ()), (name, steps, tuple(args.also)))]
    print(f"JAX {jax.__version__}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{args.trials} alternating trials per loop, medians; run-file compression {args.compression}")
    print()
    print("| model | batch | unrecorded steps/s | step with probe frame, no writer | recorded every step, steps/s | "
          "ratio recorded/unrecorded | median of paired trial ratios | ratio range | CPU ms per step, unrecorded / "
          "probe frame / recorded | CPU ratio | recorded, writer thread at normal priority: steps/s (ratio) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for experiment, steps, overrides in cases:
            r = bench(experiment, steps, args.trials, Path(folder), args.compression, overrides=overrides)
            label = r["experiment"] + (f" ({', '.join(overrides)})" if overrides else "")
            print(f"| {label} | {r['batch']} | {r['unrecorded']:.2f} | {r['probes']:.2f} | {r['recorded']:.2f} | "
                  f"{r['ratio']:.3f} | {r['paired_ratio']:.3f} | {r['spread'][0]:.2f}–{r['spread'][1]:.2f} | "
                  f"{1000 * r['cpu_unrecorded']:.1f} / {1000 * r['cpu_probes']:.1f} / {1000 * r['cpu_recorded']:.1f} | {r['cpu_ratio']:.3f} | "
                  f"{r['nice0']:.2f} ({r['nice0'] / r['unrecorded']:.3f}) |", flush=True)


if __name__ == "__main__":
    main()
