"""Deflate (zlib format, level 1) of a whole chunk in one call of ISA-L, letting the GIL go once.

python-isal's `isal_zlib.compress` grows its output buffer from 16 kB, letting the GIL go and taking it back
at every step: five hand-overs for a 250 kB chunk. Beside a thread that runs Python, each one waits up to the
interpreter's switch interval (runfile/chunks.py), so a chunk took 25 ms instead of 0.8. This module calls
the ISA-L library that python-isal carries (its extension exports ISA-L's functions) through ctypes, once per
chunk, with an output buffer sized for the worst case: one hand-over.

`isal_zstream`'s public fields, from ISA-L's igzip_lib.h (unchanged since 2.25): next_in, avail_in, total_in,
next_out, avail_out, total_out, hufftables, level, level_buf_size, level_buf, end_of_stream, flush,
gzip_flag, hist_bits, then the internal state, which `isal_deflate_init` fills. The stream is allocated
larger than any ISA-L version's, once per thread. At first use a sample is compressed and checked with Python's zlib;
where the library, a symbol or that check fails, `compress` is python-isal's.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from isal import isal_zlib

LEVEL = 1
STREAM_BYTES = 1 << 20  # the stream and its internal state (about 100 kB in ISA-L 2.32)
LEVEL_BUF_BYTES = 151_552  # level 1's hash tables and buffers: ISA-L's default for it (ISAL_DEF_LVL1_LARGE)
IGZIP_ZLIB = 3  # gzip_flag: a zlib header and Adler-32 trailer, as HDF5's deflate filter writes
COMP_OK = 0


class _Stream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint32), ("total_in", ctypes.c_uint32),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint32), ("total_out", ctypes.c_uint32),
                ("hufftables", ctypes.c_void_p), ("level", ctypes.c_uint32), ("level_buf_size", ctypes.c_uint32),
                ("level_buf", ctypes.c_void_p), ("end_of_stream", ctypes.c_uint16), ("flush", ctypes.c_uint16),
                ("gzip_flag", ctypes.c_uint16), ("hist_bits", ctypes.c_uint16)]


def bound(n: int) -> int:
    """The most bytes a level-1 zlib stream of `n` bytes takes (stored blocks at worst, with header and trailer)."""
    return n + n // 8 + 1024


class _Library:
    def __init__(self, init: Callable, deflate: Callable):
        self._init, self._deflate = init, deflate
        self._local = threading.local()

    def _buffers(self, need: int) -> tuple[Any, Any, np.ndarray]:
        local = self._local
        if getattr(local, "stream", None) is None:
            local.stream = ctypes.create_string_buffer(STREAM_BYTES)
            local.level_buf = ctypes.create_string_buffer(LEVEL_BUF_BYTES)
            local.out = np.empty(0, np.uint8)
        if local.out.size < need:
            local.out = np.empty(need, np.uint8)
        return local.stream, local.level_buf, local.out

    def compress(self, data: np.ndarray) -> bytes | None:
        """zlib stream of `data` (contiguous bytes), or None if ISA-L did not finish it in one call."""
        out = self._buffers(bound(data.size))[2]
        n = self.compress_into(data, out)
        return None if n is None else out[:n].tobytes()

    def compress_into(self, data: np.ndarray, out: np.ndarray) -> int | None:
        """Writes the zlib stream of `data` into `out` (contiguous uint8, `bound(data.size)` bytes or more);
        its length, or None if ISA-L did not finish it in one call."""
        stream_buf, level_buf, _ = self._buffers(0)
        self._init(stream_buf)  # sets every field of the state a stream starts from (python-isal's stream is on its stack)
        s = _Stream.from_buffer(stream_buf)
        s.next_in, s.avail_in = data.ctypes.data, data.size
        s.next_out, s.avail_out = out.ctypes.data, out.size
        s.level, s.level_buf, s.level_buf_size = LEVEL, ctypes.addressof(level_buf), LEVEL_BUF_BYTES
        s.end_of_stream, s.flush, s.gzip_flag = 1, 0, IGZIP_ZLIB
        if self._deflate(stream_buf) != COMP_OK or s.avail_in != 0 or s.avail_out == 0:
            return None
        return int(s.total_out)


def shuffle(rows: np.ndarray) -> np.ndarray:
    """HDF5's shuffle filter applied to each row of `rows` [n, ...] in one copy: [n, bytes] uint8 (byte 0 of
    every element, then byte 1, ...)."""
    n, item = len(rows), rows.dtype.itemsize
    planes = np.ascontiguousarray(rows).reshape(n, -1).view(np.uint8).reshape(n, -1, item)
    return np.ascontiguousarray(planes.transpose(0, 2, 1)).reshape(n, -1)


def compress(data: bytes | np.ndarray) -> bytes:
    """`data`'s bytes as one zlib stream at level 1 (what HDF5's deflate filter reads back)."""
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else \
        np.frombuffer(data, np.uint8)
    library = _library()
    out = library.compress(raw) if library is not None else None
    return out if out is not None else isal_zlib.compress(raw, LEVEL)


def compress_into(data: np.ndarray, out: np.ndarray) -> int:
    """`compress` written into `out` (contiguous uint8 of at least `bound(data.nbytes)` bytes): its length."""
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    library = _library()
    n = library.compress_into(raw, out) if library is not None else None
    if n is None:
        chunk = isal_zlib.compress(raw, LEVEL)
        n = len(chunk)
        out[:n] = np.frombuffer(chunk, np.uint8)
    return n


@functools.cache
def _library() -> _Library | None:
    """ISA-L's deflate from python-isal's extension, checked on a sample, or None."""
    import isal

    for path in sorted(Path(isal.__file__).parent.glob("isal_zlib*.so")):
        try:
            lib = ctypes.CDLL(str(path))
            init, deflate = lib.isal_deflate_init, lib.isal_deflate
        except (OSError, AttributeError):
            continue
        init.restype, init.argtypes = None, (ctypes.c_void_p,)
        deflate.restype, deflate.argtypes = ctypes.c_int, (ctypes.c_void_p,)
        candidate = _Library(init, deflate)
        rng = np.random.default_rng(3)
        samples = [np.zeros(70_000, np.uint8), rng.integers(0, 256, 40_000, dtype=np.uint8),
                   np.repeat(rng.integers(0, 4, 30_000, dtype=np.uint8), 3), np.zeros(0, np.uint8)]
        try:
            if all((out := candidate.compress(s)) is not None and zlib.decompress(out) == s.tobytes() for s in samples):
                return candidate
        except zlib.error:
            continue
    return None


def native() -> bool:
    """Whether `compress` calls ISA-L once per chunk (else python-isal's compress)."""
    return _library() is not None
