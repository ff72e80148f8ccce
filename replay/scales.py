"""Colour scales: fixed for a whole run, never per frame, and always stated on the picture.

Rules (the default, `auto`):

* tanh: fixed [−1, 1], diverging, 0 exactly white (its range).
* sigmoid: fixed [0, 1], sequential (its range).
* unbounded activations (relu, gelu, elu, silu, leaky_relu, identity, or anything else): one symmetric scale
  [−S, S] per layer, diverging, 0 exactly white, where S is the 99.9th percentile (nearest rank) of |a| over
  every recorded value of the layer: all recorded steps, probes, positions and channels. S therefore does not
  depend on which frames are rendered; on a run still recording it covers the steps written so far. The 0.1%
  of values above S are drawn in the end colours (clipped), and the colour bar says so.
* relu never goes below 0, so its scale is marked one-sided: the same colours, and the colour bar shows only
  [0, S] (the negative half would never be used).

`--scale` overrides, each `[LAYER=]VALUE` (repeatable; a spec without LAYER applies to every layer):

* `S` (a positive number): fixed [−S, S], diverging.
* `LO:HI`: fixed [LO, HI]; diverging when LO = −HI, sequential otherwise.
* `channel`: the percentile rule above applied per channel (each channel its own fixed S_c).
* `auto`: the default rule.
* `step`: a scale per frame, [−S_t, S_t] with S_t the 99.9th percentile of |a| at that step alone (one-sided for
  relu and sigmoid). It shows the pattern of a step whatever its magnitude, at the price of colours that are
  not comparable between steps: every frame says so under its colour bar, whose ticks give that step's S_t.
* `symlog` (or `symlog:C`): the default rule's range on a symmetric-log colour scale, sign(a)·ln(1 + |a|/C):
  linear within about ±C (default S/100), logarithmic beyond, so that small values next to a few large ones
  still get colours. Stated on every picture; colours of different C are not comparable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

from replay.palette import symlog, symlog_inverse

PERCENTILE = 99.9
BOUNDED = {"tanh": (-1.0, 1.0, "diverging"), "sigmoid": (0.0, 1.0, "sequential")}
ONE_SIDED = ("relu",)  # never negative: the bar shows [0, S] of the diverging scale [−S, S]


@dataclasses.dataclass(frozen=True)
class Scale:
    lo: np.ndarray  # [] or [C] for per-channel scales
    hi: np.ndarray  # same shape as lo
    kind: str  # "diverging" (centre = 0, white) or "sequential"
    rule: str  # one line for index.html and reports
    short: str  # at most ~34 characters, drawn under the colour bar
    one_sided: bool = False  # a diverging scale of values that are never negative: the bar shows [0, hi]
    linthresh: float | None = None  # a symmetric-log scale: linear within about ±linthresh (replay/palette.py symlog)
    per_step: bool = False  # lo/hi are placeholders: each frame's scale is [−S_t, S_t] (step_scales)

    def tick_values(self) -> tuple[float, float, float]:
        """The values at the colour bar's left end, middle and right end (its first channel's, if per channel)."""
        lo, hi = float(np.ravel(self.lo)[0]), float(np.ravel(self.hi)[0])
        if self.one_sided:
            lo = 0.0
        if self.linthresh is None:
            return lo, (lo + hi) / 2, hi
        ends = symlog(np.array([lo, hi]), self.linthresh).astype(np.float64)
        return lo, float(symlog_inverse(ends.mean(), self.linthresh)), hi

    @property
    def per_channel(self) -> bool:
        return self.lo.ndim == 1

    def describe(self) -> str:
        """Range and rule, for index.html and the command's report."""
        if self.per_step:
            return self.rule
        if self.per_channel:
            return f"{self.rule}: S_c from {float(self.hi.min()):.3g} to {float(self.hi.max()):.3g}"
        return f"[{format_value(float(self.lo))}, {format_value(float(self.hi))}] {self.rule}"


@dataclasses.dataclass(frozen=True)
class ScaleSpec:
    """One parsed `--scale` value."""

    layer: str | None
    mode: str  # "auto" | "channel" | "fixed" | "step"
    lo: float = 0.0
    hi: float = 0.0
    symlog: float | None = None  # 0: symlog with the default C; > 0: that C; None: linear


def format_value(v: float) -> str:
    if v == 0:
        return "0"
    text = f"{v:+.3g}" if v > 0 else f"{v:.3g}"
    return text.replace("e-0", "e-").replace("e+0", "e")


