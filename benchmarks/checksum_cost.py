"""What the Fletcher-32 checksums (schema 7) cost the writer, with and without them, measured side by side.

    .venv/bin/python benchmarks/checksum_cost.py [--trials 5] [--experiment keras_fashion] [--frames 240]

The chunks are real: every activation row of a short recording of the experiment (writer_throughput.py's
frames). Trials alternate between the settings; medians.

1. The encoder alone: the chunks encoded as the writer encodes them (runfile/writer.py: shuffle + ISA-L deflate
   for gzip, the raw bytes for none) without a checksum, with HDF5's own function (runfile/checksum.py, what
   the writer uses) and with the numpy closed form (its fallback).
2. The writer into a file: `H5RunWriter` writing the frames (writer_throughput.py's `write_rate`: one flush
   per 1 or 16 frames, 1, 2 or 4 encoding threads) into run files whose datasets carry the checksum filter,
   and into the same files without it (the only difference: `fletcher32` left out when the datasets are made).
3. The recording loop: `TrainingLoop` steps/s recording every step (the loop `emergence record` runs, writer
   thread included, evaluations off) into a file with checksums and into one without, and unrecorded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import h5py

import runfile.checksum
from experiments import get_experiment
from record_overhead import rotated
from recorder.plan import make_plan
from runfile.writer import _raw, _raw_checked, _shuffle_deflate, _shuffle_deflate_checked
from writer_throughput import SETTINGS, loop_rates, real_frames, write_rate

ENCODERS = {"gzip": (_shuffle_deflate, _shuffle_deflate_checked), "none": (_raw, _raw_checked)}
CHECKSUMS = ("without", "HDF5's function", "numpy closed form")


@contextlib.contextmanager
def checksum_function(name: str) -> Iterator[None]:
    """`runfile.checksum.fletcher32` computed by `name` ("HDF5's function" or "numpy closed form") meanwhile."""
    original = runfile.checksum._native
    if name == "numpy closed form":
        runfile.checksum._native = lambda: None
    try:
        yield
    finally:
        runfile.checksum._native = original


@contextlib.contextmanager
def without_checksums() -> Iterator[None]:
    """Datasets made meanwhile get no Fletcher-32 filter (the writer then encodes their chunks without it)."""
    original = h5py.Group.create_dataset

    def create_dataset(self, *args, fletcher32=False, **kw):  # noqa: ANN001, ANN002, ANN003, ARG001
        return original(self, *args, **kw)

    h5py.Group.create_dataset = create_dataset
    try:
        yield
    finally:
        h5py.Group.create_dataset = original


def encoder_rates(rows: list, trials: int) -> dict[tuple[str, str], float]:
    """Median MB/s of encoding `rows` for each (compression, checksum)."""
    mb = sum(r.nbytes for r in rows) / 1e6
    keys = [(c, s) for c in ENCODERS for s in CHECKSUMS]
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for trial in range(trials):
        for compression, checksum in rotated(keys, trial):
            encode = ENCODERS[compression][checksum != "without"]
            with checksum_function(checksum):
                t = time.perf_counter()
                for row in rows:
                    encode(row)
                rates[(compression, checksum)].append(mb / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in rates.items()}


def writer_rates(frames: list, layout: object, count: int, trials: int, folder: Path) -> dict[tuple, float]:
    """Median MB/s of the writer for each (compression, frames per write, threads, checksummed)."""
    keys = [(c, *s, checked) for c in ENCODERS for s in SETTINGS for checked in (False, True)]
    rates: dict[tuple, list[float]] = {k: [] for k in keys}
    for trial in range(trials):
        for key in rotated(keys, trial):
            compression, per_write, threads, checked = key
            with contextlib.nullcontext() if checked else without_checksums():
                rates[key].append(write_rate(frames, dataclasses.replace(layout, compression=compression),
                                             folder / "bench.h5", count, per_write, threads))
    return {k: statistics.median(v) for k, v in rates.items()}


def checked_loops(experiment: str, compression: str, steps: int, trials: int, folder: Path) -> dict[str, tuple[float, float]]:
    """Median steps/s and process CPU seconds per step of the loop unrecorded, recorded with and without checksums."""
    plan = make_plan(dataclasses.replace(get_experiment(experiment), eval_every=0, compression=compression))
    with without_checksums():
        unchecked = plan.recorder(folder / "without.h5", overwrite=True)
    return loop_rates(plan, {"recorded, with checksums": plan.recorder(folder / "with.h5", overwrite=True),
                             "recorded, without checksums": unchecked}, steps, trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--experiment", default="keras_fashion")
    parser.add_argument("--frames", type=int, default=240, help="frames each writer trial writes")
    parser.add_argument("--loop-steps", type=int, default=120, help="steps each loop trial runs (0 skips part 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frames, layout = real_frames(args.experiment, folder)
        rows = [frame[spec.name] for frame in frames for spec in layout.layers]
        print(f"{args.experiment}: {len(rows)} activation chunks, {sum(r.nbytes for r in rows) / 1e6:.1f} MB; "
              f"{args.trials} alternating trials, medians; checksums by HDF5's own function: "
              f"{runfile.checksum.native()}\n")
        enc = encoder_rates(rows, args.trials)
        print("1. The encoder alone, MB/s\n")
        print("| encoding | without checksum | with, HDF5's function | ratio | with, numpy closed form | ratio |")
        print("|---|---|---|---|---|---|")
        for c in ENCODERS:
            off, native, numpy = (enc[(c, s)] for s in CHECKSUMS)
            print(f"| {c} | {off:.0f} | {native:.0f} | {native / off:.3f} | {numpy:.0f} | {numpy / off:.3f} |")
        rates = writer_rates(frames, layout, args.frames, args.trials, folder)
    print(f"\n2. The writer into a file ({args.frames} frames a trial), MB/s\n")
    print("| compression | frames per write | encoding threads | without checksums | with | ratio |")
    print("|---|---|---|---|---|---|")
    for c in ENCODERS:
        for per_write, threads in SETTINGS:
            off, on = rates[(c, per_write, threads, False)], rates[(c, per_write, threads, True)]
            print(f"| {c} | {per_write} | {threads} | {off:.0f} | {on:.0f} | {on / off:.3f} |")
    if not args.loop_steps:
        return
    print(f"\n3. The recording loop ({args.experiment}, every step, {args.loop_steps} steps a trial)\n")
    print("| compression | loop | steps/s | CPU ms per step | ratio to without checksums |")
    print("|---|---|---|---|---|")
    for c in ENCODERS:
        with tempfile.TemporaryDirectory() as tmp:
            loops = checked_loops(args.experiment, c, args.loop_steps, args.trials, Path(tmp))
        base = loops["recorded, without checksums"][0]
        for name, (rate, cpu) in loops.items():
            print(f"| {c} | {name} | {rate:.1f} | {1e3 * cpu:.2f} | {rate / base:.3f} |")


if __name__ == "__main__":
    main()
