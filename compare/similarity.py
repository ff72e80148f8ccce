"""Linear CKA and debiased linear CKA from centred Gram matrices, in float64 on the host.

For features X [n, d] and Y [n, e] of the same n images, with K = Xc Xcᵀ and L = Yc Ycᵀ (centred columns):

* linear CKA = <K, L>_F / (‖K‖_F ‖L‖_F) (Kornblith et al. 2019). Invariant to orthogonal transforms and
  isotropic scaling of the features, but biased towards 1 when n is small against d.
* debiased linear CKA replaces each <·,·> by the unbiased HSIC estimator (Song et al. 2012, used for CKA by
  Nguyen et al. 2021): with K̃, L̃ the Grams with zeroed diagonals,
      HSIC_u(K, L) = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)),
  and CKA_u = HSIC_u(K, L) / sqrt(HSIC_u(K, K) · HSIC_u(L, L)). It is ≈ 0 for unrelated features
  (noise ≈ ±0.006 at n = 256) and needs n ≥ 4.

A dead or constant layer has a zero Gram, and a Gram with NaN or ±inf comes from non-finite features: the
similarity is undefined either way. Such comparisons return NaN with a flag that says which, never 0 or 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ZERO_GRAM = "zero Gram (dead or constant layer)"
NONFINITE = "non-finite Gram (NaN or inf in the features)"
NOT_POSITIVE = "estimated self-similarity not positive (too few images or a near-constant layer)"


@dataclasses.dataclass(frozen=True)
class Similarity:
    value: float  # NaN when undefined
    flag: str = ""  # why it is NaN ("" when defined)

    @property
    def defined(self) -> bool:
        return not self.flag


def centre(gram: np.ndarray) -> np.ndarray:
    """H K H with H = I − 11ᵀ/n, in float64 (a no-op, up to rounding, on Grams of centred features)."""
    k = np.asarray(gram, np.float64)
    k = k - k.mean(axis=0, keepdims=True)
    return k - k.mean(axis=1, keepdims=True)


def _undefined(k: np.ndarray, l: np.ndarray) -> str:
    """Why the similarity of Grams `k` and `l` is undefined ("" if it is not)."""
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(l))):
        return NONFINITE
    return ZERO_GRAM if not (np.any(k) and np.any(l)) else ""


def linear_cka(k: np.ndarray, l: np.ndarray) -> Similarity:
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(l))):
        return Similarity(float("nan"), NONFINITE)  # before centring, which would turn inf into NaN
    k, l = centre(k), centre(l)
    if why := _undefined(k, l):
        return Similarity(float("nan"), why)
    return Similarity(float(np.vdot(k, l) / (np.linalg.norm(k) * np.linalg.norm(l))))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 images, got {n}")
    kt = np.array(k, np.float64)
    lt = np.array(l, np.float64)
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    k1, l1 = kt.sum(axis=1), lt.sum(axis=1)
    term = np.vdot(kt, lt) + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * np.dot(k1, l1)
    return float(term / (n * (n - 3)))


def debiased_cka(k: np.ndarray, l: np.ndarray) -> Similarity:
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(l))):
        return Similarity(float("nan"), NONFINITE)  # before centring, which would turn inf into NaN
    k, l = centre(k), centre(l)
    if why := _undefined(k, l):
        return Similarity(float("nan"), why)
    kk, ll = hsic_unbiased(k, k), hsic_unbiased(l, l)
    if kk <= 0 or ll <= 0:
        return Similarity(float("nan"), NOT_POSITIVE)
    return Similarity(hsic_unbiased(k, l) / np.sqrt(kk * ll))


def cka_matrix(grams_a: list[np.ndarray], grams_b: list[np.ndarray], debiased: bool = True) -> tuple[np.ndarray, list[str]]:
    """[len(a), len(b)] similarities and the flags met (NaN entries are flagged)."""
    f = debiased_cka if debiased else linear_cka
    out = np.full((len(grams_a), len(grams_b)), np.nan)
    flags = []
    for i, k in enumerate(grams_a):
        for j, l in enumerate(grams_b):
            s = f(k, l)
            out[i, j] = s.value
            if s.flag:
                flags.append(s.flag)
    return out, sorted(set(flags))