def parse_scale(text: str) -> ScaleSpec:
    layer, sep, value = text.rpartition("=")
    layer = layer if sep else None
    value = value.strip().lower()
    usage = (f"bad --scale {text!r}: expected [LAYER=]VALUE with VALUE a positive number S (for [-S, S]), "
             "LO:HI, 'channel', 'step', 'auto' or 'symlog[:C]'")
    if value in ("auto", "channel", "step"):
        return ScaleSpec(layer, value)
    if value == "symlog" or value.startswith("symlog:"):
        c = value.partition(":")[2]
        try:
            linthresh = float(c) if c else 0.0
        except ValueError:
            linthresh = -1.0
        if not (math.isfinite(linthresh) and linthresh >= 0 and (not c or linthresh > 0)):
            raise ValueError(usage + f"; symlog:C needs a positive C, got {c!r}")
        return ScaleSpec(layer, "auto", symlog=linthresh)
    try:
        if ":" in value:
            lo, hi = (float(v) for v in value.split(":"))
        else:
            hi = float(value)
            lo = -hi
    except ValueError:
        raise ValueError(usage) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(usage + f"; got an empty or non-finite range [{lo}, {hi}]")
    return ScaleSpec(layer, "fixed", lo, hi)


def spec_for(layer: str, specs: Sequence[ScaleSpec], layers: Sequence[str]) -> ScaleSpec:
    """The last spec naming `layer`, else the last spec without a layer, else auto."""
    for s in specs:
        if s.layer is not None and s.layer not in layers:
            raise ValueError(f"--scale names layer {s.layer!r}, which is not in the run; layers: {', '.join(layers)}")
    named = [s for s in specs if s.layer == layer]
    general = [s for s in specs if s.layer is None]
    return (named or general or [ScaleSpec(None, "auto")])[-1]


class TopAbs:
    """Streams chunks of activations and keeps, per channel or overall, the k largest |a| seen.

    That is exactly what a high percentile needs: the nearest-rank q-th percentile of N values is the
    smallest of the N − ceil(q N / 100) + 1 largest ones.
    """

    def __init__(self, per_channel: bool, total: int):
        """`total`: how many values (per channel, if per_channel) will be added; it fixes how many to keep."""
        self.per_channel = per_channel
        self.total = total
        self.count = 0
        self._top: np.ndarray | None = None  # [k, C] or [k, 1], in no particular order

    def add(self, chunk: np.ndarray) -> None:  # [..., C]
        c = chunk.shape[-1]
        a = np.abs(chunk.reshape(-1, c) if self.per_channel else chunk.reshape(-1, 1)).astype(np.float32)
        a = np.nan_to_num(a, nan=0.0)
        self.count += a.shape[0]
        if self.count > self.total:
            raise ValueError(f"got {self.count} values, more than the {self.total} announced")
        keep = self._needed(self.total)
        merged = a if self._top is None else np.concatenate([self._top, a])
        if merged.shape[0] > keep:
            merged = -np.partition(-merged, keep - 1, axis=0)[:keep]
        self._top = merged

    @staticmethod
    def _needed(n: int) -> int:
        return n - math.ceil(PERCENTILE / 100.0 * n) + 1

    def percentile(self) -> np.ndarray:
        """[C] or [] the nearest-rank PERCENTILE of |a|."""
        if self._top is None:
            raise ValueError("no values to take a percentile of")
        k = self._needed(self.count)
        top = -np.partition(-self._top, k - 1, axis=0)[:k]
        p = top.min(axis=0)
        return p if self.per_channel else p[0]


def resolve_scale(
    activation: str, spec: ScaleSpec, chunks: Iterable[np.ndarray] | None, frame_shape: Sequence[int], num_frames: int
) -> Scale:
    """The scale of one layer. `chunks` ([t, P, H, W, C] covering all `num_frames` recorded frames of shape
    `frame_shape`) is read only if the rule needs the values."""
    if spec.mode == "step":
        return per_step_scale(activation)
    fixed = fixed_scale(activation, spec)
    if fixed is not None:
        return with_symlog(fixed, spec.symlog)
    top = TopAbs(spec.mode == "channel", values_per_frame(frame_shape, spec.mode == "channel") * num_frames)
    for chunk in chunks or ():
        top.add(chunk)
    return with_symlog(percentile_scale(top, num_frames, activation in ONE_SIDED), spec.symlog)


