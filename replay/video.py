"""Optional MP4 output: frames piped as raw RGB into the ffmpeg binary that imageio's ffmpeg plugin ships
(`pip install 'emergence[video]'`), encoded as H.264 with yuv420p so that browsers play it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from replay.images import temp_beside


def ffmpeg_exe() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


class Mp4Writer:
    """MP4 from palette-index frames; odd sizes are padded with white to even ones (yuv420p needs it)."""

    def __init__(self, path: str | Path, palette: np.ndarray, fps: float):
        exe = ffmpeg_exe()
        if exe is None:
            raise RuntimeError(
                "MP4 output needs imageio's ffmpeg plugin, which is not installed: "
                "pip install 'emergence[video]' (or pip install imageio-ffmpeg), or leave out --mp4"
            )
        self.path = Path(path)
        self.palette = np.asarray(palette, np.uint8)
        self.fps = fps
        self._exe = exe
        self._proc: subprocess.Popen | None = None
        self._tmp = temp_beside(self.path)  # renamed when complete

    def add(self, frame: np.ndarray) -> None:
        h, w = frame.shape
        rgb = np.full((h + h % 2, w + w % 2, 3), 255, np.uint8)
        rgb[:h, :w] = self.palette[frame]
        if self._proc is None:
            cmd = [self._exe, "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                   "-s", f"{rgb.shape[1]}x{rgb.shape[0]}", "-r", f"{self.fps:g}", "-i", "-",
                   "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-f", "mp4", str(self._tmp)]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._proc.stdin is not None
        self._proc.stdin.write(rgb.tobytes())

    def close(self, ok: bool = True) -> None:
        proc, self._proc = self._proc, None
        failure = None
        if proc is not None:
            _, err = proc.communicate()  # closes stdin, waits for ffmpeg to finish the file
            if proc.returncode != 0:
                failure = f"ffmpeg failed writing {self.path} (exit {proc.returncode}): {err.decode(errors='replace')[-500:]}"
        if ok and failure is None and proc is not None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
        if ok and failure:
            raise RuntimeError(failure)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(ok=exc_type is None)
