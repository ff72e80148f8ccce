"""Readers for the on-disk formats the datasets ship in: IDX (MNIST family) and CIFAR-10 binary.

Both return uint8 images shaped [N, H, W, C] and int64 labels shaped [N]; nothing is rescaled here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# IDX type byte -> numpy dtype (big-endian, as the format specifies).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFormatError(ValueError):
    """A data file exists but is not in the expected format."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise DataFormatError(f"{path}: cannot read ({e}); the file may be truncated, delete it and fetch it again") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file, gzipped or raw (detected from the content, not the name)."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFormatError(
            f"{path}: IDX header says shape {dims} ({expected} bytes of data), file holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_images(path: str | Path) -> np.ndarray:
    """IDX image file -> uint8 [N, H, W, 1]."""
    arr = read_idx(path)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise DataFormatError(f"{path}: expected uint8 images of shape [N, H, W], got {arr.dtype} {arr.shape}")
    return arr[..., None]


def read_idx_labels(path: str | Path) -> np.ndarray:
    """IDX label file -> int64 [N]."""
    arr = read_idx(path)
    if arr.ndim != 1:
        raise DataFormatError(f"{path}: expected labels of shape [N], got {arr.shape}")
    return arr.astype(np.int64)


CIFAR_RECORD = 1 + 32 * 32 * 3  # label byte, then 1024 red, 1024 green, 1024 blue bytes, row-major


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary batch -> (uint8 [N, 32, 32, 3], int64 [N])."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataFormatError(
            f"{path}: size {raw.size} bytes is not a multiple of the CIFAR-10 record size {CIFAR_RECORD}"
        )
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataFormatError(f"{path}: label {labels.max()} out of range 0..9; is this CIFAR-100?")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels
