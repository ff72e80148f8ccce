"""HDF5's Fletcher-32 checksum, for the chunks the writer encodes itself (runfile/writer.py).

A dataset created with HDF5's `fletcher32` filter stores, after its other filters, a 4-byte checksum at the end
of every chunk, and every HDF5 reader (h5py, h5dump, MATLAB, Julia) verifies it on read: a damaged chunk
fails to read instead of returning wrong numbers. The writer bypasses HDF5's filter pipeline for speed
(`H5Dwrite_chunk`), so it appends the checksum itself, exactly as HDF5's filter computes it: Fletcher's
algorithm over big-endian 16-bit words with both sums folded to 16 bits after every 360 words, a lone last
byte as the high byte of a word, the result `sum2 << 16 | sum1` stored little-endian.

Folding keeps each sum's value modulo 65535 and, from a positive value, never reaches 0; so the result has
a closed form (`fletcher32`), computed with numpy in one pass: with N words (a lone last byte b counts as a
word b << 8), S = Σ w_k and T = Σ (N − k) w_k, both sums are 0 when every word is 0 and otherwise
((x − 1) mod 65535) + 1. tests/test_checksum.py checks it against HDF5's own filter.
"""

from __future__ import annotations

import numpy as np

MOD = 65535
MAX_WORDS = 1 << 23  # 16 MB: below it every float64 sum in `fletcher32` is an exact integer
ROW = 4096  # words summed per row: Σ j w_j < 4096**2 * 65535 < 2**53, exact in float64


def fletcher32(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The Fletcher-32 checksum of `data`'s bytes as HDF5's filter computes it (chunks up to 16 MB: HDF5's
    own chunks are at most 4 GB, the recorder's one frame)."""
    raw = np.ascontiguousarray(data).view(np.uint8).ravel() if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    n = (len(raw) + 1) // 2  # words, a lone last byte b counting as b << 8
    if n > MAX_WORDS:
        raise ValueError(f"fletcher32 of {len(raw)} bytes: chunks up to {2 * MAX_WORDS} bytes only")
    padded = np.zeros(-(-n // ROW) * ROW * 2, np.uint8)
    padded[:len(raw)] = raw
    rows = padded.view(">u2").astype(np.float64).reshape(-1, ROW)  # exact: every partial sum below is < 2**53
    row_sums = rows.sum(axis=1)  # [R] Σ w in each row of ROW words
    within = rows @ np.arange(ROW, dtype=np.float64)  # [R] Σ j w over each row's own positions j
    total = int(row_sums.sum())
    if total == 0:  # every word 0: both sums stayed 0
        return 0
    # word k enters sum2 (N - k) times: T = N * S - Σ k w_k, with k = ROW * r + j (Python ints: exact)
    positions = ROW * int(row_sums @ np.arange(len(row_sums), dtype=np.float64)) + int(within.sum())
    weighted = n * total - positions
    sum1, sum2 = (total - 1) % MOD + 1, (weighted - 1) % MOD + 1
    return (sum2 << 16) | sum1


def with_checksum(chunk: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """`chunk`'s bytes followed by their Fletcher-32 checksum, as HDF5's filter stores a chunk."""
    body = chunk.tobytes() if isinstance(chunk, np.ndarray) else bytes(chunk)
    return body + fletcher32(body).to_bytes(4, "little")
