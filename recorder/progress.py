"""A dependency-free progress line: step, train loss/accuracy, steps/s and ETA.

On a terminal it redraws one line; otherwise (logs, CI) it prints a line every 10% of the run.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1
        self._last_printed = -1  # the step of the last line printed (not on a terminal)
        self._first: tuple[float, int] | None = None  # (time, step) of the first completed step

    def update(self, step: int, loss: float | None = None, accuracy: float | None = None, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self._t0
        if self._first is None and step > 0:
            self._first = (now, step)  # rates start here, so compilation does not count as training
        rate = float("nan")
        if self._first is not None and step > self._first[1]:
            rate = (step - self._first[1]) / (now - self._first[0])
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        metrics = f" train loss {loss:.4f} acc {accuracy:.3f}" if loss is not None and accuracy is not None else ""
        speed = f"{rate:.2f} steps/s" if rate == rate else "compiling"
        line = (
            f"[{bar}] step {step}/{self.total}{metrics} | {speed} | "
            f"elapsed {_duration(elapsed)} ETA {_duration(eta)}"
        )
        if self.tty:
            if force or now - self._last_draw > 0.1:
                self.stream.write("\r" + line + "\033[K")
                self.stream.flush()
                self._last_draw = now
        else:
            decile = 10 * step // max(self.total, 1)
            if (force and step != self._last_printed) or decile > self._last_decile:
                self._last_printed = step
                self.stream.write(line + "\n")
                self.stream.flush()
                self._last_decile = decile

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
