"""Distributions of a layer's activations over training: a histogram at every recorded step, and its quantiles.

What is counted: the stored frames, so the P probe images' activations at every position and stored channel of
the layer (P·H·W·C values a step), at every recorded step; or, for one channel, its P·H·W values a step. Not the analysis images (the run keeps only their
Gram matrices). Computed from the file when asked, in blocks of frames: nothing is added to the training step,
and a run recorded before this view existed has it too.

Bins: BINS equal bins over the layer's colour scale [lo, hi] (replay/scales.py; a one-sided relu scale counts
from 0), the same bins at every step, so a step's column compares with every other's. Values beyond the range
are counted in the end bins and reported (`below`, `above`); non-finite values are counted apart (`nonfinite`)
and are in neither the histogram nor the quantiles.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from replay.images import atomic_path
from replay.scales import Scale
from runfile.reader import Run

BINS = 64
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
READ_BYTES = 4 << 20  # stored bytes read at a time: the binning holds ~16 bytes per value (server memory)


@dataclasses.dataclass(frozen=True)
class Distribution:
    layer: str
    steps: np.ndarray  # [T]
    edges: np.ndarray  # [BINS + 1] float64
    counts: np.ndarray  # [T, BINS] int64: finite values per bin, the ones beyond the range in the end bins
    quantiles: np.ndarray  # [T, len(QUANTILES)] of the finite values (NaN where a step has none)
    below: np.ndarray  # [T] finite values under edges[0] (counted in the first bin)
    above: np.ndarray  # [T] finite values over edges[-1] (counted in the last bin)
    nonfinite: np.ndarray  # [T]
    per_step: int  # values a step (P·H·W·C, or P·H·W for one channel)
    channel: int | None = None  # the model's channel number when the distribution is of one channel

    def describe(self) -> str:
        clipped = int(self.below.sum() + self.above.sum())
        total = self.per_step * len(self.steps)
        tail = f"; {clipped / total:.2%} of values beyond it, counted in the end bins" if clipped else ""
        bad = int(self.nonfinite.sum())
        return (f"{len(self.edges) - 1} bins over [{self.edges[0]:+.3g}, {self.edges[-1]:+.3g}]{tail}"
                + (f"; {bad:,} non-finite values left out" if bad else ""))


def bin_range(scale: Scale, stored: int | None = None) -> tuple[float, float]:
    """The histogram's range: the layer's colour scale, from 0 when it is one-sided (relu); when the scale is
    per channel, stored channel `stored`'s, or the widest channel's."""
    lo, hi = np.asarray(scale.lo, np.float64), np.asarray(scale.hi, np.float64)
    if stored is not None and lo.ndim:
        lo, hi = lo[stored], hi[stored]
    lo, hi = float(np.min(lo)), float(np.max(hi))
    if scale.one_sided:
        lo = 0.0
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def histograms(frames: np.ndarray, lo: float, hi: float, bins: int = BINS) -> tuple[np.ndarray, ...]:
    """counts [B, bins], quantiles [B, Q], below [B], above [B], nonfinite [B] of a block of frames [B, ...]."""
    x = frames.reshape(len(frames), -1).astype(np.float32)
    finite = np.isfinite(x)
    nonfinite = (~finite).sum(axis=1)
    below = (finite & (x < lo)).sum(axis=1)
    above = (finite & (x > hi)).sum(axis=1)
    index = np.clip(np.floor((np.where(finite, x, lo) - lo) * (bins / (hi - lo))), 0, bins - 1).astype(np.int64)
    index += (np.arange(len(x)) * bins)[:, None]
    counts = np.bincount(index[finite], minlength=len(x) * bins).reshape(len(x), bins)
    if finite.all():
        q = np.quantile(x, QUANTILES, axis=1).T
    else:
        with np.errstate(all="ignore"):
            q = np.nanquantile(np.where(finite, x, np.nan), QUANTILES, axis=1).T
    return counts, q, below, above, nonfinite


def layer_distribution(run: Run, layer: str, scale: Scale, positions: Sequence[int] | None = None,
                       bins: int = BINS, stored: int | None = None) -> Distribution:
    """The layer's distribution at the recorded `positions` (all if None), binned over its colour scale; with
    `stored` (a position among the layer's stored channels), that channel's alone."""
    return _binned(run, layer, scale, positions, bins, [stored])[0]


def channel_distributions(run: Run, layer: str, scale: Scale, positions: Sequence[int] | None = None,
                          bins: int = BINS) -> list[Distribution]:
    """One distribution per stored channel of the layer (each over its own range when the scale is per channel),
    from one read of the frames."""
    return _binned(run, layer, scale, positions, bins, list(range(run.layer_shape(layer)[-1])))


def _binned(run: Run, layer: str, scale: Scale, positions: Sequence[int] | None, bins: int,
            channels: list[int | None]) -> list[Distribution]:
    """The distribution of the whole layer (None) or of each stored channel in `channels`, reading each block of
    frames once."""
    shape = run.layer_shape(layer)
    for stored in channels:
        if stored is not None and not 0 <= stored < shape[-1]:
            raise ValueError(f"{layer} stores {shape[-1]} channels (0 to {shape[-1] - 1}); "
                             f"there is no stored channel {stored}")
    ranges = [bin_range(scale, stored) for stored in channels]
    pos = np.arange(run.num_frames) if positions is None else np.asarray(positions, np.int64)
    block = max(1, READ_BYTES // (math.prod(shape) * run.layer_dtype(layer).itemsize))
    parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in channels]
    for i in range(0, len(pos), block):
        frames = run.read_frames(layer, pos[i : i + block])
        for part, stored, (lo, hi) in zip(parts, channels, ranges):
            part.append(histograms(frames if stored is None else frames[..., stored], lo, hi, bins))
    out = []
    for part, stored, (lo, hi) in zip(parts, channels, ranges):
        if part:
            counts, q, below, above, bad = (np.concatenate(p) for p in zip(*part))
        else:
            counts, q = np.zeros((0, bins), np.int64), np.zeros((0, len(QUANTILES)))
            below = above = bad = np.zeros(0, np.int64)
        per_step = math.prod(shape) // (1 if stored is None else shape[-1])
        channel = None if stored is None else run.layer_channels(layer)[stored]
        out.append(Distribution(layer, run.steps[pos], np.linspace(lo, hi, bins + 1), counts, q, below, above, bad,
                                per_step, channel))
    return out


def write_distributions(run: Run, dists: Sequence[Distribution], path: Path) -> Path:
    """distributions.png: one row per layer, step × value, the share of values in each bin (log colour), with the
    5/25/50/75/95% quantiles drawn over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(len(dists), 1, figsize=(9.5, 1.7 * len(dists) + 0.8), squeeze=False, sharex=True,
                             layout="constrained")
    p = run.layer_shape(dists[0].layer)[0] if dists else 0
    what = "all positions and stored channels" if all(d.channel is None for d in dists) else "all positions, one channel a row"
    fig.suptitle(f"{run.path.stem}: activations of the {p} probe images at every recorded step "
                 f"({what})\nshare of a step's values per bin (colour, log), and the "
                 "5/25/50/75/95% quantiles (lines)", fontsize=9)
    image = None
    for ax, d in zip(axes[:, 0], dists):
        share = d.counts / np.maximum(1, d.counts.sum(axis=1, keepdims=True))
        steps = d.steps.astype(float)
        x_edges = _step_edges(steps)
        image = ax.pcolormesh(x_edges, d.edges, np.ma.masked_equal(share.T, 0), cmap="Blues",
                              norm=LogNorm(vmin=1e-4, vmax=1), shading="flat", rasterized=True)
        styles = {0.05: ":", 0.25: "--", 0.5: "-", 0.75: "--", 0.95: ":"}
        for k, q in enumerate(QUANTILES):
            ax.plot(steps, d.quantiles[:, k], styles[q], color="black", lw=0.9 if q == 0.5 else 0.7)
        ax.set_ylim(d.edges[0], d.edges[-1])
        ax.set_ylabel("value", fontsize=8)
        channel = "" if d.channel is None else f" channel {d.channel}"
        ax.set_title(f"{d.layer}{channel} ({run.activation_label(d.layer)}): {d.describe()}", fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("step", fontsize=8)
    if image is not None:
        bar = fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.025, pad=0.005, aspect=40)
        bar.set_label("share of the step's values", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each recorded step: halfway to its neighbours (uneven schedules stay honest)."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])
