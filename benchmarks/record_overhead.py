"""Recording overhead: training steps/s of the built-in loop without recording vs recording every step.

    .venv/bin/python benchmarks/record_overhead.py [--trials 5] [--experiments vgg_bn:20,resnet8:20]
        [--also channels=0:16]   # each experiment again with these overrides (e.g. a channel subset)
        [--set steps=100000]     # overrides for every case (here: a plan long enough for the trials)
        [--compression none]     # the CPU proxy: `--experiments tiny:640 --compression none --set steps=100000
                                 #   --also block_steps=64`

The loops below run over the same plan (data, model, compiled steps); trials alternate between them in one
process (the machine is shared and noisy; alternating cancels slow drifts), and the table reports medians
and their ratios. Held-out evaluations are off in all of them: the comparison is training with and without
recording.

- bare step: the jitted training step alone, one dispatch per step from a Python loop (what a plain JAX
  loop does, and what the loop did before blocks).
- unrecorded: `recorder.loop.TrainingLoop`, the loop `emergence record` runs, with no recorder: blocks of K
  steps per dispatch (recorder/blocks.py).
- probe frame, no writer: the same computing each step's probe frame inside the block and dropping it
  (separates the cost of the extra forward pass from the cost of getting frames to disk).
- recorded: the loop with the public `Recorder` on the experiment's own schedule, writing a real run file in
  a temp folder. That is every step for learn_to_see and tiny, but log-spaced (log:300) for keras_fashion,
  vgg_bn and resnet8: the column "frames per step" says which share of the measured steps wrote a frame
  (keras_fashion's steps 600 to 1,200: one in 16). `--also schedule=every` records every step. The
  analysis Grams follow the experiment's analysis schedule (log-spaced, denser early).

"host CPU µs per step added" is the process CPU time (every thread: the loop, the writer, the encoder,
XLA's) per step of the recorded loop minus the unrecorded loop's. On the CPU backend XLA's threads are the
device, and their share moves by more between trials than the host path costs; "Python threads' CPU" counts
only the threads Python runs (the loop's and the writer's: per-thread CPU time from /proc, Linux only), the
host work recording adds, which is what a GPU step would have to hide. With `--also block_steps=16` the CPU
backend runs the blocks of K steps that a GPU runs (recorder/blocks.py; slower steps on this backend, the
same host path per block), the CPU proxy of the GPU's host cost per step. The writer flushes the file once a
second whatever the step rate (2 to 5 ms of wall time here, waits included): its wall time per step is
shown apart, as it shrinks with faster steps (2 to 5 µs a step at 1,000 steps/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import jax
import numpy as np

from experiments import get_experiment
from recorder.config import ConfigError, apply_overrides
from recorder.plan import RunPlan, make_plan
from recorder.loop import TrainingLoop

CASES = (("learn_to_see", 8), ("keras_fashion", 60))  # (experiment, steps per trial)
PAUSE_S = 0.5
T = TypeVar("T")


def rotated(items: Sequence[T], trial: int) -> list[T]:
    """`items` in the order trial `trial` runs them: rotated by one each trial, so that slow drifts of a
    shared machine fall on every item alike."""
    k = trial % len(items)
    return [*items[k:], *items[:k]]


class BareLoop:
    """The jitted training step alone, dispatched step by step (the batches of the same data order)."""

    def __init__(self, plan: RunPlan):
        self.reference = TrainingLoop(plan, None, evaluate=False)  # its data, state and batch order
        self.plan, self.rec, self.step = plan, None, 0

    @property
    def state(self):
        return self.reference.state

    def start(self) -> None:
        pass

    def run(self, until: int) -> None:
        ref, put = self.reference, self.plan.placement.batch
        for step in range(self.step + 1, until + 1):
            ref.state, _ = self.plan.fns.train_step(ref.state, *ref.data, put(ref._batch(step)), np.int32(step))
        self.step = until


def advance(loop: TrainingLoop | BareLoop, n: int) -> None:
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
    loops = {"bare": BareLoop(plan),
             "unrecorded": TrainingLoop(plan, None, evaluate=False),
             "probes": TrainingLoop(plan, None, frames=True, evaluate=False),
             "recorded": TrainingLoop(plan, recorded, evaluate=False)}

    # compile every step kind, the analysed one included (the recorder's first analysed step after 0)
    warm = max(steps, int(recorded.analysis_steps[1]) if len(recorded.analysis_steps) > 1 else steps)
    require_steps(plan, warm + steps * trials)
    for loop in loops.values():
        loop.start()
        advance(loop, warm)
    times: dict[str, list[float]] = {name: [] for name in [*loops, *(others or {})]}
    cpu: dict[str, list[float]] = {name: [] for name in loops}  # process CPU seconds per step, all threads
    py_cpu: dict[str, list[float]] = {name: [] for name in loops}  # the same, Python's threads only
    frames = 0  # frames the recorded loop wrote during its trials
    flushes: list[float] = []  # the recorded loop's writer: seconds per step spent in its once-a-second flushes
    order = [*loops, *(others or {})]
    for trial in range(trials):
        # rotate the order every trial, and pause between loops: PyTorch's OpenMP threads spin for a while
        # after their work, which would otherwise slow whichever loop comes next
        for name in rotated(order, trial):
            time.sleep(PAUSE_S)
            if name in loops:
                t, c, p = time.perf_counter(), _cpu_seconds(), python_threads_seconds()
                flushed, first = recorded._writer.flush_seconds, loops[name].step + 1
                advance(loops[name], steps)
                times[name].append(steps / (time.perf_counter() - t))
                cpu[name].append((_cpu_seconds() - c) / steps)
                py_cpu[name].append(sum(v - p.get(k, 0.0) for k, v in python_threads_seconds().items()) / steps)
                if name == "recorded":
                    flushes.append((recorded._writer.flush_seconds - flushed) / steps)
                    frames += sum(recorded.should_record(s) for s in range(first, loops[name].step + 1))
            else:
                times[name].append(others[name](steps))
    recorded.close()
    bare, un, pr, rec = (statistics.median(times[k]) for k in ("bare", "unrecorded", "probes", "recorded"))
    cpu_bare, cpu_un, cpu_pr, cpu_rec = (statistics.median(cpu[k]) for k in ("bare", "unrecorded", "probes", "recorded"))
    return {"experiment": experiment, "batch": config.batch_size, "block": plan.block_steps, "bare": bare,
            "unrecorded": un, "probes": pr, "recorded": rec, "ratio": rec / un, "ratio_bare": rec / bare,
            "paired_ratio": statistics.median(r / u for r, u in zip(times["recorded"], times["unrecorded"])),
            "cpu_bare": cpu_bare, "cpu_unrecorded": cpu_un, "cpu_probes": cpu_pr, "cpu_recorded": cpu_rec,
            "cpu_ratio": cpu_un / cpu_rec,
            "py_unrecorded": statistics.median(py_cpu["unrecorded"]), "py_recorded": statistics.median(py_cpu["recorded"]),
            "flush": statistics.median(flushes), "frames_per_step": frames / (steps * trials),
            "spread": (min(times["recorded"]) / max(times["unrecorded"]), max(times["recorded"]) / min(times["unrecorded"])),
            "others": {name: statistics.median(times[name]) for name in others or {}}, "times": times}


def torch_runners(experiment: str) -> dict[str, Callable[[int], float]] | None:
    """PyTorch eager runners of the same model and batches (benchmarks/frameworks.py), or None."""
    import frameworks
    from recorder.data import load_dataset
    from recorder.probes import choose_probes
    from recorder.plan import epoch_permutation

    if experiment not in frameworks.ARCHITECTURES or not frameworks.available().get("torch"):
        return None
    ds = load_dataset("fashion_mnist")
    batch = get_experiment(experiment).batch_size
    perm, probes = epoch_permutation(0, 0, len(ds.train_labels)), ds.test_images[choose_probes(ds)]
    return {f"torch{'+hooks' if rec else ''}": frameworks.torch_runner(experiment, ds.train_images, ds.train_labels,
                                                                      perm, batch, probes, rec) for rec in (False, True)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (every thread): the work done, which a busy neighbour on a
    shared machine slows down far less than it slows down wall-clock time."""
    t = os.times()
    return t.user + t.system


