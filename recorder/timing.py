"""Where a run's wall time went: named phases timed on the main thread, and the process's age at start-up.

The loop never waits for the device between blocks, so device time shows up in whichever phase first waits
for it (the writer's drain at the end, or training itself when the writer's queue is full); the line says
what each phase covers rather than pretending to split device time it cannot see.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that is not known."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Phases:
    """Accumulates wall seconds per named phase, in the order phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def line(self) -> str:
        """`time: start-up 2.1 s, data and model 0.8 s, ...; total 9.9 s` (total: the phases' sum)."""
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())
        return f"time: {parts}; total {sum(self.seconds.values()):.1f} s"
