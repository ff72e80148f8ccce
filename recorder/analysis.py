"""What layer-similarity statistics need, computed inside the jitted step on a larger analysis probe set.

Ten picture probes are far too few for similarity (with n = 10 images, plain linear CKA of unrelated layers
is ≈ 1, and the debiased estimator's noise is large). So every conv layer is also run on `n` held-out
analysis images (default 128) and, for each, the step returns:

* the centred Gram matrix K = Xc Xcᵀ (n × n; X is [n, H·W·C], Xc its columns minus their mean over the n
  images), in float32 with precision "highest" (GPUs and TPUs otherwise use reduced-precision matmuls).
  Everything in the linear-CKA family is a function of these Grams, and they do not grow with H·W·C;
* activity statistics (STAT_NAMES), over all n images, positions and channels.

Which images: a class-balanced set from the test split (round-robin over the classes in test-split order),
identified in the file by dataset, indices and a SHA-256 of the images and indices, so that two runs can be
checked to have used the very same set before they are compared.

When: see `analysis_steps` — a subset of the frame steps, at most ANALYSIS_FRAMES + 1 per run.
"""

from __future__ import annotations

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from runfile.schema import SATURATION

ANALYSIS_FRAMES = 48
ANALYSIS_IMAGES = 128  # held-out images of the analysis set, by default (emergence record and Probes.from_dataset)
STAT_NAMES = ("saturated_fraction", "dead_fraction", "constant_fraction", "zero_fraction", "mean", "std",
              "nonfinite_fraction")
STAT_DOCS = {
    "saturated_fraction": f"fraction of values with |a| > {SATURATION}",
    "dead_fraction": "fraction of units (position, channel) that are exactly 0 on every analysis image",
    "constant_fraction": "fraction of units with the same value on every analysis image (1: the layer ignores its input)",
    "zero_fraction": "fraction of values exactly 0 (sparsity)",
    "mean": "mean of all values",
    "std": "standard deviation of all values",
    "nonfinite_fraction": "fraction of values that are NaN or ±inf (the other statistics and the Gram are then not "
                          "measures of the layer: readers exclude the step)",
}


def choose_analysis_probes(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Test-split indices of `n` images, class-balanced: round-robin over the classes in test-split order."""
    if n > len(labels):
        raise ValueError(f"analysis_probes={n} but the test split has only {len(labels)} images; lower analysis_probes")
    queues = [list(np.flatnonzero(labels == c)) for c in range(num_classes)]
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(int(q.pop(0)))
    return np.sort(np.asarray(chosen, np.int64))


def probe_set_hash(dataset: str, indices: np.ndarray, images: np.ndarray) -> str:
    """SHA-256 over the dataset name, the indices and the image bytes: equal hashes, same analysis set."""
    h = hashlib.sha256()
    h.update(dataset.encode())
    h.update(np.asarray(indices, np.int64).tobytes())
    h.update(np.ascontiguousarray(images, np.uint8).tobytes())
    return h.hexdigest()


def analysis_steps(frame_steps: np.ndarray, n_analysis: int) -> np.ndarray:
    """The frame steps that also get analysis: every K-th frame step from step 0, plus the last, with
    K = ceil((frames − 1) / ANALYSIS_FRAMES), so every frame for short runs and about 49 for long ones."""
    if n_analysis == 0:
        return np.zeros((0,), np.int64)
    k = max(1, math.ceil((len(frame_steps) - 1) / ANALYSIS_FRAMES))
    picked = frame_steps[::k]
    if picked[-1] != frame_steps[-1]:
        picked = np.append(picked, frame_steps[-1])
    return picked.astype(np.int64)


def gram_and_stats(a: jax.Array, backend: str | None = None) -> tuple[jax.Array, jax.Array]:
    """[n, H, W, C] activations -> (centred Gram [n, n] float32, stats [len(STAT_NAMES)] float32)."""
    x = a.reshape(a.shape[0], -1).astype(jnp.float32)  # [n, d]
    highest = jax.lax.Precision.HIGHEST
    # the column means as a product with ones: XLA's CPU backend reduces over the leading axis slowly (5.8 against
    # 0.35 ms for [128, 21632]; the whole centred Gram 13.6 against 4.7 ms), and a dot is fast on every backend
    mean = jnp.matmul(jnp.full((1, x.shape[0]), 1.0 / x.shape[0], jnp.float32), x, precision=highest)  # [1, d]
    xc = x - mean
    gram = jnp.matmul(xc, xc.T, precision=highest)  # [n, n]
    by_rows = (backend or jax.default_backend()) == "cpu" and x.size * 4 > 2 * STATS_BLOCK_BYTES
    return gram, (_stats_by_rows(x) if by_rows else _stats(x))


STATS_BLOCK_BYTES = 1 << 20  # rows of about this size at a time, on the CPU backend


def _counts(x: jax.Array, first: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Of rows `x`: (counts of saturated, zero and non-finite values [3] int32, their sum, columns all 0,
    columns all equal to `first`)."""
    counts = jnp.stack([jnp.sum(jnp.abs(x) > SATURATION, dtype=jnp.int32), jnp.sum(x == 0, dtype=jnp.int32),
                        jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)])
    return counts, jnp.sum(x), jnp.all(x == 0, axis=0), jnp.all(x == first, axis=0)


def _assemble(x: jax.Array, counts: jax.Array, total: jax.Array, all_zero: jax.Array,
              all_equal: jax.Array) -> jax.Array:
    """STAT_NAMES in order, from the counts and the sum."""
    size = x.size
    mean = total / size
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean)))
    return jnp.stack([counts[0] / size, jnp.mean(all_zero), jnp.mean(all_equal), counts[1] / size, mean, std,
                      counts[2] / size]).astype(jnp.float32)


def _stats(x: jax.Array) -> jax.Array:
    """STAT_NAMES of [n, d] in one pass per statistic (what GPUs and TPUs fuse well)."""
    return _assemble(x, *_counts(x, x[0]))


def _stats_by_rows(x: jax.Array) -> jax.Array:
    """STAT_NAMES of [n, d], the same values as `_stats`, accumulated over blocks of rows of about
    STATS_BLOCK_BYTES. XLA's CPU backend materialises each statistic's flags over the whole array (11 MB each
    for [128, 21632]) and runs the seven reductions one after the other: 16 ms there against 3 ms by blocks
    that stay in cache (`benchmarks/analysis_cost.py`)."""
    n, d = x.shape
    rows = max(1, min(n, STATS_BLOCK_BYTES // (4 * d)))
    blocks = n // rows

    def add(carry, block):
        counts, total, all_zero, all_equal = carry
        c, t, z, e = _counts(block, x[0])
        return (counts + c, total + t, all_zero & z, all_equal & e), None

    carry = (jnp.zeros(3, jnp.int32), jnp.float32(0), jnp.ones(d, bool), jnp.ones(d, bool))
    carry, _ = jax.lax.scan(add, carry, x[:blocks * rows].reshape(blocks, rows, d))
    if blocks * rows < n:
        carry, _ = add(carry, x[blocks * rows:])
    return _assemble(x, *carry)
