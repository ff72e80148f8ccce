"""Compare: dynamics, two-run reports, refusal of different analysis probe sets, the relu-vs-tanh experiment."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from compare import CompareOptions, compare
from compare.dynamics import layer_dynamics, settled_at
from conftest import tiny_config
from recorder.run import record
from replay import open_run


def test_settled_at_is_the_first_step_from_which_progress_stays_above():
    steps = np.array([0, 10, 20, 30, 40])
    assert settled_at(steps, np.array([0.0, 0.6, 0.4, 0.7, 1.0]), 0.5) == 30  # dipped at 20: not settled at 10
    assert settled_at(steps, np.array([0.0, 0.95, 0.97, 0.99, 1.0]), 0.9) == 10
    assert settled_at(steps, np.array([0.0, np.nan, 0.5, 0.7, 1.0]), 0.5) is None


def test_dynamics_of_a_recorded_run(two_runs):
    with open_run(two_runs["tanh"]) as run:
        d = layer_dynamics(run, "conv2")
        assert d.steps.tolist() == list(range(31))  # short run: every frame analysed
        assert d.drift[-1] == pytest.approx(1.0)  # the final step against itself
        assert d.progress[-1] == pytest.approx(1.0) and d.progress[0] == pytest.approx(0.0)
        assert abs(d.null[-1]) < 0.3  # shuffled images: no correspondence
        assert set(d.activity) >= {"saturated_fraction", "dead_fraction", "constant_fraction", "mean", "std"}


def fmt(v):
    return "-" if v is None else str(v)


def _conv1_change(path):
    """‖W_end − W_0‖ / ‖W_0‖ of tiny_cnn's first conv (kernel and bias), from the stored weights."""
    with open_run(path) as run:
        first, last = run.weights(int(run.weight_steps[0])), run.weights(int(run.weight_steps[-1]))
    w0 = np.concatenate([first["conv_a/bias"], first["conv_a/kernel"].ravel()]).astype(np.float64)
    w1 = np.concatenate([last["conv_a/bias"], last["conv_a/kernel"].ravel()]).astype(np.float64)
    return float(np.linalg.norm(w1 - w0) / np.linalg.norm(w0))


def test_two_runs_report(two_runs, tmp_path):
    report = compare([two_runs["tanh"], two_runs["relu"]], tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"report.md", "metrics.json", "dynamics_A.png", "dynamics_B.png", "activity.png", "cross_similarity.png",
            "layer_map.png", "conv1_side_by_side.gif", "conv2_side_by_side.gif", "curves.png"} <= names
    text = report.report.read_text()
    assert ("| layer | t50 A | t50 B | t90 A | t90 B | final CKA(A, B) | weight change A | weight change B | "
            "activity A | activity B |") in text
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    a, b = metrics["dynamics"]["A"]["conv1"], metrics["dynamics"]["B"]["conv1"]
    cka = metrics["cross"]["same_layer"]["conv1"]
    # the table's conv1 row states the measured values: t50/t90 of both runs, the last CKA, and each run's own
    # activity figure (saturation for tanh, dead units for relu)
    row = [line for line in text.splitlines() if line.startswith("| conv1 |")][:1]  # the first table's
    change = [_conv1_change(two_runs[k]) for k in ("tanh", "relu")]
    assert row == [f"| conv1 | {fmt(a['t50'])} | {fmt(b['t50'])} | {fmt(a['t90'])} | {fmt(b['t90'])} | "
                   f"{cka[-1]:.3f} | {change[0]:.3g} | {change[1]:.3g} | saturated {a['final_saturated_fraction']:.3f} | "
                   f"dead {b['final_dead_fraction']:.3f} |"]
    assert metrics["weight_change"]["A"]["conv1"] == pytest.approx(change[0], rel=1e-9)
    assert len(cka) == 31 and cka[-1] < cka[0]  # the two activations' features drift apart as they train
    assert cka[0] > 0.9  # same seed: tanh and relu of the very same initial pre-activations are closely related
    assert np.array(metrics["cross"]["layer_map"]["matrix"]).shape == (2, 2)
    with Image.open(tmp_path / "out" / "conv1_side_by_side.gif") as gif:
        assert gif.n_frames == 31
        with open_run(two_runs["tanh"]) as run:
            from replay.animate import LayerFrames

            single = LayerFrames(run, "conv1").grid.shape
        assert gif.size[0] > 2 * single[1]  # two halves side by side


def test_a_run_against_itself_is_identical(two_runs, tmp_path):
    report = compare([two_runs["relu"], two_runs["relu"]], tmp_path / "self", CompareOptions(gifs=False))
    for values in report.metrics["cross"]["same_layer"].values():
        assert values == pytest.approx([1.0] * len(values))
    matrix = np.array(report.metrics["cross"]["layer_map"]["matrix"], dtype=float)
    assert np.diag(matrix) == pytest.approx([1.0, 1.0]) and matrix[0, 1] < 1.0
    a, b = report.metrics["dynamics"]["A"]["conv1"], report.metrics["dynamics"]["B"]["conv1"]
    assert (a["t50"], a["t90"]) == (b["t50"], b["t90"])


