"""Per-channel emergence: when each channel's response settled, how class-selective it is, and which channels
are dead or saturated. Pure functions of activations; compare/measures.py runs them over a run's snapshots.

For channel c of a layer, A_c(t) is its response at step t to the held-out measure images: every value of its
feature map, over all images and positions (n·H·W values).

* **correlation** ρ_c(t) = Pearson correlation of A_c(t) with A_c(T), T the last stored step: 1 when the
  channel computes at t what it computes at the end (up to scale and offset). A channel that is constant at t
  (a relu channel dead for a while) but not at the end computes none of it: ρ = 0. NaN when the channel is
  constant at the end (nothing to settle to).
* **progress** p_c(t) = (ρ_c(t) − ρ_c(0)) / (1 − ρ_c(0)): 0 at the first stored step, 1 at the end.
  Undefined (NaN) for a channel that ended where it started (1 − ρ_c(0) < MIN_CHANGE) or is constant.
* **settle step** s50_c / s90_c: the first stored step from which p_c stays at or above 0.5 / 0.9 to the end
  (compare/settling.py); None where p_c is undefined. A layer's distribution: the median and quartiles
  over its channels that have one.
* **class selectivity** (Morcos et al. 2018): with r = the channel's mean response over positions, per
  image (of a for non-negative activations, relu and sigmoid; of |a| for activations that take both signs,
  whose magnitude is their activity), μ_k the mean of r over the images of class k, μmax the largest and
  μ−max the mean of the others: SI = (μmax − μ−max) / (μmax + μ−max). 0: the same for every class;
  1: it responds to one class only. NaN for a channel whose responses are all 0.
* **dead**: every value exactly 0 on every measure image; **constant**: one value everywhere (it ignores its
  input; a dead channel is constant too); **saturated** (tanh, sigmoid): more than SATURATED_SHARE of its
  values have |a| > 0.99 (runfile/schema.py SATURATION). Flagged by name at the last stored step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compare.settling import settled_at
from runfile.schema import SATURATION

MIN_CHANGE = 0.005  # as compare/dynamics.py: below this the channel did not change
SATURATED_SHARE = 0.9
NONNEGATIVE = ("relu", "sigmoid")  # activations whose value is itself an activity
SATURATING = ("tanh", "sigmoid")  # bounded activations, whose channels can saturate


def channel_columns(a: np.ndarray) -> np.ndarray:
    """[n, H, W, C] -> [n·H·W, C] float64: each column one channel's whole response."""
    return np.asarray(a, np.float64).reshape(-1, a.shape[-1])


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-channel Pearson correlation of two responses [n, H, W, C] -> [C] (NaN for a constant channel)."""
    x, y = channel_columns(a), channel_columns(b)
    x, y = x - x.mean(0), y - y.mean(0)
    sx, sy = (x * x).sum(0), (y * y).sum(0)
    den = np.sqrt(sx * sy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(0) / np.where(den > 0, den, 1), np.where(sy > 0, 0.0, np.nan))


def progress(rho: np.ndarray) -> np.ndarray:
    """[S, C] correlations to the end -> [S, C] progress (see the module docs)."""
    change = 1.0 - rho[:1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(change >= MIN_CHANGE, (rho - rho[:1]) / np.where(change >= MIN_CHANGE, change, 1), np.nan)


def settle_steps(steps: np.ndarray, prog: np.ndarray, level: float) -> list[int | None]:
    """The settle step of each channel (columns of `prog` [S, C])."""
    return [settled_at(steps, prog[:, c], level) for c in range(prog.shape[1])]


def unit_responses(a: np.ndarray, nonnegative: bool) -> np.ndarray:
    """[n, H, W, C] -> [n, C]: each channel's mean response (of a, or |a|) over positions."""
    a = np.asarray(a, np.float64)
    return (a if nonnegative else np.abs(a)).mean(axis=(1, 2))


def class_means(r: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[n, C] responses -> [K, C] class-conditional means."""
    return np.stack([r[labels == k].mean(0) for k in range(num_classes)])


def selectivity(means: np.ndarray) -> np.ndarray:
    """[K, C] class means (non-negative) -> [C] selectivity index (see the module docs)."""
    top = means.max(0)
    rest = (means.sum(0) - top) / (means.shape[0] - 1)
    den = top + rest
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (top - rest) / np.where(den > 0, den, 1), np.nan)


@dataclasses.dataclass(frozen=True)
class ChannelState:
    """What kind of trouble each channel [C] is in."""

    dead: np.ndarray  # bool
    constant: np.ndarray  # bool
    saturated_share: np.ndarray  # fraction of values with |a| > SATURATION

    @property
    def saturated(self) -> np.ndarray:
        return self.saturated_share > SATURATED_SHARE


def channel_state(a: np.ndarray) -> ChannelState:
    x = channel_columns(a)
    return ChannelState(np.all(x == 0, axis=0), np.all(x == x[:1], axis=0), np.mean(np.abs(x) > SATURATION, axis=0))


def named(layer: str, mask: np.ndarray) -> list[str]:
    """Channel names (`conv3:5`) where `mask` is true."""
    return [f"{layer}:{c}" for c in np.flatnonzero(mask)]


def distribution(values: list[int | None]) -> tuple[float, float, float, int] | None:
    """(median, 25th, 75th percentile, count) of the defined values, None when none is."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return None
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return float(q50), float(q25), float(q75), len(v)
