"""Per-channel measures, linear probes, snapshots and feature visualisation, on cases whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compare import channels as ch
from compare.linear_probes import linear_probe, probe_positions, split_balanced
from recorder.config import ConfigError, RunConfig
from recorder.run import record
from recorder.schedule import snapshot_steps
from runfile.reader import open_run

from conftest import tiny_config


def test_a_channel_copied_from_its_final_state_correlates_1_and_an_unchanged_one_has_no_settle_step():
    rng = np.random.default_rng(0)
    final = rng.normal(size=(20, 5, 5, 3))
    early = final.copy()
    early[..., 1] = rng.normal(size=(20, 5, 5))  # channel 1: unrelated at first
    rho = np.stack([ch.correlation(early, final), ch.correlation(final, final)])
    assert rho[1] == pytest.approx(np.ones(3))
    assert rho[0, 0] == pytest.approx(1.0) and abs(rho[0, 1]) < 0.2
    prog = ch.progress(rho)
    settle = ch.settle_steps(np.array([0, 10]), prog, 0.9)
    assert settle == [None, 10, None]  # channels 0 and 2 never changed: no settle step
    assert ch.correlation(np.zeros((4, 2, 2, 1)), final[:4, :2, :2, :1])[0] == 0.0  # dead for a while: none of it
    assert np.isnan(ch.correlation(final[:4, :2, :2, :1], np.zeros((4, 2, 2, 1)))[0])  # dead at the end: undefined


def test_correlation_ignores_scale_and_offset_and_settling_follows_progress():
    rng = np.random.default_rng(1)
    final = rng.normal(size=(10, 4, 4, 1))
    assert ch.correlation(3 * final + 7, final)[0] == pytest.approx(1.0)
    rho = np.array([[0.0], [0.6], [0.95], [0.4], [0.92], [1.0]])
    steps = np.array([0, 1, 2, 4, 8, 16])
    assert ch.settle_steps(steps, ch.progress(rho), 0.9) == [8]  # it dipped at 4: settled from 8 on
    assert ch.settle_steps(steps, ch.progress(rho), 0.5) == [8]


def test_class_selectivity_is_1_for_a_channel_that_fires_for_one_class_only_and_0_for_none():
    labels = np.repeat(np.arange(4), 5)
    r = np.zeros((20, 3))
    r[labels == 2, 0] = 1.5  # fires for class 2 only
    r[:, 1] = 0.7  # the same for every class
    means = ch.class_means(r, labels, 4)
    si = ch.selectivity(means)
    assert si[0] == pytest.approx(1.0) and si[1] == pytest.approx(0.0) and np.isnan(si[2])  # 2: dead
    assert np.argmax(means, 0)[0] == 2
    a = np.zeros((2, 3, 3, 1))
    a[0] = -0.5
    assert ch.unit_responses(a, nonnegative=False)[0, 0] == pytest.approx(0.5)  # |a| for signed activations


def test_dead_constant_and_saturated_channels_are_named():
    from compare.measures import LayerMeasures

    a = np.random.default_rng(0).normal(size=(6, 3, 3, 4)) * 0.1
    a[..., 1] = 0.0  # dead
    a[..., 2] = 0.3  # constant, not dead
    a[..., 3] = np.sign(a[..., 3]) * 0.999  # saturated
    state = ch.channel_state(a)
    assert state.dead.tolist() == [False, True, False, False]
    assert state.constant.tolist() == [False, True, True, False]
    assert state.saturated.tolist() == [False, False, False, True]
    m = LayerMeasures("conv3", np.array([0]), np.ones((1, 4)), np.zeros((1, 4)), np.zeros((1, 4), int),
                      state.saturated_share[None], state.dead[None], state.constant[None], [None], "|a|")
    assert m.flags() == ["dead channels: conv3:1 (1 of 4)", "constant channels: conv3:2 (1 of 4)",
                         "saturated channels: conv3:3 (1 of 4)"]


def test_a_linear_probe_on_linearly_separable_features_reaches_100_percent():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 30)) * 3
    x = centres[labels] + 0.3 * rng.normal(size=(200, 30))
    fit, held = split_balanced(labels)
    assert not set(fit) & set(held)
    assert np.bincount(labels[fit]).tolist() == [20] * 5 and np.bincount(labels[held]).tolist() == [20] * 5
    result = linear_probe(x[fit], labels[fit], x[held], labels[held], 5)
    assert result.accuracy == 1.0 and result.n_fit == 100 and result.n_eval == 100
    scaled = linear_probe(1e-4 * x[fit], labels[fit], 1e-4 * x[held], labels[held], 5)
    assert scaled.accuracy == result.accuracy and scaled.ridge == result.ridge  # scale-invariant
    noise = linear_probe(rng.normal(size=(100, 30)), labels[fit], rng.normal(size=(100, 30)), labels[held], 5)
    assert noise.accuracy < 0.45  # features unrelated to the class: near chance (0.2)


def test_probe_positions_keep_the_first_and_last():
    assert probe_positions(5).tolist() == [0, 1, 2, 3, 4]
    pos = probe_positions(32)
    assert len(pos) == 8 and pos[0] == 0 and pos[-1] == 31


def test_snapshots_config_and_steps():
    assert snapshot_steps(0, 290).tolist() == [0, 290]
    steps = snapshot_steps(32, 290)
    assert len(steps) == 32 and steps[0] == 0 and steps[1] == 1 and steps[-1] == 290
    with pytest.raises(ConfigError, match="snapshots"):
        RunConfig(snapshots=1).validate()


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / "tiny.h5"
    record(tiny_config(steps=12, snapshots=5), path, show_progress=False, log=lambda s: None)
    return path


def test_the_rebuilt_model_reproduces_the_recorded_frames(snapshot_run):
    from recorder.snapshots import Snapshots

    with open_run(snapshot_run) as run:
        assert run.weight_steps.tolist() == snapshot_steps(5, 12).tolist()
        snaps = Snapshots(run)
        images, _, _ = run.probes()
        for step in (0, 12):
            logits, acts = snaps.forward(step, images)
            for layer in run.layers:
                recorded = run.activations(layer, [step])[0].astype(np.float32)
                np.testing.assert_allclose(acts[layer], recorded, atol=2e-3, rtol=2e-3)  # float16 storage
            np.testing.assert_allclose(logits, run.logits([step])[0], atol=1e-4, rtol=1e-4)


def test_activation_maximisation_raises_its_objective_and_is_deterministic(snapshot_run):
    from replay.maximise import LOGITS, MaximiseSettings, maximise
    from recorder.snapshots import Snapshots

    settings = MaximiseSettings(iterations=24)
    with open_run(snapshot_run) as run:
        snaps = Snapshots(run)
        a = maximise(snaps, "conv2", [0, 12], settings)
        b = maximise(snaps, "conv2", [0, 12], settings)
        logits = maximise(snaps, LOGITS, [12], settings)
        with pytest.raises(ValueError, match="no layer 'conv9'"):
            maximise(snaps, "conv9", [12], settings)
    assert np.array_equal(a.images, b.images)
    assert a.images.shape[:2] == (2, 16) and a.images.min() >= 0 and a.images.max() <= 1
    gain = a.objective[:, -4:].mean(1) - a.objective[:, :4].mean(1)  # [steps, channels]
    assert np.all(gain > 0)
    assert logits.images.shape[1] == 10 and np.all(logits.objective[0, -1] > logits.objective[0, 0])


def test_the_dashboard_shows_the_measures_recomputed_from_the_file(snapshot_run, tmp_path):
    from compare.measures import measure_run
    from compare.report import compare

    report = compare([snapshot_run], tmp_path / "dash")
    text = report.report.read_text()
    assert "linear probe" in text and "| pixels |" in text and (tmp_path / "dash" / "channels.png").exists()
    saved = json.loads((tmp_path / "dash" / "metrics.json").read_text())["measures"]["A"]
    with open_run(snapshot_run) as run:
        again = measure_run(run)
    assert saved["steps"] == again.steps.tolist()
    for name, layer in again.layers.items():
        assert saved["layers"][name]["s90"] == layer.settle(0.9)
        np.testing.assert_allclose(saved["layers"][name]["probe"][-1]["accuracy"], layer.probe_accuracy[-1])
        np.testing.assert_allclose(np.asarray(saved["layers"][name]["correlation"], float)[-1], 1.0, atol=1e-9)


def test_replay_maximise_through_the_cli(snapshot_run, tmp_path, capsys):
    from PIL import Image

    from emergence.cli import main
    from replay import font
    from replay.palette import INK

    out = tmp_path / "r"
    assert main(["replay", str(snapshot_run), "--out", str(out), "--maximise", "conv1"]) == 0
    gif = out / "maximise_conv1.gif"
    assert gif.exists() and "maximise_conv1.gif" in (out / "index.html").read_text()
    with Image.open(gif) as im:
        assert im.n_frames == 5
        im.seek(im.n_frames - 1)
        rgb = np.asarray(im.convert("RGB"))
    canvas = np.where((rgb == 0).all(axis=-1), INK, 0).astype(np.uint8)  # ink is pure black
    assert font.read_text(canvas, 4 + font.CELL_H, 4, len("STEP 12"), INK) == "STEP 12"
    assert main(["replay", str(snapshot_run), "--out", str(out), "--maximise", "conv9"]) == 2
    assert "no layer conv9" in capsys.readouterr().err