def shared_scale(a: Scale, b: Scale) -> Scale:
    """One scale for a layer of two runs: the range that holds both runs' scales (per-channel scales by their
    widest channel), one-sided only if both are (compare --shared-scale, the viewer's "one colour scale for both runs")."""
    lo = min(float(np.min(a.lo)), float(np.min(b.lo)))
    hi = max(float(np.max(a.hi)), float(np.max(b.hi)))
    kind = "sequential" if a.kind == b.kind == "sequential" else "diverging"
    if kind == "diverging":
        lo = -max(abs(lo), abs(hi))
        hi = -lo
    rule = "one scale for both runs: the range holding A's and B's own scales"
    return Scale(np.float32(lo), np.float32(hi), kind, rule, "shared by A and B", a.one_sided and b.one_sided)


def per_step_scale(activation: str) -> Scale:
    """The `step` rule: each frame on its own [−S_t, S_t] (`step_scales`); lo/hi here are placeholders. One-sided
    for activations that are never negative."""
    one_sided = activation in ONE_SIDED or activation == "sigmoid"
    rule = (f"per step: S = p{PERCENTILE:g} of |a| over the frame's values at its step alone, clipped beyond; "
            "colours of different steps are not comparable" + (" (never negative: the bar shows [0, S])" if one_sided else ""))
    return Scale(np.float32(-1.0), np.float32(1.0), "diverging", rule, f"PER STEP: p{PERCENTILE:g} |a| THIS STEP ONLY",
                 one_sided, per_step=True)


def step_scales(values: np.ndarray) -> np.ndarray:
    """[t] float32: S_t, the nearest-rank PERCENTILE of |a| over each frame of `values` [t, ...] (NaN counts as 0;
    an all-zero frame gets S = 1, as the fixed rule does)."""
    a = np.nan_to_num(np.abs(values.reshape(len(values), -1).astype(np.float32)), nan=0.0)
    n = a.shape[1]
    rank = max(1, math.ceil(PERCENTILE / 100.0 * n))  # the percentile is the rank-th smallest
    s = np.partition(a, rank - 1, axis=1)[:, rank - 1] if n else np.zeros(len(values), np.float32)
    return np.where(s > 0, s, np.float32(1.0)).astype(np.float32)


def with_symlog(scale: Scale, linthresh: float | None) -> Scale:
    """`scale` on a symmetric-log colour axis (None: unchanged; 0: C = 1% of the scale's largest end)."""
    if linthresh is None:
        return scale
    top = float(max(np.max(np.abs(scale.lo)), np.max(np.abs(scale.hi))))
    c = linthresh or top / 100
    return dataclasses.replace(scale, linthresh=c, rule=f"{scale.rule}; symlog colours: linear within ±{c:.3g}, "
                               "logarithmic beyond", short=f"symlog C={c:.2g}; " + scale.short)


def fixed_scale(activation: str, spec: ScaleSpec) -> Scale | None:
    """The scale when the rule needs no values (a --scale range, or a bounded activation), else None."""
    if spec.mode == "fixed":
        kind = "diverging" if spec.lo == -spec.hi else "sequential"
        return Scale(np.float32(spec.lo), np.float32(spec.hi), kind, "fixed by --scale", "fixed by --scale")
    if spec.mode == "auto" and activation in BOUNDED:
        lo, hi, kind = BOUNDED[activation]
        return Scale(np.float32(lo), np.float32(hi), kind, f"fixed ({activation} range)", f"fixed: {activation} range")
    return None


def values_per_frame(frame_shape: Sequence[int], per_channel: bool) -> int:
    """How many values one frame of `frame_shape` ([P, H, W, C]) adds to a `TopAbs` (per channel, if so)."""
    return math.prod(frame_shape[:-1]) * (1 if per_channel else frame_shape[-1])


def percentile_scale(top: TopAbs, num_frames: int, one_sided: bool = False) -> Scale:
    """The percentile rule's scale [−S, S] from the values streamed into `top` (all `num_frames` frames).

    `top` may have been announced more values than it got (a run still recording): the percentile is taken
    over the values it holds, exactly."""
    s = np.asarray(top.percentile(), np.float32)
    zero = s <= 0
    s = np.where(zero, np.float32(1.0), s)  # an all-zero layer: any scale shows it white
    where = "per channel" if top.per_channel else "per layer"
    rule = f"fixed {where}: S = p{PERCENTILE:g} of |a| over all {num_frames} recorded steps, clipped beyond"
    if zero.all():
        rule += " (all zero: S set to 1)"
    short = f"p{PERCENTILE:g} |a|, all steps{', per ch' if top.per_channel else ''}; clipped"
    if one_sided:
        rule += " (never negative: the bar shows [0, S])"
    return Scale(-s, s, "diverging", rule, short, one_sided)
