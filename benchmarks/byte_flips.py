"""Random byte flips in a run file: how many `emergence verify` detects, how many leave the data unchanged (a
flip in bytes nothing reads), and how many change data silently (the target is 0).

    .venv/bin/python benchmarks/byte_flips.py [--flips 200] [--run RUN.h5]

Without --run it records a small run first (the `tiny` experiment, 20 steps, every step recorded, schema 7).
Each case is a copy of the file with one byte inverted at a random offset, checked in a forked child (a
damaged file must not hang or crash the parent): `verify` (every chunk and metadata object), then, when
verify passes, every dataset compared with the original's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

TIMEOUT_S = 20.0


def datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def check(path: Path, original: dict[str, np.ndarray]) -> str:
    """'detected', 'unchanged' or 'silent' for the damaged copy at `path` (run in a child)."""
    from runfile.reader import RunFileError, open_run
    from runfile.verify import verify

    try:
        with open_run(path) as run:
            if not verify(run).ok:
                return "detected"
    except (RunFileError, OSError, KeyError, ValueError, RuntimeError):
        return "detected"  # refused at open: one clear error
    try:
        now = datasets(path)
    except Exception:  # noqa: BLE001 - anything a plain reader meets counts as noticed
        return "detected"
    same = now.keys() == original.keys() and all(
        np.array_equal(now[k], original[k], equal_nan=now[k].dtype.kind == "f") for k in original
        if k not in ("updated_unix",))
    return "unchanged" if same else "silent"


def in_child(path: Path, original: dict[str, np.ndarray]) -> str:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            verdict = check(path, original)
        except BaseException as e:  # noqa: BLE001
            verdict = f"crashed: {type(e).__name__}"
        os.write(write, verdict.encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
        return "hung"
    verdict = os.read(read, 200).decode() or "crashed"
    os.close(read)
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = args.run
        if base is None:
            from experiments import get_experiment
            from recorder.config import apply_overrides
            from recorder.run import record

            base = folder / "base.h5"
            record(apply_overrides(get_experiment("tiny"), ["steps=20", "checkpoint_every=0"]), base,
                   show_progress=False, log=lambda s: None)
        original = datasets(base)
        data = base.read_bytes()
        rng = np.random.default_rng(args.seed)
        counts: dict[str, int] = {}
        silent = []
        for offset in rng.choice(len(data), size=min(args.flips, len(data)), replace=False):
            damaged = bytearray(data)
            damaged[int(offset)] ^= 0xFF
            path = folder / "case.h5"
            path.write_bytes(bytes(damaged))
            verdict = in_child(path, original)
            counts[verdict] = counts.get(verdict, 0) + 1
            if verdict == "silent":
                silent.append(int(offset))
        print(f"{base.name if args.run else 'tiny, 20 steps'}: {len(data) / 1e6:.2f} MB, {sum(counts.values())} "
              f"single-byte flips at random offsets\n")
        print("| detected (verify or open refuses) | unchanged (bytes nothing reads) | silently changed data | hung or crashed |")
        print("|---|---|---|---|")
        bad = sum(v for k, v in counts.items() if k not in ("detected", "unchanged", "silent"))
        print(f"| {counts.get('detected', 0)} | {counts.get('unchanged', 0)} | {counts.get('silent', 0)} | {bad} |")
        if silent:
            print(f"\nsilent at offsets {silent[:20]}")
        json.dump(counts, sys.stderr)


if __name__ == "__main__":
    main()
