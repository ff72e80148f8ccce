"""Optional MP4 output through imageio's ffmpeg plugin (`pip install 'emergence[video]'`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mp4_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


class Mp4Writer:
    """H.264 MP4 from palette-index frames; odd sizes are padded with white to even ones (the codec needs it)."""

    def __init__(self, path: str | Path, palette: np.ndarray, fps: float):
        if not mp4_available():
            raise RuntimeError(
                "MP4 output needs imageio's ffmpeg plugin, which is not installed: "
                "pip install 'emergence[video]' (or pip install imageio-ffmpeg), or leave out --mp4"
            )
        import imageio.v2 as imageio

        self.path = Path(path)
        self.palette = np.asarray(palette, np.uint8)
        self._writer = imageio.get_writer(self.path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                          quality=8, pixelformat="yuv420p", macro_block_size=1)

    def add(self, frame: np.ndarray) -> None:
        h, w = frame.shape
        rgb = np.full((h + h % 2, w + w % 2, 3), 255, np.uint8)
        rgb[:h, :w] = self.palette[frame]
        self._writer.append_data(rgb)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
