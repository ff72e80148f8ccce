"""Representation geometry over training: a layer's analysis images embedded in 2-D at every analysed step.

Method. The run stores, at each analysed step, the centred Gram matrix K = Xc Xcᵀ of the layer's features on the
n analysis images (docs/run_schema.md, /analysis). PCA of the features is the eigendecomposition of K: with
K = U Λ Uᵀ, the images' coordinates on the first two principal components are U₂ √Λ₂, and PC1 + PC2 explain
(λ₁ + λ₂) / Σλ of the variance. So the embedding is exact PCA of the full features, computed without them.

Comparable over time. PCA's axes are defined only up to sign and rotation within near-equal eigenvalues, so
each step's embedding is turned onto the next step's by orthogonal Procrustes (the rotation or reflection R
minimising ‖A R − B‖), from the last step backwards: the last frame is PCA as it is, and a point moves between
frames only as far as the geometry changed. Features grow during training; each frame is drawn at unit RMS
distance from the centre (the scale it had is kept in `radius`).

What the frames measure besides the picture: the between-class share of the variance, tr(S_between)/tr(S_total)
of the full features (from K too: ‖mean of class c‖² is the mean of K over c × c), 0 when classes overlap
entirely, 1 when every class is a point. Only the analysed steps have Grams (a subset of the recorded frames).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from replay import font
from replay.gif import GifWriter
from replay.palette import INK, PAPER, RULE
from runfile.reader import Run

CLASS_RGB = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
                      [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)  # tab10


@dataclasses.dataclass(frozen=True)
class Geometry:
    layer: str
    steps: np.ndarray  # [A] analysed steps
    coords: np.ndarray  # [A, n, 2] aligned, unit RMS radius (NaN at a step whose Gram is not finite)
    explained: np.ndarray  # [A] share of the variance on PC1 + PC2
    class_share: np.ndarray  # [A] between-class share of the total variance (all dimensions)
    radius: np.ndarray  # [A] RMS distance from the centre before scaling
    labels: np.ndarray  # [n]


def embed(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """The n images' coordinates on the first two principal components of the features whose centred Gram is
    `gram` [n, n], and the share of the variance they explain."""
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    values = np.clip(values[::-1], 0, None)
    vectors = vectors[:, ::-1]
    total = values.sum()
    coords = vectors[:, :2] * np.sqrt(values[:2])
    return coords, float(values[:2].sum() / total) if total > 0 else float("nan")


def class_variance_share(gram: np.ndarray, labels: np.ndarray) -> float:
    """tr(S_between) / tr(S_total) of the features behind the centred Gram `gram`, classes from `labels`."""
    total = np.trace(gram)
    if not total > 0:
        return float("nan")
    between = sum((labels == c).sum() * gram[np.ix_(labels == c, labels == c)].mean() for c in np.unique(labels))
    return float(between / total)


def procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a` [n, 2] rotated (or reflected) onto `b` [n, 2]: a R with R orthogonal minimising ‖a R − b‖."""
    u, _, vt = np.linalg.svd(a.T @ b)
    return a @ (u @ vt)


