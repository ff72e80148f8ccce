"""Linear probes (Alain & Bengio 2016): how linearly decodable the class is from a layer's activations.

A closed-form ridge classifier on the flattened activations X [n, H·W·C] of the fit images, targets the
one-hot labels, with an intercept (X and the targets centred on the fit images):

    W = Xcᵀ (Xc Xcᵀ + λ I)⁻¹ Yc        (the dual form: the cost grows with n, not with H·W·C)

and its held-out accuracy is argmax(X_eval W + b) = label on the evaluation images, which it never saw.
λ is chosen on the fit images alone, by exact leave-one-out accuracy (the hat-matrix identity), from
λ = mean(diag K) × 10^k, k = -6 .. 2. The choice is scale-invariant, so a layer whose activations are tiny
(at initialisation) is probed as fairly as a large one.

Fit and evaluation images (`split_balanced`): the measure set (recorder/snapshots.py), alternating within
each class: each half is class-balanced, and no image is in both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LAMBDA_EXPONENTS = np.arange(-6, 3)
PROBE_STEPS = 8  # linear probes at most at this many of the stored steps (each costs an n x n eigensolve per layer)


def probe_positions(count: int, most: int = PROBE_STEPS) -> np.ndarray:
    """Positions among `count` stored steps that get linear probes: all of them, or `most` spread evenly over
    the positions (the stored steps are log-spaced already), the first and last included."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.rint(np.linspace(0, count - 1, most)).astype(int))


def split_balanced(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the fit and evaluation halves: within each class in order, even -> fit, odd -> eval."""
    fit, held = [], []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        fit.append(members[0::2])
        held.append(members[1::2])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # on the evaluation images
    fit_accuracy: float  # leave-one-out, on the fit images, at the chosen λ
    ridge: float  # λ / mean(diag K)
    n_fit: int
    n_eval: int

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Wilson score interval of the accuracy on `n_eval` images."""
        return wilson_interval(self.accuracy, self.n_eval)


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval for a proportion p observed on n trials (coverage close to nominal even near
    0 and 1, where the normal approximation fails)."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def overlap(a: ProbeResult, b: ProbeResult) -> bool:
    """Whether the two accuracies' 95% intervals overlap (then no significant difference is claimed)."""
    (lo_a, hi_a), (lo_b, hi_b) = a.interval, b.interval
    return lo_a <= hi_b and lo_b <= hi_a


def linear_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
                 num_classes: int) -> ProbeResult:
    """Fits the ridge classifier on (x_fit, y_fit), reports it on (x_eval, y_eval); x: [n, ...] any shape."""
    xf = np.asarray(x_fit, np.float64).reshape(len(x_fit), -1)
    xe = np.asarray(x_eval, np.float64).reshape(len(x_eval), -1)
    mean = xf.mean(0)
    xf, xe = xf - mean, xe - mean
    onehot = np.eye(num_classes)[y_fit]
    y_mean = onehot.mean(0)
    yc = onehot - y_mean
    k = xf @ xf.T
    scale = float(np.mean(np.diag(k)))
    n = len(xf)
    if not scale > 0:  # constant features: only the intercept, i.e. the majority class
        guess = int(np.argmax(y_mean))
        return ProbeResult(float(np.mean(y_eval == guess)), float(np.mean(y_fit == guess)), float("nan"), n, len(xe))
    evals, vecs = np.linalg.eigh(k)
    evals = np.clip(evals, 0, None)
    proj = vecs.T @ yc
    best = None
    for e in LAMBDA_EXPONENTS:
        lam = scale * 10.0 ** e
        shrink = evals / (evals + lam)
        fitted = vecs @ (shrink[:, None] * proj)
        hat = (vecs**2) @ shrink + 1.0 / n  # the intercept's share of the hat matrix
        loo = (fitted - hat[:, None] * yc) / (1 - hat)[:, None]
        acc = float(np.mean(np.argmax(loo + y_mean, 1) == y_fit))
        if best is None or acc >= best[0]:  # ties: the larger λ
            best = (acc, lam, e)
    acc_fit, lam, e = best
    alpha = vecs @ ((1.0 / (evals + lam))[:, None] * proj)
    pred = xe @ (xf.T @ alpha) + y_mean
    return ProbeResult(float(np.mean(np.argmax(pred, 1) == y_eval)), acc_fit, float(10.0 ** e), n, len(xe))
