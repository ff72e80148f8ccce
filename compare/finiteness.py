"""Which analysed steps of a layer hold non-finite data, so that no measure uses them silently.

A step is non-finite for a layer when its analysis statistics say so (`nonfinite_fraction` > 0, or a `mean`
or `std` that is not finite: files written before that statistic existed) or its Gram holds a NaN or ±inf
(the features were finite but their products overflowed float32). Such steps are excluded from drift,
progress, settling and the similarity between runs, and reported as "non-finite from step N", never as a
dead, constant or zero-Gram layer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from runfile.reader import Run


@dataclasses.dataclass(frozen=True)
class Finiteness:
    steps: np.ndarray  # [A] analysed steps
    bad: np.ndarray  # [A] bool: non-finite at that step
    fraction: np.ndarray | None  # [A] fraction of non-finite values (None: the file predates the statistic)

    @property
    def any(self) -> bool:
        return bool(self.bad.any())

    @property
    def first(self) -> int | None:
        return int(self.steps[np.argmax(self.bad)]) if self.any else None

    def describe(self) -> str:
        """"non-finite from step N (k of A analysed steps, up to x% of values)", or "" when all are finite."""
        if not self.any:
            return ""
        share = ""
        if self.fraction is not None and np.isfinite(self.fraction[self.bad]).all():
            most = float(np.max(self.fraction[self.bad]))
            share = (f", up to {most:.1%} of values" if most > 0 else
                     ", finite values too large for float32: their Gram or standard deviation overflows")
        return f"non-finite from step {self.first} ({int(self.bad.sum())} of {len(self.bad)} analysed steps{share})"

    def as_json(self) -> dict:
        return {"first_step": self.first, "steps": self.steps[self.bad].tolist(),
                "fraction": None if self.fraction is None else [float(x) for x in self.fraction[self.bad]]}


def flag_order(flag: str) -> tuple[bool, str]:
    """Flags sorted with the non-finite one first: it says the others' numbers exclude steps."""
    return (not flag.startswith("non-finite"), flag)


def stats_finiteness(run: Run, layer: str) -> Finiteness:
    """From the analysis statistics alone (cheap: no Gram is read)."""
    stats = run.activity(layer)
    steps = run.analysis_steps[: len(next(iter(stats.values())))] if stats else run.analysis_steps
    bad = np.zeros(len(steps), bool)
    for name in ("mean", "std"):
        if name in stats:
            bad |= ~np.isfinite(stats[name])
    fraction = stats.get("nonfinite_fraction")
    if fraction is not None:
        bad |= ~(fraction == 0)
    return Finiteness(steps, bad, fraction)


def layer_finiteness(run: Run, layer: str, grams: np.ndarray, positions: np.ndarray) -> Finiteness:
    """At the analysed steps at `positions`, whose Grams are `grams` [len(positions), n, n]."""
    whole = stats_finiteness(run, layer)
    bad = whole.bad[positions] | ~np.isfinite(grams).all(axis=(1, 2))
    fraction = None if whole.fraction is None else whole.fraction[positions]
    return Finiteness(whole.steps[positions], bad, fraction)


def nonfinite_layers(run: Run, layers: list[str] | None = None) -> dict[str, Finiteness]:
    """The layers of `run` with any non-finite analysed step (from the statistics)."""
    if not run.has_analysis:
        return {}
    found = {name: stats_finiteness(run, name) for name in (layers or run.layers)}
    return {name: f for name, f in found.items() if f.any}
