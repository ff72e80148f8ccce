"""Still pictures: palette-index frames to PNG, written under a temporary name and renamed when complete."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image


def temp_beside(path: Path) -> Path:
    """The hidden temporary name an output is written under before it is renamed to `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds, else deletes it."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _palette_image(frame: np.ndarray, palette: np.ndarray) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(frame, np.uint8), "P")
    im.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    return im


def save_png(path: Path, frame: np.ndarray, palette: np.ndarray) -> Path:
    """A palette PNG of `frame` (uint8 [H, W] indices into `palette` [256, 3]); the colours are exact."""
    with atomic_path(path) as tmp:
        _palette_image(frame, palette).save(tmp, format="PNG", optimize=False)
    return path


def png_bytes(frame: np.ndarray, palette: np.ndarray) -> bytes:
    """The bytes `save_png` would write."""
    buffer = io.BytesIO()
    _palette_image(frame, palette).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
