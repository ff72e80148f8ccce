"""The writer alone: MB/s of frames into a run file, one HDF5 write per frame vs a batch of frames per write,
with 1, 2 and 4 threads encoding the batch's chunks.

    .venv/bin/python benchmarks/writer_throughput.py [--trials 5] [--frames 240] [--experiments keras_fashion,vgg_bn]

The frames are real: each experiment is recorded for 24 steps first (every step, float16, Fashion-MNIST
probes), and its frames are then written again, cycling, by `H5RunWriter` on this thread with nothing else
running. `frames per write` is how many frames each flush (one extent change and one call per dataset or
chunk) takes: 1 is what a loop slower than one step a second gets; 16 is a fast loop's batch (the writer
flushes once a second, or when `STAGE_BYTES` of frames wait). Trials alternate between the settings; the
table gives medians and the ratio to one frame per write on one thread. Encoding threads help only where
cores are free: in a run, training uses the others.
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
from recorder.run import TrainingLoop, make_plan
from recorder.writer import H5RunWriter
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--experiments", default="keras_fashion,vgg_bn")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.frames} frames a trial, {args.trials} alternating trials, medians\n")
    print("| experiment | MB a frame | frames per write | encoding threads | MB/s | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for experiment in args.experiments.split(","):
            frames, layout = real_frames(experiment, folder)
            rates: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
            for trial in range(args.trials):
                for setting in SETTINGS[trial % len(SETTINGS):] + SETTINGS[: trial % len(SETTINGS)]:
                    rates[setting].append(write_rate(frames, layout, folder / "bench.h5", args.frames, *setting))
            base = statistics.median(rates[SETTINGS[0]])
            mb = sum(v.nbytes for v in frames[0].values()) / 1e6
            for (per_write, threads), values in rates.items():
                rate = statistics.median(values)
                print(f"| {experiment} | {mb:.2f} | {per_write} | {threads} | {rate:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
