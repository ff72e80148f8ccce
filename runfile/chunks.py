"""Writing whole chunks, already encoded, into a dataset chunked one row per chunk: HDF5's `H5Dwrite_chunk`,
keeping the GIL. `write_chunks` takes chunks of any sizes as they come; `write_row_chunks` the equal-sized
rows of one array, with h5py's lock taken once.

h5py's `DatasetID.write_direct_chunk` lets the GIL go around the HDF5 call. Taking it back waits for any other
thread that is running Python to reach the interpreter's switch interval (5 ms by default), against about
0.2 ms for the write of a 0.9 MB chunk: with a data loader or a dispatching loop busy beside it, a writer of
eight chunks a frame fell from 1,448 recorded steps a second to 12 (benchmarks/block_writer.py). So the
writer calls the same HDF5 function of the libhdf5 h5py loaded through `ctypes.PyDLL`, which keeps the GIL,
holding h5py's own lock (`phil`) as h5py does around every HDF5 call, so no other h5py call runs inside HDF5
meanwhile.

Where that function cannot be found, or a call fails, the chunk goes through h5py's `write_direct_chunk`
(a failure then raises h5py's own error, with HDF5's message).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Callable, Iterable

import h5py
import numpy as np
from h5py._objects import phil

from runfile.checksum import _loaded_hdf5

H5P_DEFAULT = 0


def write_chunks(ds: h5py.Dataset, first: int, chunks: Iterable[bytes | np.ndarray]) -> None:
    """Stores each of `chunks` (each chunk's bytes as its filters would store them, of any sizes, in order; an
    iterable that may wait for its encoders) as the chunk of `ds`'s row `first` + j, with one reused offset
    array and h5py's lock taken per chunk (not while the iterable waits)."""
    native, zeros = _native(), (0,) * (ds.ndim - 1)
    where = (ctypes.c_uint64 * ds.ndim)()
    dsid = ds.id.id
    for j, chunk in enumerate(chunks):
        data = chunk if isinstance(chunk, np.ndarray) else np.frombuffer(chunk, np.uint8)
        if native is not None and data.flags.c_contiguous:
            where[0] = first + j
            with phil:
                if native(dsid, H5P_DEFAULT, 0, where, data.nbytes, data.ctypes.data) >= 0:
                    continue
        ds.id.write_direct_chunk((first + j, *zeros), chunk)  # h5py's, which raises HDF5's message


def write_row_chunks(ds: h5py.Dataset, first: int, chunks: np.ndarray) -> None:
    """Stores each row of `chunks` (uint8 [n, chunk bytes], each row contiguous, rows at any stride) as the
    chunk of `ds`'s row `first` + j, as `write_chunks` does, with h5py's lock taken once and no Python-level
    work per row but the HDF5 call."""
    zeros = (0,) * (ds.ndim - 1)
    native, done = _native(), 0
    if native is not None and chunks.ndim == 2 and chunks.dtype == np.uint8 and chunks.strides[1] == 1:
        where = (ctypes.c_uint64 * ds.ndim)()
        dsid, base, stride, size = ds.id.id, chunks.ctypes.data, chunks.strides[0], chunks.shape[1]
        with phil:
            while done < len(chunks):
                where[0] = first + done
                if native(dsid, H5P_DEFAULT, 0, where, size, base + done * stride) < 0:
                    break
                done += 1
    for j in range(done, len(chunks)):  # where the call failed: h5py's, which raises HDF5's message
        ds.id.write_direct_chunk((first + j, *zeros), chunks[j])


@functools.cache
def _native() -> Callable[..., int] | None:
    """`H5Dwrite_chunk` of the libhdf5 h5py loaded, called keeping the GIL, or None."""
    if h5py.version.hdf5_version_tuple < (1, 10, 3):  # where H5Dwrite_chunk appeared (hid_t 64-bit since 1.10)
        return None
    for path in _loaded_hdf5():
        try:
            function: Any = ctypes.PyDLL(path).H5Dwrite_chunk
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_int  # herr_t
        function.argtypes = (ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t,
                             ctypes.c_void_p)
        return function
    return None


def native() -> bool:
    """Whether the chunk writes call HDF5 keeping the GIL (else through h5py)."""
    return _native() is not None