def test_different_analysis_sets_are_refused_unless_forced(two_runs, tmp_path):
    other = tmp_path / "other.h5"
    record(tiny_config(analysis_probes=24, steps=30), other, show_progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="analysis probe sets differ"):
        compare([two_runs["tanh"], other], tmp_path / "refused")
    cli = subprocess.run([sys.executable, "-m", "emergence", "compare", str(two_runs["tanh"]), str(other),
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "refusing to compare" in cli.stderr and cli.stderr.count("\n") == 1
    report = compare([two_runs["tanh"], other], tmp_path / "forced", CompareOptions(force=True))
    text = report.report.read_text()
    assert "skipped" in text and "cross" not in report.metrics
    assert not (tmp_path / "forced" / "layer_map.png").exists()
    assert (tmp_path / "forced" / "conv1_side_by_side.gif").exists()


def test_one_run_dashboard_from_the_cli(two_runs, tmp_path):
    cli = subprocess.run([sys.executable, "-m", "emergence", "compare", str(two_runs["relu"]), "--out",
                          str(tmp_path / "dash")], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    text = (tmp_path / "dash" / "report.md").read_text()
    assert "| layer | t50 | t90 | CKA(init, final) | weight change | w50 | w90 | final activity | flags |" in text
    assert (tmp_path / "dash" / "weights.png").exists()
    metrics = json.loads((tmp_path / "dash" / "metrics.json").read_text())["dynamics"]["A"]
    assert metrics["conv1"]["init_vs_final"] > 0.995  # the case the flag rule is about
    for layer in ("conv1", "conv2"):
        d = metrics[layer]
        row = [line for line in text.splitlines() if line.startswith(f"| {layer} |")][:1]  # the first table's
        assert d["weight_change"] > 0  # the weights moved even where CKA(init, final) says the geometry did not
        if d["init_vs_final"] > 0.995:  # relu's conv1 here: CKA 1.000, weights moved 0.29 of their norm
            assert d["weight_change"] >= 0.05 and not any(f.startswith("no change") for f in d["flags"])
            assert any(f.startswith("similar geometry: CKA(init, final) = ") for f in d["flags"])
        assert row == [f"| {layer} | {fmt(d['t50'])} | {fmt(d['t90'])} | {d['init_vs_final']:.3f} | "
                       f"{d['weight_change']:.3g} | {fmt(d['w50'])} | {fmt(d['w90'])} | dead {d['final_dead_fraction']:.3f} | "
                       f"{'; '.join(d['flags'])} |"]
        assert d["t50"] is None or d["t50"] <= d["t90"] <= 30  # progress passes 0.5 before 0.9


def test_relu_vs_tanh_experiment_end_to_end(tmp_path):
    from experiments import relu_vs_tanh

    sets = ["dataset=synthetic", "synthetic_size=256", "batch_size=32", "steps=4", "eval_every=2", "eval_size=40",
            "analysis_probes=32"]
    argv = ["--out", str(tmp_path), "--no-progress"] + [x for s in sets for x in ("--set", s)]
    assert relu_vs_tanh.main(argv) == 0
    text = (tmp_path / "relu_vs_tanh" / "report.md").read_text()
    assert "learn_to_see-tanh" in text and "learn_to_see-relu" in text
    for layer in ("conv1", "conv6"):
        assert f"| {layer} |" in text
    assert relu_vs_tanh.main(argv) == 0  # second time: reuses the complete runs
    assert relu_vs_tanh.main(argv + ["--set", "activation=gelu"]) == 2


def test_side_by_side_shared_and_per_step_scales(tmp_path):
    from compare.side_by_side import PairFrames
    from conftest import write_run
    from replay.palette import N_LEVELS
    from replay.scales import parse_scale

    for name, v in (("a", 1.0), ("b", 10.0)):
        acts = np.zeros((2, 1, 4, 4, 2), np.float32)
        acts[..., 0], acts[..., 1] = v, -v
        write_run(tmp_path / f"{name}.h5", {"conv1": acts}, activation="gelu")
    with open_run(tmp_path / "a.h5") as a, open_run(tmp_path / "b.h5") as b:
        steps = a.steps
        own = PairFrames(a, b, "conv1", steps, ("a", "b"))
        assert (float(own.left.scale.hi), float(own.right.scale.hi)) == (1.0, 10.0)
        shared = PairFrames(a, b, "conv1", steps, ("a", "b"), shared=True)
        assert float(shared.left.scale.hi) == float(shared.right.scale.hi) == 10.0
        assert "both runs" in shared.left.scale.rule
        index = shared.left.grid.indices(a.read_frames("conv1", np.array([0])).astype(np.float32))
        assert 0 < index[0, 0, 0, 0, 1] < index[0, 0, 0, 0, 0] < N_LEVELS - 1  # A's ±1 on B's ±10: not the ends
        step = PairFrames(a, b, "conv1", steps, ("a", "b"), spec=parse_scale("step"))
        assert step.left.scale.per_step and step.right.scale.per_step
        frame = next(iter(step(np.array([0]))))
        assert frame.shape == step.shape
        with pytest.raises(ValueError, match="cannot be combined with --scale step"):
            PairFrames(a, b, "conv1", steps, ("a", "b"), spec=parse_scale("step"), shared=True)
    with pytest.raises(ValueError, match="cannot be combined with --scale channel"):  # before anything is computed
        CompareOptions(scales=(parse_scale("conv1=channel"),), shared_scale=True)
