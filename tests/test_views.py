"""Distributions and representation geometry: the numbers are the stored data's, the embedding is exact PCA."""

import numpy as np
import pytest
from PIL import Image

from conftest import write_run
from replay import font
from replay.animate import LayerFrames
from replay.distributions import QUANTILES, channel_distributions, layer_distribution
from replay.geometry import align, class_variance_share, embed, geometry_frames, layer_geometry
from replay.palette import INK
from replay.render import ReplayOptions, replay
from replay.scales import Scale
from runfile.reader import open_run


def test_distribution_is_the_histogram_of_the_stored_frames_with_clipping_and_nan_counted_apart(tmp_path):
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(5, 3, 4, 4, 2)) * np.arange(1, 6)[:, None, None, None, None], 0).astype(np.float32)
    acts[4, 0, 0, 0, 0] = np.nan
    write_run(tmp_path / "r.h5", {"conv1": acts}, activation="relu")
    with open_run(tmp_path / "r.h5") as run:
        assert LayerFrames(run, "conv1").scale.one_sided  # what replay passes: relu's scale
        scale = Scale(np.float32(-2.0), np.float32(2.0), "diverging", "a fixed scale", "fixed", one_sided=True)
        d = layer_distribution(run, "conv1", scale, bins=16)
    hi = 2.0
    assert d.edges[0] == 0.0 and d.edges[-1] == pytest.approx(hi)  # relu: bins from 0
    assert d.steps.tolist() == [0, 1, 2, 3, 4] and d.per_step == 3 * 4 * 4 * 2
    for t in range(5):
        x = acts[t].ravel()
        x = x[np.isfinite(x)]
        expected, _ = np.histogram(np.clip(x, 0, hi), bins=16, range=(0, hi))
        assert d.counts[t].tolist() == expected.tolist()
        assert d.above[t] == (x > hi).sum() and d.below[t] == 0
        assert np.allclose(d.quantiles[t], np.quantile(x, QUANTILES))
    assert d.nonfinite.tolist() == [0, 0, 0, 0, 1] and d.counts[4].sum() == d.per_step - 1
    assert d.above.sum() > 0 and "beyond it, counted in the end bins" in d.describe()
    assert "1 non-finite values left out" in d.describe()


def test_a_channels_distribution_is_the_histogram_of_that_channel_over_its_own_scale(tmp_path):
    rng = np.random.default_rng(1)
    acts = (rng.normal(size=(4, 3, 4, 4, 3)) * np.array([0.5, 2.0, 8.0])).astype(np.float32)  # channels of 3 widths
    write_run(tmp_path / "r.h5", {"conv1": acts}, activation="identity")
    per_channel = Scale(np.array([-1, -4, -16], np.float32), np.array([1, 4, 16], np.float32), "diverging", "per channel",
                        "per channel")
    with open_run(tmp_path / "r.h5") as run:
        d = layer_distribution(run, "conv1", per_channel, bins=8, stored=1)
        whole = layer_distribution(run, "conv1", per_channel, bins=8)
        with pytest.raises(ValueError, match="stores 3 channels"):
            layer_distribution(run, "conv1", per_channel, stored=3)
        reads = []
        read_frames = run.read_frames
        run.read_frames = lambda *a: reads.append(a) or read_frames(*a)
        each = channel_distributions(run, "conv1", per_channel, bins=8)
    assert len(reads) == 1  # every channel binned from one read of the frames
    assert [e.channel for e in each] == [0, 1, 2] and [e.edges[-1] for e in each] == [1, 4, 16]
    assert each[1].counts.tolist() == d.counts.tolist() and np.array_equal(each[1].quantiles, d.quantiles)
    assert d.channel == 1 and d.per_step == 3 * 4 * 4 and d.edges[0] == -4 and d.edges[-1] == 4
    assert whole.channel is None and whole.edges[0] == -16 and whole.per_step == 3 * 4 * 4 * 3  # the widest channel's
    for t in range(4):
        x = acts[t, ..., 1].ravel()
        assert d.counts[t].tolist() == np.histogram(np.clip(x, -4, 4), bins=8, range=(-4, 4))[0].tolist()
        assert np.allclose(d.quantiles[t], np.quantile(x, QUANTILES))


def _features(seed=0, n=60, dim=40, classes=4):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, dim)) * 2
    x = centres[labels] + rng.normal(size=(n, dim))
    return x, labels


def _distances(c):
    return np.linalg.norm(c[:, None] - c[None], axis=-1)


def test_the_embedding_from_the_gram_is_exact_pca_of_the_features_and_the_class_share_is_exact():
    x, labels = _features()
    xc = x - x.mean(axis=0)
    gram = xc @ xc.T  # what the run stores
    coords, explained = embed(gram)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    pca = xc @ vt[:2].T
    assert np.allclose(_distances(coords), _distances(pca))  # the same points up to sign
    assert explained == pytest.approx((s[:2] ** 2).sum() / (s**2).sum())
    means = np.array([xc[labels == c].mean(axis=0) for c in range(4)])
    between = sum((labels == c).sum() * (means[c] ** 2).sum() for c in range(4))
    assert class_variance_share(gram, labels) == pytest.approx(between / (xc**2).sum())
    assert class_variance_share(gram, np.zeros_like(labels)) == pytest.approx(0.0, abs=1e-12)


def test_alignment_turns_rotated_and_reflected_frames_back_onto_the_last():
    x, _ = _features(1)
    base, _ = embed((x - x.mean(0)) @ (x - x.mean(0)).T)
    frames = []
    for angle, flip in ((0.3, 1), (2.0, -1), (-1.1, 1), (0.0, 1)):
        r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([1, flip])
        frames.append(base @ r)
    frames.insert(2, np.full_like(base, np.nan))  # a non-finite step is skipped over, left as it is
    aligned = align(frames)
    for k in (0, 1, 3, 4):
        assert np.allclose(aligned[k], frames[-1])
    assert np.isnan(aligned[2]).all()


def test_replay_writes_distributions_and_a_geometry_gif_per_layer_at_every_analysed_step(tmp_path, two_runs):
    report = replay(two_runs["tanh"], tmp_path / "out", ReplayOptions(kernels=False))
    out = tmp_path / "out"
    assert (out / "distributions.png").stat().st_size > 0
    with open_run(two_runs["tanh"]) as run:
        steps = run.analysis_steps.tolist()
        layers, names = run.layers, run.class_names
        geometry = layer_geometry(run, layers[-1])
        frames = geometry_frames(run, geometry)
    for layer in layers:
        with Image.open(out / f"geometry_{layer}.gif") as im:
            assert im.n_frames == len(steps)
    # the stamp on each frame is the analysed step; the legend names the classes in full
    for k in (0, len(steps) - 1):
        text = font.read_text(frames[k], 3, 8, len(f"{layers[-1]} STEP {steps[k]}"), INK)
        assert text == f"{layers[-1]} STEP {steps[k]}".upper()
    legend_x = 8 + 300 + 8 + 14
    first = int(np.unique(geometry.labels)[0])
    drawn = "".join(c if c in font.GLYPHS else "?" for c in names[first].upper())  # the font's glyphs, '?' beyond
    assert font.read_text(frames[0], 4 * font.CELL_H + 8, legend_x, len(names[first]), INK) == drawn
    page = (out / "index.html").read_text()
    assert "distributions.png" in page and f"geometry_{layers[0]}.gif" in page and "orthogonal Procrustes" in page
    assert any(p.name == "distributions.png" for p in report.pictures)