def require_steps(plan: RunPlan, needed: int) -> None:
    """Exits with the override to add when a measurement needs more steps than the plan has: past its end a
    plan records nothing, so the trials would measure no frames."""
    if needed > plan.total:
        raise SystemExit(f"{plan.config.experiment} plans {plan.total} steps and the measurement needs {needed}: "
                         f"add --set steps={needed} (or more)")


def python_threads_seconds() -> dict[int, float]:
    """CPU seconds of each thread Python runs (native id -> seconds, from /proc/self/task/ID/schedstat, in
    nanoseconds); {} where there is no /proc."""
    out = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
                out[thread.native_id] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--compression", default="gzip", help="run-file compression: gzip (default), lzf, zstd, none")
    parser.add_argument("--experiments", default=",".join(f"{e}:{s}" for e, s in CASES),
                        help="EXPERIMENT:STEPS_PER_TRIAL,... (default: %(default)s)")
    parser.add_argument("--also", action="append", metavar="KEY=VALUE", help="measure each experiment again with these "
                        "overrides (repeatable; one extra case with all of them)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every case "
                        "(repeatable), e.g. steps=100000 for a plan that outlasts the trials")
    parser.add_argument("--torch", action="store_true", help="also PyTorch eager, plain and with forward hooks copying "
                        "the probes' conv outputs to the host every step (learn_to_see, keras_fashion; on its GPU if any)")
    args = parser.parse_args()
    cases = [(name, int(steps), ()) for name, _, steps in (item.partition(":") for item in args.experiments.split(","))]
    if args.also:
        cases = [c for name, steps, _ in cases for c in ((name, steps, ()), (name, steps, tuple(args.also)))]
    print(f"JAX {jax.__version__}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{args.trials} alternating trials per loop, medians; run-file compression {args.compression}"
          + (f"; every case with {', '.join(args.set)}" if args.set else ""))
    print()
    print("| model | batch | K | bare step, steps/s | unrecorded (blocks) | probe frame every step, no writer | recorded | frames per step recorded | "
          "ratio recorded/unrecorded | median of paired trial ratios | ratio recorded/bare step | CPU ms per step, bare "
          "/ unrecorded / probe frame / recorded | host CPU µs per step added by recording | Python threads' CPU µs "
          "per step, unrecorded / recorded (added) | the writer's flushes (once a second), wall µs per step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for experiment, steps, overrides in cases:
            others = torch_runners(experiment) if args.torch and not overrides else None
            r = bench(experiment, steps, args.trials, Path(folder), args.compression, others=others,
                      overrides=(*args.set, *overrides))
            label = r["experiment"] + (f" ({', '.join(overrides)})" if overrides else "")
            ms = " / ".join(f"{1000 * r[k]:.2f}" for k in ("cpu_bare", "cpu_unrecorded", "cpu_probes", "cpu_recorded"))
            print(f"| {label} | {r['batch']} | {r['block']} | {r['bare']:.1f} | {r['unrecorded']:.1f} | {r['probes']:.1f} | "
                  f"{r['recorded']:.1f} | {r['frames_per_step']:.2f} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} | {r['ratio_bare']:.3f} | {ms} | "
                  f"{1e6 * (r['cpu_recorded'] - r['cpu_unrecorded']):.0f} | {1e6 * r['py_unrecorded']:.0f} / "
                  f"{1e6 * r['py_recorded']:.0f} ({1e6 * (r['py_recorded'] - r['py_unrecorded']):+.0f}) | "
                  f"{1e6 * r['flush']:.0f} |", flush=True)
            for name, rate in r["others"].items():
                print(f"| {label}: PyTorch eager{' + hooks' if 'hooks' in name else ''} | {r['batch']} | | {rate:.1f} | | | | | "
                      f"ours recorded / this: {r['recorded'] / rate:.2f} | | | | | | |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # an unknown experiment or config key: one line, no traceback
        raise SystemExit(f"error: {e}") from None
