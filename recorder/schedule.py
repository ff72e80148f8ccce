"""Which steps get a frame: a pure function of the schedule string and the number of updates.

- `every`: every step 0..N (the default; the reference experiment records all 291 frames).
- `every:K`: steps 0, K, 2K, ... and always the last step N.
- `log:N`: N steps (fewer if the run is shorter) spaced evenly in log(step), always with 0, 1 and the last step: dense early,
  where features change fastest, sparse late.
"""

from __future__ import annotations

import numpy as np


def parse_schedule(spec: str) -> tuple[str, int]:
    """`spec` -> (kind, parameter); raises ValueError saying what is valid."""
    kind, _, arg = spec.partition(":")
    if kind == "every" and not arg:
        return "every", 1
    if kind in ("every", "log") and arg.isdigit() and int(arg) >= (1 if kind == "every" else 2):
        return kind, int(arg)
    raise ValueError(f"unknown schedule {spec!r}; expected one of: every, every:K (K >= 1), log:N (N >= 2)")


def recorded_steps(spec: str, total_steps: int) -> np.ndarray:
    """Sorted, unique steps in [0, total_steps] that get a frame."""
    kind, arg = parse_schedule(spec)
    if kind == "every":
        steps = np.arange(0, total_steps + 1, arg)
    else:
        # Rounding merges the first log-spaced points; sample more densely until N distinct steps remain.
        want = min(arg - 1, total_steps)
        num = want
        while True:
            steps = np.unique(np.round(np.geomspace(1, max(total_steps, 1), num=num)).astype(np.int64))
            if len(steps) >= want or num > 4 * total_steps:
                break
            num += max(1, want - len(steps))
        steps = np.concatenate([[0], steps])
    return np.unique(np.concatenate([steps, [total_steps]])).astype(np.int64)


def snapshot_steps(n: int, total_steps: int) -> np.ndarray:
    """The steps whose weights a run stores (`snapshots=n`): 0 and the last always; for n >= 2, n log-spaced
    steps (as `log:n` frames), dense early where features change fastest."""
    if n < 2:
        return np.unique(np.asarray([0, total_steps], np.int64))
    return recorded_steps(f"log:{n}", total_steps)
