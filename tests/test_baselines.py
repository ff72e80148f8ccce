"""Numbers with known answers: a probe on noise sits at chance and its interval covers chance; intervals and
gains are reported with their baselines; a diverged run's non-finite layers are named as such, first, and no
measure uses their steps."""

import json

import numpy as np
import pytest

from compare import CompareOptions, compare
from compare.linear_probes import ProbeResult, linear_probe, overlap, wilson_interval
from compare.tables import gain_cell
from conftest import tiny_config
from runfile.reader import open_run


def test_the_wilson_interval_has_its_textbook_values():
    lo, hi = wilson_interval(0.5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    lo, hi = wilson_interval(0.0, 30)  # never below 0; the upper end is z²/(n + z²)
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / (30 + 1.959964**2))


def test_a_probe_on_noise_is_at_chance_and_its_interval_covers_chance():
    rng = np.random.default_rng(0)
    labels = np.arange(2000) % 10
    noise = rng.normal(size=(2000, 300))
    p = linear_probe(noise[:1000], labels[:1000], noise[1000:], labels[1000:], 10)
    lo, hi = p.interval
    assert lo <= 0.1 <= hi and hi - lo < 0.05


def test_a_gain_inside_the_noise_is_not_called_significant():
    def probe(acc, n=1000):
        return ProbeResult(acc, acc, 1.0, n, n)

    assert overlap(probe(0.80), probe(0.82)) and gain_cell(probe(0.80), probe(0.82)) == "+0.020 n.s."
    assert not overlap(probe(0.80), probe(0.90)) and gain_cell(probe(0.80), probe(0.90)) == "+0.100"


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """learn_to_see with the identity activation at lr 1000, recorded on: its deep layers overflow at step 1."""
    from recorder.run import record

    path = tmp_path_factory.mktemp("div") / "diverged.h5"
    config = tiny_config(model="learn_to_see", activation="identity", learning_rate=1000, on_nonfinite="continue",
                         steps=6, eval_every=0, snapshots=7)
    record(config, path, show_progress=False, log=lambda s: None)
    return path


def test_a_diverged_runs_non_finite_layers_come_first_and_are_never_measured(diverged, tmp_path):
    with open_run(diverged) as run:  # what the file says, read directly: values, spread or Gram not finite
        bad = [name for name in run.layers if (run.activity(name)["nonfinite_fraction"] > 0).any()
               or not np.isfinite(run.activity(name)["std"]).all() or not np.isfinite(run.grams(name)).all()]
    assert bad and "conv1" not in bad  # the first layer stays finite: the test plants nothing by hand
    lines = []
    report = compare([diverged], tmp_path / "dash", CompareOptions(), log=lines.append)
    assert lines[0].startswith("Non-finite data") and all(f"A {name} non-finite from step" in lines[0] for name in bad)
    text = report.report.read_text().splitlines()
    assert text[2].startswith("**Non-finite data")
    saved = json.loads((tmp_path / "dash" / "metrics.json").read_text())
    assert set(saved["nonfinite"]["A"]) == set(bad)
    for name in bad:
        row = next(l for l in text if l.startswith(f"| {name} |"))
        assert "non-finite from step" in row and "zero Gram" not in row and "dead" not in row
        dyn = saved["dynamics"]["A"][name]
        assert dyn["flags"][0].startswith("non-finite from step")
        first = saved["nonfinite"]["A"][name]["first_step"]
        at = dyn["steps"].index(first)
        assert dyn["drift"][at:] == [None] * (len(dyn["drift"]) - at)  # excluded, not measured
        assert all(v is None for v in dyn["activity"]["dead_fraction"][at:])


def test_the_viewer_names_the_non_finite_layers(diverged):
    from viewer.api import Api
    from viewer.catalog import Catalog

    catalog = Catalog(diverged.parent)
    api = Api(catalog)
    rid = json.loads(api.runs().body)["runs"][0]["id"]
    nonfinite = json.loads(api.run(rid).body)["nonfinite"]
    catalog.close()
    assert nonfinite and all(text.startswith("non-finite from step") for text in nonfinite.values())


def test_the_sweep_report_names_non_finite_layers_on_its_first_line(diverged, tmp_path):
    from compare.sweep import sweep_report

    report = sweep_report([({"seed": "0"}, diverged)], tmp_path, "diverged").read_text().splitlines()
    assert report[2].startswith("**Non-finite data") and "diverged.h5 conv" in report[2]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["runs"][0]["nonfinite"] and all("non-finite from step" in n for n in saved["runs"][0]["nonfinite"])


