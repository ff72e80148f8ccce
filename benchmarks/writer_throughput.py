"""Getting frames to disk: the writer alone, then the training loop with frames packed per transfer.

    .venv/bin/python benchmarks/writer_throughput.py [--trials 5] [--frames 240] [--experiments keras_fashion,vgg_bn]
        [--loop keras_fashion:60]

1. The writer alone: MB/s of frames into a run file, one HDF5 write per frame vs a batch of frames per
   write, with 1, 2 and 4 threads encoding the batch's chunks.

The frames are real: each experiment is recorded for 24 steps first (every step, float16, Fashion-MNIST
probes), and its frames are then written again, cycling, by `H5RunWriter` on this thread with nothing else
running. `frames per write` is how many frames each flush (one extent change and one call per dataset or
chunk) takes: 1 is what a loop slower than one step a second gets; 16 is a fast loop's batch (the writer
flushes once a second, or when `STAGE_BYTES` of frames wait). Trials alternate between the settings; the
table gives medians and the ratio to one frame per write on one thread. Encoding threads help only where
cores are free: in a run, training uses the others.

2. The loop (`TrainingLoop`, recording every step): steps/s and process CPU per step unrecorded, recorded
   with each frame sent as it is (frames_per_transfer=1: one host copy per array), and recorded with fast
   frames packed 8 per transfer (the default, recorder/batching.py). Trials alternate; medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from experiments import get_experiment
from record_overhead import _cpu_seconds, advance, rotated
from recorder.loop import TrainingLoop
from recorder.plan import make_plan
from runfile.writer import H5RunWriter
from replay import open_run

SETTINGS = ((1, 1), (16, 1), (16, 2), (16, 4))  # (frames per write, encoding threads)
RECORDED_STEPS = 24


def real_frames(experiment: str, folder: Path) -> tuple[list[dict], object]:
    """The frames of a short real recording of `experiment`, and the layout it was written with."""
    config = dataclasses.replace(get_experiment(experiment), steps=RECORDED_STEPS, schedule="every",
                                 snapshots=0, eval_every=0)
    plan = make_plan(config)
    rec = plan.recorder(folder / f"{experiment}-source.h5", overwrite=True)
    loop = TrainingLoop(plan, rec, evaluate=False)
    loop.start()
    loop.run(RECORDED_STEPS)
    rec.close()
    with open_run(rec.path) as run:
        frames = []
        for i in range(len(run.steps)):
            frame = {name: run.activations(name, [i])[0].astype(rec.layout.dtype) for name in run.layers}
            frame.update({f"kernel/{name}": run.kernels(name, [i])[0] for name in run.kernel_layers})
            frame["logits"] = run.logits([i])[0]
            frames.append(frame)
    return frames, dataclasses.replace(rec.layout, analysis=None)


def write_rate(frames: list[dict], layout: object, path: Path, count: int, per_write: int, threads: int) -> float:
    """MB/s of `count` frames (cycling through `frames`) written with a flush every `per_write` frames."""
    writer = H5RunWriter(path, layout, encode_threads=threads)
    size = 0
    t = time.perf_counter()
    for step in range(count):
        frame = frames[step % len(frames)]
        writer.write_frame(step, frame, float(step))
        size += sum(v.nbytes for v in frame.values())
        if (step + 1) % per_write == 0:
            writer.flush()
    writer.close()
    seconds = time.perf_counter() - t
    path.unlink()
    return size / 1e6 / seconds


def writer_rates(experiment: str, count: int, trials: int, folder: Path,
                 settings: tuple[tuple[int, int], ...] = SETTINGS,
                 compression: str | None = None) -> tuple[float, dict[tuple[int, int], float]]:
    """MB a frame of `experiment` and the median MB/s of each (frames per write, encoding threads) setting
    (`compression`: the file's, default the experiment's)."""
    frames, layout = real_frames(experiment, folder)
    if compression:
        layout = dataclasses.replace(layout, compression=compression)
    rates: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    for trial in range(trials):
        for setting in rotated(settings, trial):
            rates[setting].append(write_rate(frames, layout, folder / "bench.h5", count, *setting))
    return sum(v.nbytes for v in frames[0].values()) / 1e6, {s: statistics.median(v) for s, v in rates.items()}


def in_loop(experiment: str, steps: int, trials: int, folder: Path) -> dict[str, tuple[float, float]]:
    """Median steps/s and CPU seconds per step of the loop unrecorded and recorded both ways."""
    plan = make_plan(dataclasses.replace(get_experiment(experiment), eval_every=0))
    return loop_rates(plan, {"one by one": plan.recorder(folder / "single.h5", overwrite=True, frames_per_transfer=1),
                             "packed 8 per transfer": plan.recorder(folder / "packed.h5", overwrite=True)}, steps, trials)


def loop_rates(plan: object, recorders: dict[str, object], steps: int, trials: int) -> dict[str, tuple[float, float]]:
    """Median steps/s and process CPU seconds per step of `plan`'s loop unrecorded and with each of `recorders`
    (name -> Recorder, closed here), `steps` a trial, trials alternating; each loop warmed up first."""
    loops = {"unrecorded": TrainingLoop(plan, None, evaluate=False),
             **{name: TrainingLoop(plan, rec, evaluate=False) for name, rec in recorders.items()}}
    for loop in loops.values():
        loop.start()
        advance(loop, steps)  # compiles every step kind the trials use
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for trial in range(trials):
        for name in rotated(list(loops), trial):
            t, c = time.perf_counter(), _cpu_seconds()
            advance(loops[name], steps)  # a recorded loop's rows are written before it returns
            times[name].append((steps / (time.perf_counter() - t), (_cpu_seconds() - c) / steps))
    for rec in recorders.values():
        rec.close()
    return {name: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--experiments", default="keras_fashion,vgg_bn")
    parser.add_argument("--compression", default=None, help="write with this compression (none, gzip, ...)")
    parser.add_argument("--loop", default="keras_fashion:60", help="EXPERIMENT:STEPS_PER_TRIAL,... for part 2 ('' skips it)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.frames} frames a trial, {args.trials} alternating trials, medians\n")
    print("| experiment | MB a frame | frames per write | encoding threads | MB/s | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for experiment in args.experiments.split(","):
            mb, rates = writer_rates(experiment, args.frames, args.trials, folder, compression=args.compression)
            base = rates[SETTINGS[0]]
            for (per_write, threads), rate in rates.items():
                print(f"| {experiment} | {mb:.2f} | {per_write} | {threads} | {rate:.0f} | {rate / base:.2f} |")

        if not args.loop:
            return
        print("\n| experiment | loop | steps/s | ratio to unrecorded | CPU ms per step |")
        print("|---|---|---|---|---|")
        for item in args.loop.split(","):
            experiment, _, steps = item.partition(":")
            result = in_loop(experiment, int(steps), args.trials, folder)
            base = result["unrecorded"][0]
            for name, (rate, cpu) in result.items():
                print(f"| {experiment} | {name} | {rate:.2f} | {rate / base:.3f} | {1000 * cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