def align(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each frame turned onto the next (already turned) one, from the last backwards; non-finite frames are
    skipped over."""
    out = [np.asarray(f, np.float64) for f in frames]
    target = None
    for i in range(len(out) - 1, -1, -1):
        if not np.isfinite(out[i]).all():
            continue
        if target is not None:
            out[i] = procrustes(out[i], target)
        target = out[i]
    return out


def layer_geometry(run: Run, layer: str) -> Geometry:
    steps = run.analysis_steps
    labels = run.analysis_probe_set()["labels"]
    grams = run.grams(layer)
    coords, explained, share, radius = [], [], [], []
    for gram in grams:
        if not np.isfinite(gram).all():
            coords.append(np.full((len(labels), 2), np.nan))
            explained.append(np.nan), share.append(np.nan), radius.append(np.nan)
            continue
        c, e = embed(gram)
        r = float(np.sqrt((c**2).sum(axis=1).mean()))
        coords.append(c / r if r > 0 else c)
        explained.append(e), share.append(class_variance_share(gram, labels)), radius.append(r)
    aligned = np.array(align(coords)) if coords else np.zeros((0, len(labels), 2))
    return Geometry(layer, steps, aligned, np.array(explained), np.array(share), np.array(radius), labels)


# -- the GIF --------------------------------------------------------------------------------------------------
SIZE = 300  # the plot's side, pixels
MARGIN = 8
DOT = 2  # radius in pixels
TEXT = 1  # font scale


def _palette() -> np.ndarray:
    pal = np.full((256, 3), 255, np.uint8)
    pal[: len(CLASS_RGB)] = CLASS_RGB
    pal[RULE] = (200, 200, 200)
    pal[PAPER] = (255, 255, 255)
    pal[INK] = (0, 0, 0)
    return pal


def _lines(run: Run, g: Geometry, k: int) -> list[str]:
    n = len(g.labels)
    if not np.isfinite(g.explained[k]):
        return [f"{g.layer} STEP {g.steps[k]}", "NON-FINITE GRAM: NOT EMBEDDED"]
    return [f"{g.layer} STEP {g.steps[k]}",
            f"PCA OF {n} ANALYSIS IMAGES (EXACT, FROM THE GRAM)",
            f"PC1+PC2 EXPLAIN {g.explained[k]:.0%}; CLASS SHARE {g.class_share[k]:.2f}",
            "ALIGNED STEP TO STEP (PROCRUSTES), UNIT RMS"]


def geometry_frames(run: Run, g: Geometry) -> list[np.ndarray]:
    """One palette-index frame per analysed step: the scatter coloured by class, the method, the figures and a
    legend of the full class names."""
    names = run.class_names
    head = 4 * font.CELL_H * TEXT + MARGIN
    legend_w = max(font.text_size(names[int(c)] if int(c) < len(names) else str(c), TEXT)[1]
                   for c in np.unique(g.labels)) + 16
    width = MARGIN + SIZE + MARGIN + legend_w + MARGIN
    height = head + SIZE + MARGIN
    finite = g.coords[np.isfinite(g.coords).all(axis=(1, 2))]
    extent = float(np.abs(finite).max()) * 1.05 if finite.size else 1.0
    frames = []
    for k in range(len(g.steps)):
        canvas = np.full((height, width), PAPER, np.uint8)
        y0, x0 = head, MARGIN
        canvas[y0, x0 : x0 + SIZE] = canvas[y0 + SIZE - 1, x0 : x0 + SIZE] = RULE
        canvas[y0 : y0 + SIZE, x0] = canvas[y0 : y0 + SIZE, x0 + SIZE - 1] = RULE
        for i, line in enumerate(_lines(run, g, k)):
            font.draw_text(canvas, font.fit_text(line, width - 2 * MARGIN, TEXT), 3 + i * font.CELL_H * TEXT, MARGIN, INK, TEXT)
        xy = g.coords[k]
        if np.isfinite(xy).all():
            px = np.rint(x0 + (xy[:, 0] / extent + 1) / 2 * (SIZE - 1)).astype(int)
            py = np.rint(y0 + (1 - (xy[:, 1] / extent + 1) / 2) * (SIZE - 1)).astype(int)
            for dy in range(-DOT, DOT + 1):
                for dx in range(-DOT, DOT + 1):
                    if dx * dx + dy * dy <= DOT * DOT + 1:
                        ys = np.clip(py + dy, y0 + 1, y0 + SIZE - 2)
                        xs = np.clip(px + dx, x0 + 1, x0 + SIZE - 2)
                        canvas[ys, xs] = g.labels.astype(np.uint8) % len(CLASS_RGB)
        lx = x0 + SIZE + MARGIN
        for j, c in enumerate(np.unique(g.labels)):
            ly = y0 + j * (font.CELL_H * TEXT + 3)
            canvas[ly : ly + 7, lx : lx + 10] = int(c) % len(CLASS_RGB)
            name = names[int(c)] if int(c) < len(names) else str(c)
            font.draw_text(canvas, name, ly, lx + 14, INK, TEXT)
        frames.append(canvas)
    return frames


def write_geometry_gif(run: Run, g: Geometry, path: Path, duration_ms: int) -> int:
    """geometry_<layer>.gif; returns the number of frames."""
    frames = geometry_frames(run, g)
    with GifWriter(path, _palette(), duration_ms, comment=f"{g.layer}: PCA of the analysis images per analysed step") as gif:
        for frame in frames:
            gif.add(frame)
    return len(frames)
