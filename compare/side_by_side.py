"""One GIF per layer with run A on the left and run B on the right, on one step clock.

Alignment: a frame is shown for every step recorded in both runs (the intersection of their frame steps),
so each pair of halves shows the two networks after the same number of updates. Each half keeps its own
honest colour scale (replay/scales.py: fixed by default, per step or symmetric-log on request) and its own title
naming the run and its activation; `shared` gives both halves one fixed scale, the range holding both own ones.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from replay.animate import LayerFrames, layer_scale
from replay.grid import GridStyle
from replay.palette import PAPER
from replay.scales import Scale, ScaleSpec, shared_scale, with_symlog
from runfile.reader import Run

SEPARATOR = 12  # pixels of paper between the halves


def shared_steps(a: Run, b: Run) -> np.ndarray:
    steps = np.intersect1d(a.steps, b.steps)
    if len(steps) == 0:
        raise ValueError(f"{a.path.name} and {b.path.name} have no recorded step in common "
                         f"(A: {a.steps[0]}..{a.steps[-1]} {a.schedule}, B: {b.steps[0]}..{b.steps[-1]} {b.schedule})")
    return steps


def check_shared(spec: ScaleSpec) -> None:
    """One shared fixed scale and a per-step or per-channel rule exclude each other: one clear error."""
    if spec.mode in ("step", "channel"):
        raise ValueError(f"--shared-scale gives both runs one fixed scale; it cannot be combined with --scale {spec.mode}")


class PairFrames:
    """Frames of `layer` from two runs, side by side; positions index `steps` (the shared steps)."""

    def __init__(self, a: Run, b: Run, layer: str, steps: np.ndarray, names: tuple[str, str],
                 style: GridStyle = GridStyle(), spec: ScaleSpec = ScaleSpec(None, "auto"), shared: bool = False):
        scales: tuple[Scale | None, Scale | None] = (None, None)
        if shared:
            check_shared(spec)
            one = with_symlog(shared_scale(layer_scale(a, layer, spec), layer_scale(b, layer, spec)), spec.symlog)
            scales = (one, one)
        self.left = LayerFrames(a, layer, style=style, title=f"A {names[0]}: {layer} {a.activation_label(layer)}",
                                scale_spec=spec, scale=scales[0])
        self.right = LayerFrames(b, layer, style=style, title=f"B {names[1]}: {layer} {b.activation_label(layer)}",
                                 scale_spec=spec, scale=scales[1])
        if not np.array_equal(self.left.palette, self.right.palette):
            raise ValueError(
                f"{layer}: the two runs need different colour palettes (a {self.left.scale.kind} and a "
                f"{self.right.scale.kind} scale, or different probe images); one GIF has one palette. "
                "Compare layers with the same kind of scale, or use the same probes."
            )
        self.palette = self.left.palette
        self._pos_a = np.searchsorted(a.steps, steps)
        self._pos_b = np.searchsorted(b.steps, steps)

    def __call__(self, positions: np.ndarray) -> Iterator[np.ndarray]:
        for fa, fb in zip(self.left(self._pos_a[positions]), self.right(self._pos_b[positions])):
            h = max(fa.shape[0], fb.shape[0])
            out = np.full((h, fa.shape[1] + SEPARATOR + fb.shape[1]), PAPER, np.uint8)
            out[: fa.shape[0], : fa.shape[1]] = fa
            out[: fb.shape[0], fa.shape[1] + SEPARATOR :] = fb
            yield out

    @property
    def shape(self) -> tuple[int, int]:
        (ha, wa), (hb, wb) = self.left.grid.shape, self.right.grid.shape
        return max(ha, hb), wa + SEPARATOR + wb
