"""One encoding process (runfile/encoders.py): shuffles and deflates rows between two shared memory files.

    python -m runfile.encode_worker IN_FD OUT_FD

Each line on stdin is a task, `in_offset rows row_bytes itemsize out_offset stride checked`: the rows are
`rows` × `row_bytes` bytes at `in_offset` of the input; row j's chunk (shuffled, deflated at level 1, with
HDF5's Fletcher-32 appended if `checked`) goes to `out_offset + j * stride` of the output. The answer is one
line, the chunks' lengths, or `error MESSAGE`. It runs at the lowest priority and ends when stdin closes (its
parent closed it, or died).
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np

from runfile import deflate
from runfile.checksum import stored_checksum


def encode(src: np.ndarray, dst: np.ndarray, line: bytes) -> list[int]:
    in_offset, count, row_bytes, item, out_offset, stride, checked = (int(x) for x in line.split())
    rows = src[in_offset:in_offset + count * row_bytes].view(f"V{item}")  # elements of `item` bytes, as shuffled
    lengths = []
    for j, row in enumerate(deflate.shuffle(rows.reshape(count, -1))):
        room = dst[out_offset + j * stride:out_offset + (j + 1) * stride]
        if room.size < deflate.bound(row.size) + 4:
            raise ValueError(f"room for {room.size} bytes, a chunk of {row.size} may take {deflate.bound(row.size) + 4}")
        n = deflate.compress_into(row, room)
        if checked:  # HDF5's Fletcher-32 after the stream, little-endian
            room[n:n + 4] = stored_checksum(room[:n])
            n += 4
        lengths.append(n)
    return lengths


def main(argv: list[str]) -> None:
    try:
        os.nice(19)
    except OSError:
        pass
    src = np.frombuffer(mmap.mmap(int(argv[0]), 0), np.uint8)
    dst = np.frombuffer(mmap.mmap(int(argv[1]), 0), np.uint8)
    out = sys.stdout
    for line in sys.stdin.buffer:
        try:
            answer = " ".join(str(n) for n in encode(src, dst, line))
        except Exception as e:  # the parent falls back to its own threads
            answer = "error " + " ".join(f"{type(e).__name__}: {e}".split())
        out.write(answer + "\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
