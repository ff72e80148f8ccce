"""A check of a file's HDF5 superblock before HDF5 opens it, so that a cut-short file is refused at once.

HDF5's SWMR reader retries metadata reads that fail their checksum (a live writer may be rewriting them), so a
file that was cut short (a copy interrupted, a disk that filled) can keep a reader busy for minutes. The
superblock, in the first bytes of the file, states the end-of-file address the library last flushed: a file
shorter than that is missing data that its own metadata points to. A live writer only ever makes the file
longer than the address it last flushed, so a growing run file passes.

Superblock layouts (HDF5 file format specification, "Superblock"): the signature `\\x89HDF\\r\\n\\x1a\\n` at offset
0, 512, 1024, 2048, …; then the version byte. Versions 0 and 1 keep the end-of-file address as the third
address after a block of fixed fields (24 bytes for version 0, 28 for version 1); versions 2 and 3 as the
third address after the version, the two size bytes and the flags byte.
"""

from __future__ import annotations

import os
from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
UNDEFINED_ADDRESS = (1 << 64) - 1


def find_superblock(path: str | Path) -> tuple[int, bytes] | None:
    """(offset of the superblock, its first 48 bytes), or None when the file has no HDF5 signature."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < max(size, 1):
            f.seek(offset)
            head = f.read(48)
            if head[:8] == SIGNATURE:
                return offset, head
            offset = 512 if offset == 0 else offset * 2
    return None


def superblock_problem(path: str | Path) -> str | None:
    """Why `path` cannot be a complete HDF5 file (one line), or None when its superblock looks whole."""
    size = os.path.getsize(path)
    found = find_superblock(path)
    if found is None:
        return "not an HDF5 file (no HDF5 signature)"
    offset, head = found
    version = head[8] if len(head) > 8 else -1
    if version in (0, 1):
        fixed = 24 if version == 0 else 28
        width = head[13] if len(head) > 13 else 0
        eof_at = fixed + 2 * width
    elif version in (2, 3):
        width = head[9] if len(head) > 9 else 0
        eof_at = 12 + 2 * width
    else:
        return f"unknown HDF5 superblock version {version} (the file is damaged, or newer than this HDF5)"
    if width not in (2, 4, 8) or len(head) < eof_at + width:
        return "damaged HDF5 superblock (the file is cut short or overwritten at its start)"
    eof = int.from_bytes(head[eof_at : eof_at + width], "little")
    if eof != UNDEFINED_ADDRESS and offset + eof > size:
        return (f"the file is cut short: it has {size:,} bytes but its HDF5 superblock says {offset + eof:,} "
                "(an interrupted copy or a full disk); the missing part cannot be read")
    return None
