"""What to render: which recorded frames, probes and channels (`--steps`, `--every`, `--probes`, `--channels`).

Frame rule: take the recorded frames whose step lies in `--steps A:B` (inclusive, either end optional), then
every k-th of them starting with the first, and always the last one (so the final state is always shown).
`n` selected frames with `--every k` therefore give ceil(n / k) frames, plus one when (n − 1) is not a
multiple of k.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class StepRange:
    first: int | None = None
    last: int | None = None

    def __str__(self) -> str:
        return f"{'' if self.first is None else self.first}:{'' if self.last is None else self.last}"


def parse_step_range(text: str) -> StepRange:
    a, sep, b = text.partition(":")
    try:
        first = int(a) if a.strip() else None
        last = int(b) if b.strip() else None
        if not sep:
            first = last = int(a)
    except ValueError:
        raise ValueError(f"bad --steps {text!r}: expected A:B (recorded steps, inclusive; A or B may be left out)") from None
    if first is not None and last is not None and last < first:
        raise ValueError(f"bad --steps {text!r}: the last step {last} is before the first {first}")
    return StepRange(first, last)


def parse_indices(text: str, count: int, what: str) -> list[int]:
    """'0,3,5' or '0:8' (end exclusive) or a mix, as positions in [0, count)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if ":" in part:
                a, _, b = part.partition(":")
                out.extend(range(int(a) if a else 0, int(b) if b else count))
            else:
                out.append(int(part))
    except ValueError:
        raise ValueError(f"bad --{what} {text!r}: expected numbers like 0,3,5 or a range 0:8") from None
    bad = [i for i in out if not 0 <= i < count]
    if bad or not out:
        raise ValueError(f"--{what} {text!r} selects {bad or 'nothing'}; valid {what}: 0 to {count - 1}")
    return list(dict.fromkeys(out))


def select_frames(steps: np.ndarray, step_range: StepRange = StepRange(), every: int = 1) -> np.ndarray:
    """Positions (into the run's recorded frames) to render, increasing."""
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    steps = np.asarray(steps)
    keep = np.ones(len(steps), bool)
    if step_range.first is not None:
        keep &= steps >= step_range.first
    if step_range.last is not None:
        keep &= steps <= step_range.last
    pos = np.flatnonzero(keep)
    if len(pos) == 0:
        recorded = f"{steps[0]} to {steps[-1]}" if len(steps) else "none yet"
        raise ValueError(f"--steps {step_range} selects no recorded step; recorded steps: {recorded}")
    return thin(pos, every)


def thin(positions: np.ndarray, stride: int) -> np.ndarray:
    """Every `stride`-th of `positions`, first and last always kept (`--every`, and how `--max-mb` drops frames)."""
    picked = positions[::stride]
    if picked[-1] != positions[-1]:
        picked = np.append(picked, positions[-1])
    return picked
