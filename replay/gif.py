"""Animated GIF output from palette-index frames: one global 256-colour palette, frame differences, atomic.

Each frame after the first is cropped to the box of pixels that changed, and inside that box the unchanged
pixels become the transparent index (disposal 1 keeps the previous frame underneath), which gives LZW long
runs to compress. Pillow's GIF encoder does the LZW; this module writes the container itself so that
Pillow never re-quantises, re-orders the palette or merges frames (every recorded step stays a frame).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import GifImagePlugin, Image

from replay.images import temp_beside
from replay.palette import TRANSPARENT

BROWSER_MAX_FPS = 50  # browsers play GIF frames shorter than 20 ms at about 10 fps, not faster


def frame_duration_ms(fps: float) -> int:
    """GIF delays are whole centiseconds: the nearest one to 1/fps, at least 20 ms."""
    if fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    return max(20, int(round(100.0 / fps)) * 10)


class GifWriter:
    """Writes frames (uint8 [H, W] palette indices, TRANSPARENT unused) to `path` via a temporary file.

    The file appears under its final name only when `close()` succeeds; on an exception it is removed.
    """

    def __init__(self, path: str | Path, palette: np.ndarray, duration_ms: int, comment: str = ""):
        self.path = Path(path)
        self.palette = np.asarray(palette, np.uint8).reshape(256, 3)
        self.duration_ms = int(duration_ms)
        self.comment = comment
        self.frames = 0
        self._tmp = temp_beside(self.path)
        self._fp = open(self._tmp, "wb")
        self._prev: np.ndarray | None = None

    @property
    def bytes_written(self) -> int:
        return self._fp.tell()

    def _header(self, h: int, w: int) -> bytes:
        out = b"GIF89a" + struct.pack("<HHBBB", w, h, 0xF7, 0, 0) + self.palette.tobytes()
        out += b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\x00"  # loop forever
        if self.comment:
            data = self.comment.encode("ascii", errors="replace")
            out += b"!\xfe" + b"".join(bytes([len(c)]) + c for c in _blocks(data)) + b"\x00"
        return out

    def add(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, np.uint8)
        if self._prev is None:
            self._fp.write(self._header(*frame.shape))
            self._write(frame, (0, 0))
        else:
            if frame.shape != self._prev.shape:
                raise ValueError(f"frame shape {frame.shape} differs from the first frame's {self._prev.shape}")
            changed = frame != self._prev
            rows = np.flatnonzero(changed.any(axis=1))
            if len(rows) == 0:  # identical frame: keep it as a frame of its own, one pixel redrawn
                self._write(frame[:1, :1], (0, 0))
            else:
                cols = np.flatnonzero(changed.any(axis=0))
                y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                box = frame[y0:y1, x0:x1].copy()
                box[~changed[y0:y1, x0:x1]] = TRANSPARENT
                self._write(box, (int(x0), int(y0)))
        self._prev = frame
        self.frames += 1

    def _write(self, pixels: np.ndarray, offset: tuple[int, int]) -> None:
        im = Image.fromarray(pixels, "P")
        chunks = GifImagePlugin.getdata(im, offset, duration=self.duration_ms, disposal=1, transparency=TRANSPARENT)
        for chunk in chunks:
            self._fp.write(chunk)

    def close(self) -> None:
        """Finishes the file and moves it to its final name."""
        if self._fp.closed:
            return
        if self.frames == 0:
            self.abort()
            raise ValueError(f"no frames to write to {self.path}")
        self._fp.write(b";")
        self._fp.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._fp.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "GifWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _blocks(data: bytes) -> list[bytes]:
    return [data[i : i + 255] for i in range(0, len(data), 255)]
