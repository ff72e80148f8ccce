"""The fixed probe images every frame is computed on."""

from __future__ import annotations

import numpy as np

from recorder.data import Dataset

# The reference experiment's probes: one MNIST test image per digit, 0..9 in order.
MNIST_REFERENCE_PROBES = (10, 5, 35, 30, 4, 15, 11, 17, 268, 12)


def choose_probes(dataset: Dataset, indices: tuple[int, ...] = ()) -> np.ndarray:
    """Test-split indices of the probes: `indices` if given, else the reference set for MNIST,
    else the first test image of each class, in class order."""
    n = len(dataset.test_labels)
    if indices:
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"probe indices {bad} out of range: the {dataset.name} test split has {n} images (0..{n - 1})")
        return np.asarray(indices, np.int64)
    if dataset.name == "mnist" and n == 10000:
        return np.asarray(MNIST_REFERENCE_PROBES, np.int64)
    chosen = []
    for cls in range(len(dataset.class_names)):
        hits = np.flatnonzero(dataset.test_labels == cls)
        if hits.size:
            chosen.append(int(hits[0]))
    return np.asarray(chosen, np.int64)
