"""The writer at an accelerator's pace: how many recorded steps a second the host side of recording can take.

    .venv/bin/python benchmarks/block_writer.py [--experiment vgg_bn] [--block 38] [--blocks 12] [--trials 3]
        [--compression none,gzip] [--busy 0,1]

On a GPU a block of K steps arrives every few tens of milliseconds, and everything after the device's
transfer runs on the host: the writer thread unpacks the block, the encoding threads checksum (and compress)
each chunk, HDF5 appends it. This script feeds the recorder exactly what the built-in loop hands it
(`Recorder.write_block` with a `Block` of K steps whose frame buffers are real frames of the experiment,
already on the host), as fast as the writer takes them, with no training; so its steps/s is the most a loop
recording every step could reach, whatever the device. The frames are the experiment's own, recorded for a few
steps first (their compressibility is the real one).

`--busy 1` adds a thread that runs Python all the time, as a data loader in Python or NNX's per-call graph
traversal does in a real loop. Every time a writer thread hands back the GIL for a copy, a checksum or an
HDF5 call, it waits for that thread to let the GIL go: CPython forces a switch only every
`sys.getswitchinterval()` (5 ms by default). `switch` is the interval the trial ran with: the default, and
the interval a recording sets (runfile/async_writer.py, `WRITER_SWITCH_INTERVAL`).

Trials alternate between the settings; medians. Columns: recorded steps/s the writer took, MB/s of frames,
CPU ms per recorded step of the process and its encoding processes (the busy thread's own CPU time left
out), and how fast the busy thread ran
meanwhile, as a share of its pace with nothing else running: what the writer took from a Python-bound loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from experiments import get_experiment
from record_overhead import rotated
from recorder.blocks import Block
from recorder.loop import TrainingLoop
from recorder.plan import make_plan
from runfile.writer import default_encode_threads

try:
    from runfile.async_writer import WRITER_SWITCH_INTERVAL
    KNOWS_SWITCH = True
except ImportError:  # code from before the writer held the switch interval (compare versions with PYTHONPATH)
    WRITER_SWITCH_INTERVAL, KNOWS_SWITCH = 0.0005, False
try:
    from runfile.encoders import available as AVAILABLE
except ImportError:  # code from before the encoding processes
    AVAILABLE = None
from recorder.recorder import Recorder
from writer_throughput import real_frames

KNOWS_ENCODE_PROCESSES = "encode_processes" in inspect.signature(Recorder).parameters  # older code: no choice

DEFAULT_SWITCH = 0.005  # CPython's default GIL switch interval


def blocks_of(experiment: str, k: int, compression: str, folder: Path) -> tuple[object, dict[str, np.ndarray], object]:
    """The plan (K = k, every step recorded, no analysis) and one block's frame buffers per dtype, [k, E],
    filled with the experiment's real frames."""
    config = dataclasses.replace(get_experiment(experiment), schedule="every", snapshots=0, eval_every=0,
                                 analysis_probes=0, block_steps=k, compression=compression, steps=100_000)
    plan = make_plan(config)
    frames, _ = real_frames(experiment, folder)
    rec = plan.recorder(folder / "layout.h5", overwrite=True)
    blocks = TrainingLoop(plan, rec, evaluate=False).blocks
    rec.close()
    buffers: dict[str, list[np.ndarray]] = {}
    for i in range(k):
        frame = frames[i % len(frames)]
        row: dict[str, list[np.ndarray]] = {}
        for key, shape, dtype in blocks.frame_layout:
            row.setdefault(dtype, []).append(np.asarray(frame[key], dtype).reshape(-1))
        for dtype, parts in row.items():
            buffers.setdefault(dtype, []).append(np.concatenate(parts))
    return plan, {d: np.stack(rows) for d, rows in buffers.items()}, blocks


def _spin(stop: threading.Event, used: list[float]) -> None:
    """Runs Python until `stop`; appends the CPU seconds this thread used and its loops a second."""
    t, w = time.thread_time(), time.perf_counter()
    x = 0
    while not stop.is_set():
        x += 1
    used.extend((time.thread_time() - t, x / (time.perf_counter() - w)))


def spin_rate(seconds: float = 1.0) -> float:
    """Loops a second of `_spin` with nothing else running."""
    stop, used = threading.Event(), []
    spinner = threading.Thread(target=_spin, args=(stop, used))
    spinner.start()
    time.sleep(seconds)
    stop.set()
    spinner.join()
    return used[1]


