"""HDF5's Fletcher-32 checksum, for the chunks the writer encodes itself (runfile/writer.py).

A dataset created with HDF5's `fletcher32` filter stores, after its other filters, a 4-byte checksum at the end
of every chunk, and every HDF5 reader (h5py, h5dump, MATLAB, Julia) verifies it on read: a damaged chunk
fails to read instead of returning wrong numbers. The writer bypasses HDF5's filter pipeline for speed
(`H5Dwrite_chunk`), so it appends the checksum itself, exactly as HDF5's filter computes it: Fletcher's
algorithm over big-endian 16-bit words with both sums folded to 16 bits after every 360 words, a lone last
byte as the high byte of a word, the result `sum2 << 16 | sum1` stored little-endian.

Two implementations give the same number:
- HDF5's own: `H5_checksum_fletcher32`, the function its filter calls, exported by the libhdf5 that h5py has
  loaded, called through ctypes. It is checked against the closed form below on a fixed sample when first
  used; `native()` says whether it is in use. It is called through `ctypes.PyDLL`, which keeps the GIL: a
  call that lets the GIL go must take it back afterwards, and while another thread runs Python (a data
  loader, a loop of one's own dispatching steps) that wait lasts up to the interpreter's switch interval, 5 ms
  by default, against 0.25 ms for the checksum of a 0.9 MB frame (benchmarks/block_writer.py). A checksum
  that keeps the GIL makes Python threads wait at most that long.
- A closed form in numpy (`fletcher32_numpy`), used where that library or its symbol cannot be found (about 3x
  slower). Folding keeps each sum's value modulo 65535 and, from a positive value, never reaches 0; so with
  N words (a lone last byte b counts as a word b << 8), S = Σ w_k and T = Σ (N − k) w_k, both sums are 0 when
  every word is 0 and otherwise ((x − 1) mod 65535) + 1.

tests/test_checksum.py checks both against HDF5's filter, byte for byte.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

MOD = 65535
MAX_WORDS = 1 << 23  # 16 MB: below it every float64 sum in `fletcher32` is an exact integer
ROW = 4096  # words summed per row: Σ j w_j < 4096**2 * 65535 < 2**53, exact in float64


Buffer = bytes | bytearray | memoryview | np.ndarray


def _bytes_of(data: Buffer) -> np.ndarray:
    """`data`'s bytes as a flat uint8 array, without a copy where `data` is contiguous."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, np.uint8)


def fletcher32(data: Buffer) -> int:
    """The Fletcher-32 checksum of `data`'s bytes as HDF5's filter computes it."""
    raw = _bytes_of(data)
    native = _native()
    if native is None:
        return fletcher32_numpy(raw)
    return int(native(raw.ctypes.data, raw.size))


def fletcher32_numpy(data: Buffer) -> int:
    """`fletcher32` by its closed form in numpy (chunks up to 16 MB: HDF5's own chunks are at most 4 GB, the
    recorder's one frame)."""
    raw = _bytes_of(data)
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


def with_checksum(chunk: Buffer) -> np.ndarray:
    """`chunk`'s bytes followed by their Fletcher-32 checksum, as HDF5's filter stores a chunk (a new uint8
    array; one copy, made without letting the GIL go: see the module doc)."""
    raw = _bytes_of(chunk)
    return rows_with_checksums(raw[None], np.empty((1, raw.size + 4), np.uint8))[0]


def rows_with_checksums(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Each of `rows` ([n, ...], C-contiguous) as a chunk with its Fletcher-32 appended, in `out` (uint8 [n, row
    bytes + 4]): the rows' bytes copied row by row, each checksummed right after its copy, and the checksums
    written at the ends in one assignment. Every copy and checksum is a C call that keeps the GIL (see the
    module doc); there is no Python-level work per row but the calls."""
    n = len(rows)
    if n == 0:
        return out
    raw = np.ascontiguousarray(rows).reshape(n, -1).view(np.uint8)
    size, src, dst, stride = raw.shape[1], raw.ctypes.data, out.ctypes.data, out.strides[0]
    copy, native = _memmove(), _native()
    if copy is None or native is None:
        out[:, :size] = raw
        checksums = [fletcher32(row) for row in raw]
    else:
        checksums = np.empty(n, np.uint32)
        for j in range(n):  # each row's checksum right after its copy, while its bytes are in the cache
            copy(dst + j * stride, src + j * size, size)
            checksums[j] = native(src + j * size, size)
    out[:, size:] = np.asarray(checksums, "<u4").reshape(n, 1).view(np.uint8)
    return out


def stored_checksum(data: Buffer) -> np.ndarray:
    """The 4 bytes HDF5's filter appends to a chunk of `data`'s bytes: its Fletcher-32, little-endian."""
    return np.frombuffer(fletcher32(data).to_bytes(4, "little"), np.uint8)


@functools.cache
def _memmove() -> Callable[[int, int, int], Any] | None:
    """The C library's memmove, called keeping the GIL (numpy lets it go for a large copy), or None."""
    try:
        function: Any = ctypes.PyDLL(None).memmove
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = ctypes.c_void_p, (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    return function


NATIVE_SYMBOL = "H5_checksum_fletcher32"


def _loaded_hdf5() -> list[str]:
    """Paths of the libhdf5 that this process has loaded (through h5py), the high-level library left out."""
    import h5py  # noqa: F401 - loads libhdf5

    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:  # Linux: the exact file h5py's extensions were linked against
            paths = [fields[5].strip() for line in maps if len(fields := line.split(maxsplit=5)) == 6]
    except OSError:  # macOS: the wheel's bundled copy
        folder = Path(h5py.__file__).parent / ".dylibs"
        paths = [str(p) for p in folder.glob("libhdf5*")] if folder.is_dir() else []
    named = (p for p in paths if os.path.basename(p).startswith("libhdf5") and "_hl" not in os.path.basename(p))
    return list(dict.fromkeys(named))


@functools.cache
def _native() -> Callable[[int, int], int] | None:
    """HDF5's own Fletcher-32 (the function its filter calls) from the loaded libhdf5, called keeping the GIL, or
    None where it cannot be found or does not agree with the closed form on a fixed sample."""
    sample = np.random.default_rng(7).integers(0, 256, 4099, dtype=np.uint8)
    for path in _loaded_hdf5():
        try:
            function: Any = getattr(ctypes.PyDLL(path), NATIVE_SYMBOL)
        except (OSError, AttributeError):
            continue
        function.restype, function.argtypes = ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_size_t)
        if all(function(sample.ctypes.data, n) == fletcher32_numpy(sample[:n]) for n in (0, 1, 720, 721, 4099)):
            return function
    return None


def native() -> bool:
    """Whether `fletcher32` uses HDF5's own function (else the numpy closed form)."""
    return _native() is not None
