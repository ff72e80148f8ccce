"""A procedural, deterministic dataset with known structure, for offline tests and demos.

Ten classes of 28x28 grayscale images, each a distinct shape whose position, size and stroke vary per
image, plus a little noise: bars at 0, 45, 90 and 135 degrees, a ring, a filled square, a plus, a
checkerboard, a horizontal gradient and a blob. Oriented bars are what first-layer filters should learn
to detect, which makes the recorded filters easy to check by eye.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = (
    "bar 0°", "bar 45°", "bar 90°", "bar 135°", "ring",
    "square", "plus", "checker", "gradient", "blob",
)
SIZE = 28


def _shape(cls: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx = rng.uniform(10, 18, size=2)
    r = rng.uniform(6, 10)
    w = rng.uniform(1.2, 2.2)
    dy, dx = yy - cy, xx - cx
    if cls < 4:  # oriented bar through the centre
        theta = np.pi * cls / 4
        across = -np.sin(theta) * dx + np.cos(theta) * dy
        along = np.cos(theta) * dx + np.sin(theta) * dy
        return ((np.abs(across) < w) & (np.abs(along) < r)).astype(np.float32)
    if cls == 4:
        return (np.abs(np.hypot(dy, dx) - r * 0.8) < w).astype(np.float32)
    if cls == 5:
        return ((np.abs(dy) < r * 0.7) & (np.abs(dx) < r * 0.7)).astype(np.float32)
    if cls == 6:
        return (((np.abs(dy) < w) & (np.abs(dx) < r)) | ((np.abs(dx) < w) & (np.abs(dy) < r))).astype(np.float32)
    if cls == 7:
        period = int(rng.integers(3, 6))
        return (((yy // period + xx // period) % 2) == 0).astype(np.float32)
    if cls == 8:
        ramp = xx / (SIZE - 1)
        return ramp if rng.random() < 0.5 else 1 - ramp
    return np.exp(-(dy**2 + dx**2) / (2 * (r * 0.5) ** 2))


def make_synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (uint8 [n, 28, 28, 1]) and labels (int64 [n]), classes cycling 0..9; same seed, same data."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(CLASS_NAMES)
    images = np.empty((n, SIZE, SIZE, 1), dtype=np.uint8)
    for i, cls in enumerate(labels):
        img = _shape(int(cls), rng) * rng.uniform(0.7, 1.0) + rng.normal(0, 0.05, (SIZE, SIZE))
        images[i, :, :, 0] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return images, labels
