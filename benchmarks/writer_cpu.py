"""The writer thread's CPU time per frame, as a GPU's host sees it: the writer alone, blocks of real frames.

    .venv/bin/python benchmarks/writer_cpu.py [--trials 5] [--experiments tiny,keras_fashion] [--frames 640]
        [--block K]

Beside a GPU the writer has a core of its own and the loop's thread spends about 20 µs a step (host_path.py);
what recording a frame every step then costs the host is the writer thread's CPU time per frame. On a
2-core machine that time cannot be read from a training run: the writer shares its core with XLA's
threads, and its CPU time per frame moves by 2x between runs of the same code (host_path.py). So this
script writes real frames (writer_throughput.py's: a short recording of the experiment, every step) the way
`DeviceWriter` writes a block, K frames per `write_frames` call (by default the K a GPU gets for the frame,
recorder/blocks.py: 64 for tiny, 54 for keras_fashion) and one flush per block, with nothing
else running, and reads the calling thread's CPU time (`time.thread_time`). Settings, alternating by trial,
medians:

- none, checksums by the writer: uncompressed chunks, each row's Fletcher-32 computed on this thread
  (HDF5's own function, runfile/checksum.py);
- none, checksums given: the block's buffers as the device packs them beside a GPU (recorder/blocks.py
  `CHUNKS`: each array's rows as finished chunks, its bytes then its Fletcher-32, recorder/fletcher.py; here
  packed by XLA before the trial), written as they are, as `DeviceWriter` does;
- gzip, processes: deflated by `--processes` encoding processes (runfile/encoders.py, the default beside a
  GPU), the writer thread copying rows in and chunks out and writing them;
- gzip, threads: deflated by as many encoding threads of this process instead (no copies; each chunk's
  deflate hands the GIL over twice, see runfile/chunks.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from record_overhead import rotated
from recorder.blocks import block_size, chunk_columns, layout_of, pack_frame, unpack
from runfile.writer import H5RunWriter
from writer_throughput import real_frames

SETTINGS = ("none, checksums by the writer", "none, checksums given", "gzip, processes", "gzip, threads")


def blocks_of(frames: list[dict], block: int, count: int) -> list[tuple[np.ndarray, dict, tuple[dict, dict]]]:
    """`count` frames (cycling) as blocks of `block`: (steps, key -> [n, ...] rows, (the same rows as views of
    the device's packed buffers, key -> their chunks))."""
    layout = layout_of(frames[0])
    packed = jax.jit(jax.vmap(lambda frame: pack_frame(frame, layout, checksums=True)))
    out = []
    for first in range(0, count, block):
        steps = np.arange(first, min(first + block, count))
        rows = {key: np.stack([frames[s % len(frames)][key] for s in steps]) for key in frames[0]}
        buffers = jax.device_get(packed(rows))
        out.append((steps, rows, (unpack(buffers, layout), chunk_columns(buffers, layout))))
    return out


def thread_cpu_per_frame(blocks: list, layout: object, setting: str, path: Path, processes: int) -> float:
    """Seconds of this thread's CPU per frame written, `setting` as in SETTINGS."""
    compression = setting.split(",")[0]
    writer = H5RunWriter(path, dataclasses.replace(layout, compression=compression),
                         encode_threads=processes if compression == "gzip" else 1,
                         encode_processes=setting != "gzip, threads")
    given, frames, t = setting == "none, checksums given", 0, 0.0
    for i, (steps, rows, (device_rows, chunks)) in enumerate(blocks):
        if i == 1:  # the first block opened and warmed everything
            frames, t = 0, time.thread_time()
        writer.write_frames(steps, *((device_rows, 0.0, chunks) if given else (rows, 0.0)))
        writer.flush()
        frames += len(steps)
    seconds = time.thread_time() - t
    writer.close()
    path.unlink()
    return seconds / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--experiments", default="tiny,keras_fashion")
    parser.add_argument("--frames", type=int, default=640, help="frames each trial writes")
    parser.add_argument("--block", type=int, default=0, help="frames per block (default: a GPU's K for the frame)")
    parser.add_argument("--processes", type=int, default=2, help="encoding processes (or threads) for gzip")
    args = parser.parse_args()
    print(f"{args.trials} alternating trials, medians; {args.frames} frames a trial; gzip with {args.processes} "
          f"encoding processes or threads (their CPU is not the writer thread's)\n")
    print("| experiment | frame kB | K | setting | writer thread CPU µs per frame | ratio to checksums by the writer |")
    print("|---|---|---|---|---|---|")
    for experiment in args.experiments.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            frames, layout = real_frames(experiment, folder)
            nbytes = sum(v.nbytes for v in frames[0].values())
            k = args.block or block_size(nbytes, backend="gpu")
            blocks = blocks_of(frames, k, args.frames + k)
            times: dict[str, list[float]] = {s: [] for s in SETTINGS}
            for trial in range(args.trials):
                for setting in rotated(SETTINGS, trial):
                    times[setting].append(thread_cpu_per_frame(blocks, layout, setting, folder / "w.h5", args.processes))
        base = statistics.median(times[SETTINGS[0]])
        for setting in SETTINGS:
            cpu = statistics.median(times[setting])
            print(f"| {experiment} | {nbytes / 1e3:.0f} | {k} | {setting} | {1e6 * cpu:.1f} | {cpu / base:.3f} |")


if __name__ == "__main__":
    main()
