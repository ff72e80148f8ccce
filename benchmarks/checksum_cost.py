"""What the Fletcher-32 checksums (schema 7) cost the writer: chunks encoded per second with and without them.

    .venv/bin/python benchmarks/checksum_cost.py [--trials 5] [--experiment keras_fashion]

The chunks are real: every activation row of a short recording of the experiment (writer_throughput.py's
frames), encoded as the writer encodes them (runfile/writer.py: shuffle + ISA-L deflate for gzip, the raw
bytes for none) with and without the checksum appended. Trials alternate; medians. The encoding is the only
part of a write the checksum changes (HDF5 writes the 4 more bytes with the chunk).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from record_overhead import rotated
from runfile.writer import _raw, _raw_checked, _shuffle_deflate, _shuffle_deflate_checked
from writer_throughput import real_frames

ENCODERS = {("gzip", False): _shuffle_deflate, ("gzip", True): _shuffle_deflate_checked,
            ("none", False): _raw, ("none", True): _raw_checked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--experiment", default="keras_fashion")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        frames, layout = real_frames(args.experiment, Path(tmp))
    rows = [frame[spec.name] for frame in frames for spec in layout.layers]
    mb = sum(r.nbytes for r in rows) / 1e6
    rates: dict[tuple[str, bool], list[float]] = {k: [] for k in ENCODERS}
    for trial in range(args.trials):
        for key in rotated(list(ENCODERS), trial):
            t = time.perf_counter()
            for row in rows:
                ENCODERS[key](row)
            rates[key].append(mb / (time.perf_counter() - t))
    print(f"{args.experiment}: {len(rows)} activation chunks, {mb:.1f} MB; {args.trials} alternating trials, medians\n")
    print("| encoding | MB/s without checksum | MB/s with | ratio |")
    print("|---|---|---|---|")
    for compression in ("gzip", "none"):
        off, on = (statistics.median(rates[(compression, c)]) for c in (False, True))
        print(f"| {compression} | {off:.0f} | {on:.0f} | {on / off:.3f} |")


if __name__ == "__main__":
    main()