def _cpu() -> float:
    """CPU seconds of this process and of its ended children (the encoding processes end at the recorder's
    close, inside a trial)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def encoding(how: str) -> None:
    """Makes the next recorders encode `how`: "auto" (what the built-in loop's recorder picks here), "threads:N" or
    "processes:N" (N encoding threads, or N processes: runfile/encoders.py)."""
    import recorder.recorder as recorder_module

    kind, _, n = how.partition(":")
    recorder_module.default_encode_threads = (lambda accelerated=False: int(n)) if n else default_encode_threads
    if AVAILABLE is not None:
        import runfile.encoders as encoders

        encoders.available = (lambda: kind == "processes") if n else AVAILABLE
    elif kind == "processes":
        raise SystemExit("this code has no encoding processes")


def trial(plan, buffers, blocks, count: int, path: Path, busy: bool, switch: float, how: str) -> tuple[float, ...]:
    """(steps/s, MB/s, process CPU seconds per step, the busy thread's loops a second or NaN) of `count` blocks
    written through a fresh recorder encoding `how`."""
    encoding(how)
    k = next(iter(buffers.values())).shape[0]
    names = blocks.metric_names
    metrics = np.ones((k, len(names)), np.float32)
    nbytes = sum(b.nbytes for b in buffers.values())
    stop = threading.Event()
    spun: list[float] = []
    spinner = threading.Thread(target=_spin, args=(stop, spun), daemon=True)
    sys.setswitchinterval(switch)  # set here for every trial, the recorder told to leave it (older code cannot)
    options = {"switch_interval": None} if KNOWS_SWITCH else {}
    if KNOWS_ENCODE_PROCESSES and how != "auto":  # the built-in loop's recorder picks threads; say which here
        options["encode_processes"] = how.startswith("processes")
    rec = plan.recorder(path, overwrite=True, **options)
    rec.write_block(Block((1, 2), metrics[:2], names, (1, 2), {d: b[:2] for d, b in buffers.items()},
                          blocks.frame_layout))
    rec.wait()  # the file's first frames written: the writer's threads or processes started
    if busy:
        spinner.start()
    t, c = time.perf_counter(), _cpu()
    step = 3
    for _ in range(count):
        steps = tuple(range(step, step + k))
        rec.write_block(Block(steps, metrics, names, steps, buffers, blocks.frame_layout))
        step += k
    rec.close()
    stop.set()
    if busy:
        spinner.join()
    wall, cpu = time.perf_counter() - t, _cpu() - c - (spun[0] if spun else 0.0)
    sys.setswitchinterval(DEFAULT_SWITCH)
    path.unlink()
    return count * k / wall, count * nbytes / 1e6 / wall, cpu / (count * k), spun[1] if spun else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="vgg_bn")
    parser.add_argument("--block", type=int, default=38, help="K, steps a block (vgg_bn's on an H200: 38)")
    parser.add_argument("--blocks", type=int, default=12, help="blocks a trial")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--compression", default="none,gzip")
    parser.add_argument("--busy", default="0,1", help="0: nothing else runs Python; 1: a thread runs Python")
    parser.add_argument("--switch", default=f"5,{WRITER_SWITCH_INTERVAL * 1e3:g}",
                        help="GIL switch intervals (ms) the busy trials run with")
    parser.add_argument("--encode", default="auto", help="auto, threads:N, processes:N (comma-separated)")
    args = parser.parse_args()
    for how in args.encode.split(","):
        kind, _, n = how.partition(":")
        if not (how == "auto" or kind in ("threads", "processes") and n.isdigit() and int(n) > 0):
            parser.error(f"--encode {how!r}: expected auto, threads:N or processes:N")
    print(f"{args.experiment}, K = {args.block}, {args.blocks} blocks a trial, {os.cpu_count()} CPUs, "
          f"{args.trials} alternating trials, medians; encoding 'auto' here: {default_encode_threads(False)} "
          "thread(s) beside the CPU backend")
    print()
    print("| compression | encoding | another thread running Python | GIL switch interval | recorded steps/s | MB/s | "
          "CPU ms per step | the Python thread's pace (of its pace alone) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for compression in args.compression.split(","):
            plan, buffers, blocks = blocks_of(args.experiment, args.block, compression, folder)
            intervals = [float(ms) / 1e3 for ms in args.switch.split(",")]
            settings = [(bool(int(b)), s, how) for how in args.encode.split(",") for b in args.busy.split(",")
                        for s in (intervals if int(b) else [DEFAULT_SWITCH])]
            results: dict = {s: [] for s in settings}
            for n in range(args.trials):
                for setting in rotated(settings, n):
                    results[setting].append(trial(plan, buffers, blocks, args.blocks, folder / "bench.h5", *setting))
            alone = statistics.median(spin_rate() for _ in range(3))  # the busy thread on its own, measured now
            for (busy, switch, how), rows in results.items():
                rate, mbs, cpu, spun = (statistics.median(v) for v in zip(*rows))
                pace = f"{spun / alone:.2f}" if busy else "–"
                print(f"| {compression} | {how} | {'yes' if busy else 'no'} | {switch * 1e3:g} ms | {rate:,.0f} | "
                      f"{mbs:,.0f} | {cpu * 1e3:.2f} | {pace} |", flush=True)


if __name__ == "__main__":
    sys.setswitchinterval(DEFAULT_SWITCH)
    main()
