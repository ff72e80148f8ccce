"""Every performance goal of the project, measured side by side in one process run, as one markdown table.

    .venv/bin/pip install -e '.[bench]'        # optional: PyTorch, Keras 3 and hdf5plugin rows
    .venv/bin/python benchmarks/run_all.py [--trials 5] [--only overhead,frameworks,replay,storage,e2e,rss]

Sections (each row: medians of alternating trials, and the ratio that the target is about):
1. recording overhead: steps/s unrecorded vs recorded every step (learn_to_see batch 1024, keras_fashion 64);
2. frameworks: the same architecture, batch, optimiser and data in PyTorch eager (without recording, and with
   forward hooks on the same probes every step) and in Keras 3 on JAX (`train_on_batch`, and the reference
   method: one `predict()` per conv layer after every step), interleaved with ours in the same trials;
3. replay: frames/s of our renderer vs matplotlib imshow-per-frame at the learn_to_see conv6 geometry;
4. storage: the 291-step learn_to_see run file, per step and in total, and its activations rewritten with
   each compression filter (write speed and size);
5. end to end: wall-clock of the README demo's own work, `emergence record learn_to_see` + `emergence replay`;
6. host memory: peak RSS of a recording run of 100 vs 1000 steps;
7. writer: MB/s of keras_fashion's frames written one per HDF5 write vs a batch per write with this
   machine's default encoding threads, and the loop's steps/s with frames sent one by one vs packed 8 per
   device-to-host transfer (benchmarks/writer_throughput.py).
Runs about 19 minutes on the 2-core development machine. Absolute times drift on shared machines; ratios
measured in the same trials drift much less.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import frameworks  # noqa: E402
import record_overhead  # noqa: E402
from runfile.writer import _shuffle_deflate  # noqa: E402
import replay_speed  # noqa: E402
import writer_throughput  # noqa: E402
from runfile.writer import default_encode_threads  # noqa: E402

SECTIONS = ("e2e", "overhead", "frameworks", "replay", "storage", "rss", "writer")
ROWS: list[tuple[str, ...]] = []


def row(section: str, what: str, value: str, against: str = "", ratio: str = "", target: str = "") -> None:
    ROWS.append((section, what, value, against, ratio, target))
    print(f"  {what}: {value} {against} {ratio}", file=sys.stderr, flush=True)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def emergence(*args: str, cwd: Path, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "emergence", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def section_e2e(folder: Path) -> Path:
    """The README demo twice: with an empty compilation cache (a first run) and with the cache it left."""
    env = {**os.environ, "EMERGENCE_CACHE": str(folder / "cache")}
    results = []
    for attempt in ("first run, empty compilation cache", "second run, compilation cache warm"):
        out = folder / attempt.split(",")[0].replace(" ", "_")
        record_s = emergence("record", "learn_to_see", "--out", str(out), "--no-progress", cwd=folder, env=env)
        replay_s = emergence("replay", str(out / "learn_to_see.h5"), cwd=folder, env=env)
        total = record_s + replay_s
        row("5 end to end", f"README demo, `emergence record learn_to_see` + `emergence replay`, {attempt}",
            f"{total:.0f} s", f"record {record_s:.0f} s + replay {replay_s:.1f} s", "", f"≤ 90 s: {met(total <= 90)}")
        results.append(out / "learn_to_see.h5")
    return results[-1]


def section_overhead_and_frameworks(trials: int, with_frameworks: bool) -> None:
    from recorder.data import load_dataset
    from recorder.probes import choose_probes
    from recorder.plan import epoch_permutation

    versions = frameworks.available() if with_frameworks else {}
    ds = load_dataset("fashion_mnist")
    probes = ds.test_images[choose_probes(ds)]
    perm = epoch_permutation(0, 0, len(ds.train_labels))
    with tempfile.TemporaryDirectory() as tmp:
        for experiment, steps in record_overhead.CASES:
            batch = 1024 if experiment == "learn_to_see" else 64
            others = {}
            if versions.get("torch"):
                for rec in (False, True):
                    others[f"torch{'+hooks' if rec else ''}"] = frameworks.torch_runner(
                        experiment, ds.train_images, ds.train_labels, perm, batch, probes, rec)
            if versions.get("keras"):
                for rec in (False, True):
                    others[f"keras{'+predict' if rec else ''}"] = frameworks.keras_runner(
                        experiment, ds.train_images, ds.train_labels, perm, batch, probes, rec)
            r = record_overhead.bench(experiment, steps, trials, Path(tmp), others=others)
            un, rec = r["unrecorded"], r["recorded"]
            row("1 recording overhead", f"{experiment} (batch {batch}): recorded every step vs unrecorded, steps/s",
                f"{rec:.2f}", f"unrecorded {un:.2f}; median of paired trials {r['paired_ratio']:.3f}; process CPU "
                f"per step {1000 * r['cpu_recorded']:.1f} vs {1000 * r['cpu_unrecorded']:.1f} ms "
                f"(ratio {r['cpu_ratio']:.3f})", f"{rec / un:.3f}", f"≥ 0.97: {met(rec / un >= 0.97)}")
            if not with_frameworks:
                continue
            o = r["others"]
            if "torch" in o:
                threads = _torch_threads()
                row("2 frameworks", f"{experiment}: ours recorded vs PyTorch {versions['torch']} eager unrecorded "
                    f"({threads} threads, default), steps/s", f"{rec:.2f}", f"PyTorch {o['torch']:.2f}",
                    f"{rec / o['torch']:.2f}", f"≥ 1.0: {met(rec / o['torch'] >= 1.0)}" if experiment == "learn_to_see" else "")
                row("2 frameworks", f"{experiment}: PyTorch eager + forward hooks on the probes every step, steps/s",
                    f"{o['torch+hooks']:.2f}", f"PyTorch unrecorded {o['torch']:.2f}",
                    f"{o['torch+hooks'] / o['torch']:.3f}", "")
            else:
                row("2 frameworks", f"{experiment}: PyTorch", "not installed", "pip install 'emergence[bench]'")
            if "keras" in o:
                row("2 frameworks", f"{experiment}: ours recorded vs Keras {versions['keras']} (JAX backend) reference "
                    "method, one predict() per conv layer every step, steps/s", f"{rec:.2f}",
                    f"Keras+predict {o['keras+predict']:.2f}", f"{rec / o['keras+predict']:.2f}",
                    f"≥ 3: {met(rec / o['keras+predict'] >= 3)}")
                row("2 frameworks", f"{experiment}: Keras train_on_batch unrecorded, steps/s", f"{o['keras']:.2f}",
                    f"ours unrecorded {un:.2f}", f"{un / o['keras']:.2f}", "")
            else:
                row("2 frameworks", f"{experiment}: Keras", "not installed", "pip install 'emergence[bench]'")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def section_replay(run_path: Path, trials: int) -> None:
    from replay.animate import LayerFrames
    from runfile.reader import open_run

    with open_run(run_path) as run:
        frames = LayerFrames(run, "conv6")
        values = frames.values(np.arange(run.num_frames))
        ours = [replay_speed.ours_fps(frames, values) for _ in range(trials)]
        mpl = [replay_speed.matplotlib_fps(values, run.probes()[0], 20) for _ in range(max(1, trials // 2))]
    o, m = statistics.median(ours), statistics.median(mpl)
    row("3 replay", "frames/s, learn_to_see conv6 (10 probes x 16 channels), render only", f"{o:.0f}",
        f"matplotlib imshow per frame {m:.1f}", f"{o / m:.0f}", f"≥ 300 frames/s: {met(o >= 300)}")


def section_storage(run_path: Path) -> None:
    size = run_path.stat().st_size
    with h5py.File(run_path, "r") as f:
        frames = f["frames/step"].shape[0]
        arrays = {name: f["layers"][name]["activations"][()] for name in f["layers"]}
    row("4 storage", f"learn_to_see run file ({frames} frames, analysis included)", f"{size / 1e6:.1f} MB",
        f"{size / frames / 1e3:.0f} kB per recorded step", "", f"≤ 40 MB: {met(size <= 40e6)}")
    filters = {"none": {}, "gzip 1 + shuffle (HDF5's zlib filter)": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
               "lzf + shuffle": {"compression": "lzf", "shuffle": True}}
    try:
        import hdf5plugin

        filters["zstd 3 + shuffle (hdf5plugin)"] = {**hdf5plugin.Zstd(clevel=3), "shuffle": True}
        filters["lz4 + shuffle (hdf5plugin)"] = {**hdf5plugin.LZ4(), "shuffle": True}
        filters["bitshuffle + zstd 3 (hdf5plugin)"] = dict(hdf5plugin.Bitshuffle(cname="zstd", clevel=3))
        filters["blosc zstd 3 + shuffle (hdf5plugin)"] = dict(hdf5plugin.Blosc(cname="zstd", clevel=3,
                                                                            shuffle=hdf5plugin.Blosc.SHUFFLE))
    except ImportError:
        row("4 storage", "hdf5plugin filters", "not installed", "pip install 'emergence[bench]'")
    raw = sum(a.nbytes for a in arrays.values())

    def write(label: str, path: Path, encode: Any = None, **kw: Any) -> None:
        """Every frame of every layer, one frame (one chunk) at a time, as the recorder writes."""
        t = time.perf_counter()
        with h5py.File(path, "w") as f:
            for layer, a in arrays.items():
                ds = f.create_dataset(layer, shape=a.shape, dtype=a.dtype, chunks=(1, *a.shape[1:]), **kw)
                for i in range(len(a)):
                    if encode is None:
                        ds[i] = a[i]
                    else:
                        ds.id.write_direct_chunk((i, *[0] * (a.ndim - 1)), encode(a[i]))
        dt = time.perf_counter() - t
        row("4 storage", f"activations of the {frames} frames ({raw / 1e6:.0f} MB float16) with {label}",
            f"{path.stat().st_size / 1e6:.1f} MB", f"write {raw / dt / 1e6:.0f} MB/s, {dt / frames * 1e3:.1f} ms/frame",
            f"{path.stat().st_size / raw:.2f}", "")
        path.unlink()

    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in filters.items():
            write(name, Path(tmp) / "x.h5", **kw)
        # the recorder's default: the same shuffle + deflate format, encoded by ISA-L, written with H5Dwrite_chunk
        write("shuffle + ISA-L deflate 1, written chunk by chunk (the recorder's default)", Path(tmp) / "x.h5",
              _shuffle_deflate, compression="gzip", shuffle=True)


RSS_SNIPPET = """
import resource, sys
from experiments import get_experiment
from recorder.config import apply_overrides
from recorder.run import record
config = apply_overrides(get_experiment("learn_to_see"), ["batch_size=64", "steps=" + sys.argv[1], "eval_every=0"])
record(config, sys.argv[2], show_progress=False, log=lambda s: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def section_rss() -> None:
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (100, 1000):
            out = subprocess.run([sys.executable, "-c", RSS_SNIPPET, str(steps), str(Path(tmp) / f"r{steps}.h5")],
                                 capture_output=True, text=True, check=True)
            peaks[steps] = int(out.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    ratio = peaks[1000] / peaks[100]
    row("6 host memory", "peak RSS recording learn_to_see at batch 64, every step: 1000 vs 100 steps",
        f"{peaks[1000]:.0f} MB", f"100 steps {peaks[100]:.0f} MB", f"{ratio:.2f}", f"flat (≤ 1.10): {met(ratio <= 1.10)}")


def section_writer(trials: int) -> None:
    threads = default_encode_threads()
    with tempfile.TemporaryDirectory() as tmp:
        mb, rates = writer_throughput.writer_rates("keras_fashion", 240, trials, Path(tmp), ((1, 1), (16, threads)))
        one, batched = rates[(1, 1)], rates[(16, threads)]
        row("7 writer", f"keras_fashion frames ({mb:.2f} MB), writer alone: 16 frames per HDF5 write, {threads} "
            "encoding thread(s) (this machine's default), MB/s", f"{batched:.0f}", f"one frame per write, 1 thread "
            f"{one:.0f}", f"{batched / one:.2f}")
        loop = writer_throughput.in_loop("keras_fashion", 60, trials, Path(tmp))
        packed, single = loop["packed 8 per transfer"][0], loop["one by one"][0]
        row("7 writer", "keras_fashion recorded every step, frames packed 8 per device-to-host transfer, steps/s",
            f"{packed:.2f}", f"one by one {single:.2f}; unrecorded {loop['unrecorded'][0]:.2f}", f"{packed / single:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    ap.add_argument("--run", help="an existing learn_to_see run file for the replay and storage rows (else the "
                    "end-to-end section records one)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"run_all: error: unknown section {', '.join(sorted(unknown))}; sections: {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        run_path = Path(args.run) if args.run else None
        if "e2e" in only:
            run_path = section_e2e(Path(tmp))
        if only & {"overhead", "frameworks"}:
            section_overhead_and_frameworks(args.trials, "frameworks" in only)
        if run_path is not None and "replay" in only:
            section_replay(run_path, args.trials)
        if run_path is not None and "storage" in only:
            section_storage(run_path)
        if "rss" in only:
            section_rss()
        if "writer" in only:
            section_writer(args.trials)
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, JAX "
          f"{jax.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind}); {args.trials} trials, medians.\n")
    print("| section | measured | value | compared with | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
