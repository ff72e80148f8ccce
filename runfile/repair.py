"""`emergence repair RUN.h5`: makes a killed run's file an ordinary, closed HDF5 file again.

A writer killed while the file is open (kill -9, a power cut, an out-of-memory kill) leaves two things behind:
- HDF5's "open for writing" flags in the superblock (versions 2 and 3 keep a file-consistency flags byte:
  bit 0 open for write, bit 2 open for SWMR write). SWMR readers ignore them, but every other HDF5 reader
  (plain `h5py.File(path, "r")`, h5dump, MATLAB, HDFView) refuses the file until they are cleared;
- rows of a frame or a flush cut in the middle (docs/run_schema.md: readers already use the shortest column).

`repair` refuses a file that a live process is writing, clears the flags (the byte, and the superblock's
checksum: Jenkins' lookup3 hash of the bytes before it, as HDF5 computes it), cuts every growing dataset to
its complete rows and marks the run `killed` with the step it reached. Nothing recorded is lost; `emergence
resume` continues the run from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from runfile.schema import LIBVER, MESSAGE_BYTES
from runfile.writer import trim_rows
from runfile.preflight import find_superblock
from runfile.reader import open_run

FLAGS_AT = 11  # superblock versions 2 and 3: signature, version, size of offsets, size of lengths, flags
_M = 0xFFFFFFFF


class RepairError(ValueError):
    """The file cannot (or must not) be repaired; the message says why."""


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum of HDF5's version 2+ metadata."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & _M
        a = (a - c) & _M; a ^= _rot(c, 4); c = (c + b) & _M
        b = (b - a) & _M; b ^= _rot(a, 6); a = (a + c) & _M
        c = (c - b) & _M; c ^= _rot(b, 8); b = (b + a) & _M
        a = (a - c) & _M; a ^= _rot(c, 16); c = (c + b) & _M
        b = (b - a) & _M; b ^= _rot(a, 19); a = (a + c) & _M
        c = (c - b) & _M; c ^= _rot(b, 4); b = (b + a) & _M
        i += 12
    if i == n:
        return c
    rest = data[i:] + bytes(12 - (n - i))
    a = (a + int.from_bytes(rest[0:4], "little")) & _M
    b = (b + int.from_bytes(rest[4:8], "little")) & _M
    c = (c + int.from_bytes(rest[8:12], "little")) & _M
    for x, y, k in ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24)):  # final
        v = [a, b, c]
        v[x] = ((v[x] ^ v[y]) - _rot(v[y], k)) & _M
        a, b, c = v
    return c


def open_flags(path: str | Path) -> int:
    """The superblock's file-consistency flags (0 for a file closed cleanly, or a superblock without flags)."""
    found = find_superblock(path)
    if found is None or found[1][8] not in (2, 3):
        return 0
    return found[1][FLAGS_AT]


def clear_open_flags(path: str | Path) -> bool:
    """Clears the "open for writing" flags a killed writer left (what `h5clear -s` does); True if any were set."""
    found = find_superblock(path)
    if found is None:
        raise RepairError(f"{path} is not an HDF5 file")
    offset, head = found
    if head[8] not in (2, 3) or head[FLAGS_AT] == 0:
        return False
    width = head[9]
    end = 12 + 4 * width  # base, extension, end-of-file and root object header addresses, then the checksum
    block = bytearray(head[:end])
    if int.from_bytes(head[end:end + 4], "little") != lookup3(bytes(block)):
        raise RepairError(f"{path}: the HDF5 superblock's checksum does not match; the file is damaged, not just "
                          "left open")
    block[FLAGS_AT] = 0
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(block) + lookup3(bytes(block)).to_bytes(4, "little"))
    return True


def _superblock_end(path: str | Path) -> tuple[int, bytearray, int, int] | None:
    """(offset, superblock bytes without the checksum, where its end-of-file address is, its width) of a
    version 2/3 superblock whose checksum holds, else None."""
    found = find_superblock(path)
    if found is None or found[1][8] not in (2, 3):
        return None
    offset, head = found
    width = head[9]
    end = 12 + 4 * width
    block = bytearray(head[:end])
    if int.from_bytes(head[end:end + 4], "little") != lookup3(bytes(block)):
        return None
    return offset, block, 12 + 2 * width, width


def fit_end_of_file(path: str | Path) -> bool:
    """After a write failed at a full disk: HDF5 had already reserved the space of the write that failed, so
    its superblock can claim more bytes than the file has. When the file opens with its end-of-file address
    set to the bytes it does have (nothing it references lies beyond), that is kept; otherwise the superblock
    is left as it was. True if the file was changed."""
    size = Path(path).stat().st_size
    found = _superblock_end(path)
    if found is None:
        return False
    offset, block, at, width = found
    eof = int.from_bytes(block[at:at + width], "little")
    if offset + eof <= size:
        return False
    original = bytes(block) + lookup3(bytes(block)).to_bytes(4, "little")
    block[at:at + width] = (size - offset).to_bytes(width, "little")
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(block) + lookup3(bytes(block)).to_bytes(4, "little"))
    try:
        with h5py.File(path, "r", locking=False) as f:
            f.visit(lambda name: None)  # every object header reachable
        return True
    except (OSError, RuntimeError, KeyError, ValueError):
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(original)
        return False


def repair(path: str | Path) -> str:
    """Repairs a killed run's file in place (see the module doc); returns what was done, in one line."""
    path = Path(path)
    with open_run(path) as run:
        state, reason = run.state()
        status = run.status
        last = run.last_step()
        who = run.writer_identity
    if state == "recording":
        writer = f"process {who['pid']} on {who['host']}" if who else "a live process"
        raise RepairError(f"{path} is being written by {writer}; stop it before repairing (or wait for it to end)")
    cleared = clear_open_flags(path)
    if status != "running":
        return f"{path}: {'cleared the open-for-write flags; ' if cleared else ''}status {status}, nothing else to repair"
    message = (f"killed at step {last}: the writer" + (f" (process {who['pid']} on {who['host']})" if who else "")
               + " stopped without closing the file; everything up to that step is kept")
    with h5py.File(path, "r+", libver=LIBVER) as f:
        kept = trim_rows(f)
        f["status"][()] = np.bytes_(b"killed")
        f["status_message"][()] = np.bytes_(message.encode()[:MESSAGE_BYTES])
    return f"{path}: {message} ({kept['frames']} frames, {kept['train']} training rows)"