def test_the_measure_set_leaves_out_the_picture_probes_and_stays_class_balanced(diverged):
    from recorder.snapshots import MEASURE_IMAGES, measure_set

    with open_run(diverged) as run:
        probes = run.probes()[2]
        data = measure_set(run)
        small = measure_set(run, 20)
    assert not set(data.indices.tolist()) & set(probes.tolist()) and len(set(data.indices.tolist())) == len(data.indices)
    assert len(data.indices) <= MEASURE_IMAGES and f"none of the run's {len(probes)} picture probes" in data.rule
    assert np.bincount(small.labels, minlength=10).tolist() == [2] * 10  # round-robin over the classes


def _hsic_u(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC written from its definition on raw (uncentred) features, with explicit
    sums over distinct index pairs and triples: an estimator that does not depend on centring."""
    k, l = x @ x.T, y @ y.T
    n = len(k)
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    pairs = np.sum(k * l)  # sum over i != j of k_ij l_ij
    triples = np.sum(k.sum(1) * l.sum(1)) - pairs  # sum over distinct i, j, q of k_ij l_iq
    quads = k.sum() * l.sum() - 4 * triples - 2 * pairs  # sum over distinct i, j, q, r of k_ij l_qr
    return (pairs - 2 * triples / (n - 2) + quads / ((n - 2) * (n - 3))) / (n * (n - 3))


def test_cross_seed_cka_at_initialisation_equals_a_direct_computation(tmp_path):
    """Two seeds' step-0 Grams, as the sweep reads them, against the features of freshly built models."""
    import jax.numpy as jnp

    from compare.cross import cross_similarity
    from recorder import Capture, build_model, load_dataset
    from recorder.run import record

    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"s{seed}.h5")
        record(tiny_config(seed=seed, steps=1, eval_every=0, analysis_probes=40), paths[-1], show_progress=False,
               log=lambda s: None)
    with open_run(paths[0]) as a, open_run(paths[1]) as b:
        reported = {n: float(v[0]) for n, v in cross_similarity(a, b, list(a.layers)).same_layer.items()}
        indices = a.analysis_probe_set()["indices"]
        config = a.config
    data = load_dataset("synthetic", synthetic_size=config["synthetic_size"])
    x = jnp.asarray(data.test_images[indices], jnp.float32) / 255.0
    features = []
    for seed in (0, 1):
        model = build_model("tiny_cnn", data.input_shape, 10, "tanh", seed)
        frame = Capture.nnx(model, x, dtype="float32")(model, x)
        features.append({n: np.asarray(frame[n], np.float64).reshape(len(indices), -1) for n in reported})
    for name, value in reported.items():
        fa, fb = features[0][name], features[1][name]
        direct = _hsic_u(fa, fb) / np.sqrt(_hsic_u(fa, fa) * _hsic_u(fb, fb))
        assert value == pytest.approx(direct, abs=1e-4) and 0.2 < direct < 0.999, (name, value, direct)  # not 1: seeds differ


def test_the_convergence_order_is_stated_per_measure():
    from compare.tables import convergence_order

    assert convergence_order("t90", {"c1": 5, "c2": 9, "c3": 9}) == "t90: c1 5, c2 9, c3 9: bottom-up (no layer settles before the one below it)."
    assert convergence_order("w90", {"c1": 5, "c2": None, "c3": 3, "c4": 7}) == (
        "w90: c1 5, c3 3, c4 7: not bottom-up (c3 before c1).")
    assert convergence_order("s90", {"c1": None, "c2": 4}) == "s90: too few layers settled to order them."


def test_the_shuffled_label_control_sits_at_chance(tmp_path):
    """A trained tiny run's layers decode its synthetic shapes; the same probe fit on shuffled labels does not."""
    from compare.measures import measure_run
    from recorder.run import record

    path = tmp_path / "r.h5"
    record(tiny_config(steps=30, eval_every=0, synthetic_size=1024), path, show_progress=False, log=lambda s: None)
    with open_run(path) as run:
        m = measure_run(run)
    for name, layer in m.layers.items():
        lo, hi = layer.control.interval
        assert lo <= 0.1 <= hi, (name, layer.control)  # chance lies within its interval
        assert layer.probes[-1].accuracy > hi, name  # the real labels decode far better
