"""When a measure over training settled: the first step from which it stays above a level to the end."""

from __future__ import annotations

import numpy as np


def settled_at(steps: np.ndarray, progress: np.ndarray, level: float) -> int | None:
    """First step from which `progress` stays >= level to the end; None if it never does or is undefined."""
    if len(progress) == 0 or not np.all(np.isfinite(progress)):
        return None
    below = np.flatnonzero(progress < level)
    first = 0 if len(below) == 0 else below[-1] + 1
    return int(steps[first]) if first < len(steps) else None
