"""A loop of one's own gets what the CLI gives: the README's example as written, the config under the file's
names, true probe indices, the analysis set computed by the recorder (and refused when the model it reads
is not the one trained), the test metrics, a progress line; and every command reads the file."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config, write_run
from recorder import Capture, Probes, Recorder, RecorderError, load_dataset, tap
from recorder.own_loop import OwnLoopError, canonical_config, pixel_map, measure_split
from runfile.reader import open_run

ROOT = Path(__file__).resolve().parents[1]
EMERGENCE = [sys.executable, "-m", "emergence.cli"]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Record your own training loop"):]
    return section[section.index("```python\n") + 10:section.index("```\n", section.index("```python\n") + 10)]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's own-loop example, run as written, in a fresh folder: (folder, its output)."""
    folder = tmp_path_factory.mktemp("readme")
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=folder, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stderr


def test_the_readme_example_records_a_complete_run(readme_run):
    folder, output = readme_run
    data = load_dataset("fashion_mnist")
    one_per_class = [int(np.flatnonzero(data.test_labels == c)[0]) for c in range(10)]
    info = subprocess.run(EMERGENCE + ["info", "runs/mine.h5"], cwd=folder, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert "?" not in info.stdout
    assert "custom: Net (relu) on fashion_mnist, adam lr 0.001, batch 64, seed 0" in info.stdout
    assert f"indices {one_per_class}" in info.stdout
    assert "T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot" in info.stdout
    assert "analysis    128 held-out images of fashion_mnist" in info.stdout
    assert re.search(r"test        accuracy 0\.\d{4}, loss \d\.\d{4} on 10000 images", info.stdout)
    assert "status      completed" in info.stdout
    # the progress line: steps/s and ETA, ten lines and the end when not on a terminal
    lines = [l for l in output.splitlines() if l.startswith("[")]
    assert lines[-1].startswith("[########################] step 200/200") and "steps/s" in lines[-1]
    assert "ETA" in lines[-1] and len(lines) <= 12
    with open_run(folder / "runs/mine.h5") as run:
        assert run.probes()[1].tolist() == list(range(10))  # the probe row: one image of each class, in order
        assert run.probes()[2].tolist() == one_per_class
        assert run.config == {"learning_rate": 0.001, "batch_size": 64, "seed": 0, "optimizer": "adam",
                              "activation": "relu", "dataset": "fashion_mnist", "model": "Net"}
        loss, acc, count = run.test_metrics()
        assert count == 10000 and 0.5 < acc < 1


def test_every_command_reads_the_readme_run_and_compare_measures_it_against_a_cli_run(readme_run, tmp_path):
    from compare import CompareOptions, compare
    from recorder.run import record
    from replay.render import ReplayOptions, replay
    from viewer.api import Api
    from viewer.catalog import Catalog

    folder, _ = readme_run
    mine = folder / "runs/mine.h5"
    cli = record(tiny_config(dataset="fashion_mnist", steps=10, analysis_probes=128, eval_every=0), tmp_path / "cli.h5",
                 show_progress=False, log=lambda s: None).path
    report = compare([mine, cli], tmp_path / "cmp", CompareOptions(gifs=False, measures=False))
    layer_map = report.metrics["cross"]["layer_map"]
    assert layer_map["rows"] == ["conv"] and layer_map["cols"] == ["conv1", "conv2"]
    assert all(0 <= v <= 1.0001 for row in layer_map["matrix"] for v in row)
    assert any("no layer name in common" in n for n in report.notes)
    rendered = replay(mine, tmp_path / "replay", ReplayOptions(every=25, curves=False))
    assert (tmp_path / "replay" / "conv.gif").stat().st_size > 0 and rendered.index.exists()
    catalog = Catalog(folder / "runs")
    rows = json.loads(Api(catalog).runs().body)["runs"]
    assert [(r["name"], r["state"], r["has_analysis"]) for r in rows] == [("mine", "completed", True)]
    detail = json.loads(Api(catalog).run(rows[0]["id"]).body)
    assert "?" not in detail["training"] and detail["probes"]["labels"] == list(range(10))
    catalog.close()


def test_config_keys_go_under_the_files_names_and_the_rest_stays():
    got = canonical_config({"lr": 0.1, "Batch": 32, "optimiser": "sgd", "warmup": 100}, model="Net", dataset=None)
    assert got == {"learning_rate": 0.1, "batch_size": 32, "optimizer": "sgd", "warmup": 100, "model": "Net"}
    assert canonical_config({"model": "Mine"}, model="Net") == {"model": "Mine"}  # what the user says wins
    with pytest.raises(OwnLoopError, match="learning_rate twice"):
        canonical_config({"lr": 0.1, "learning_rate": 0.2})


def test_the_pixel_map_is_recovered_when_affine_and_refused_otherwise():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    x = ((pixels / 255 - mean) / std).astype(np.float32)
    prepare = pixel_map(pixels, x)
    other = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    np.testing.assert_allclose(prepare(other), (other / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert prepare(other).dtype == np.float32
    assert pixel_map(pixels, np.sqrt(pixels / 255)) is None  # not affine
    assert pixel_map(pixels, x[:, :4]) is None  # another shape (cropped)


class Small(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(28 * 28 * 4, 10, rngs=rngs)

    def __call__(self, x):
        y = tap(self, "act", jnp.tanh(self.conv(x)), kernel=self.conv.kernel)
        return self.head(y.reshape(y.shape[0], -1))


def _loss(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits.argmax(-1) == y).mean()


def _record(path, data, explicit: bool, steps: int = 12):
    """12 steps of Small on synthetic images, the analysis set by the recorder (or, `explicit`, by the step)."""
    probes = Probes.from_dataset(data, "one per class", analysis=32)
    probe_x = jnp.asarray(probes.images, jnp.float32) / 255
    analysis_x = jnp.asarray(probes.analysis.images, jnp.float32) / 255
    model = Small(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    capture = Capture.nnx(model, probe_x, dtype="float32")

    @nnx.jit(static_argnums=5)
    def step_fn(model, optimizer, x, y, a, analyse):
        (loss, acc), grads = nnx.value_and_grad(_loss, has_aux=True)(model, x, y)
        optimizer.update(model, grads)
        return {"loss": loss, "accuracy": acc}, capture(model, probe_x, a if analyse else None)

    kwargs = {"analysis": probes.analysis} if explicit else {}
    with Recorder(path, probes, capture, planned_steps=steps, **kwargs) as rec:
        rec.write(0, capture(model, probe_x, analysis_x if explicit else None))
        for step in range(1, steps + 1):
            x = jnp.asarray(data.train_images[step * 16:(step + 1) * 16], jnp.float32) / 255
            y = data.train_labels[step * 16:(step + 1) * 16]
            metrics, frame = step_fn(model, optimizer, x, y, analysis_x, explicit and rec.should_analyse(step))
            rec.write(step, frame, metrics)
    return path


def test_the_recorders_own_analysis_equals_the_one_computed_in_the_step(tmp_path):
    data = load_dataset("synthetic", synthetic_size=512)
    auto, explicit = _record(tmp_path / "auto.h5", data, False), _record(tmp_path / "explicit.h5", data, True)
    with open_run(auto) as a, open_run(explicit) as b:
        assert a.has_analysis and a.analysis_probe_set()["sha256"] == b.analysis_probe_set()["sha256"]
        assert a.analysis_steps.tolist() == b.analysis_steps.tolist() and len(a.analysis_steps) > 2
        ga, gb = a.grams("act", range(len(a.analysis_steps))), b.grams("act", range(len(b.analysis_steps)))
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-4 * float(np.abs(gb).max()))
        assert not np.allclose(ga[0], ga[-1])  # the Grams follow training


def test_a_model_the_loop_does_not_update_is_refused_at_the_first_analysis_step(tmp_path):
    """A functional loop (split state, plain jax.jit) leaves the model given to Capture.nnx at its initial
    weights: the recorder's analysis would measure the wrong network, so the run stops with the reason."""
    data = load_dataset("synthetic", synthetic_size=512)
    probes = Probes.from_dataset(data, "one per class", analysis=32)
    probe_x = jnp.asarray(probes.images, jnp.float32) / 255
    model = Small(nnx.Rngs(0))
    capture = Capture.nnx(model, probe_x, dtype="float32")
    graphdef, params = nnx.split(model)
    tx = optax.sgd(0.5)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, x, y):
        grads = jax.grad(lambda p: _loss(nnx.merge(graphdef, p), x, y)[0])(params)
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
        return params, opt_state, capture(nnx.merge(graphdef, params), probe_x)

    path = tmp_path / "functional.h5"
    with pytest.raises(RecorderError, match="not the model the loop trains") as caught:
        with Recorder(path, probes, capture, planned_steps=12) as rec:
            for step in range(0, 13):
                if step:
                    x = jnp.asarray(data.train_images[:16], jnp.float32) / 255
                    params, opt_state, frame = step_fn(params, opt_state, x, data.train_labels[:16])
                else:
                    frame = capture(model, probe_x)
                rec.write(step, frame)
    first = int(next(s for s in rec.analysis_steps if s > 0))
    assert f"step {first}:" in str(caught.value)
    with open_run(path) as run:  # everything before stays, and the file says why it stopped
        assert run.status == "failed" and run.steps.tolist() == list(range(first))


def test_probes_without_indices_store_unknown_and_no_command_invents_them(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    model = Small(nnx.Rngs(0))
    x = jnp.asarray(images, jnp.float32) / 255
    capture = Capture.nnx(model, x)
    with Recorder(tmp_path / "r.h5", Probes(images, np.array([0, 1, 2]), tuple("abcdefghij")), capture,
                  planned_steps=1) as rec:
        assert rec.analysis_note.startswith("the probes do not come from a data set")
        rec.write(0, capture(model, x))
        rec.write(1, capture(model, x), {"loss": jnp.float32(1.0), "accuracy": jnp.float32(0.5)})
    info = subprocess.run(EMERGENCE + ["info", str(tmp_path / "r.h5")], capture_output=True, text=True, timeout=120)
    assert "probes      3 images of user data, indices not given: a, b, c" in info.stdout
    assert "analysis    none: r.h5 holds no analysis probe set: its loop's Recorder had none" in info.stdout
    assert "test        not measured (a loop of your own records it with rec.measure_test)" in info.stdout
    assert "experiment  custom: Small, " not in info.stdout and "experiment  custom: Small" in info.stdout
    with open_run(tmp_path / "r.h5") as run:
        assert run.probes()[2].tolist() == [-1, -1, -1]


def test_measured_test_metrics_equal_a_direct_computation():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (25, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, 25)
    weights = rng.normal(size=(4, 3))
    predict = lambda u8: (u8 / 255) @ weights  # noqa: E731
    loss, acc, count = measure_split(predict, images, labels, batch_size=7)  # batches of 7, 7, 7 and 4
    logits = (images / 255) @ weights
    expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(25), labels])
    assert count == 25 and acc == np.mean(logits.argmax(1) == labels)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    with pytest.raises(OwnLoopError, match="logits"):
        measure_split(lambda u8: np.zeros(len(u8)), images, labels)


def test_the_progress_line_reports_every_tenth_and_the_end(tmp_path):
    data = load_dataset("synthetic", synthetic_size=512)
    probes = Probes.from_dataset(data, "one per class", analysis=0)
    model = Small(nnx.Rngs(0))
    x = jnp.asarray(probes.images, jnp.float32) / 255
    capture = Capture.nnx(model, x)
    stream = io.StringIO()
    with Recorder(tmp_path / "p.h5", probes, capture, planned_steps=40, schedule="every:10") as rec:
        for step in rec.progress(range(1, 41), stream=stream):
            rec.write(step, capture(model, x) if rec.should_record(step) else None,
                      {"loss": jnp.float32(1.0 / step), "accuracy": jnp.float32(0.5)})
    lines = stream.getvalue().splitlines()
    assert [int(re.search(r"step (\d+)/40", l).group(1)) for l in lines] == [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert "steps/s" in lines[-1] and "ETA 0:00" in lines[-1]


def test_several_run_experiments_are_named_like_the_others(tmp_path, capsys):
    from emergence.cli import main

    assert main(["record", "relu_vs_tanh", "--name", "x"]) == 2
    assert "relu_vs_tanh records several runs" in capsys.readouterr().err
    assert main(["sweep", "relu_vs_tanh", "--grid", "seed=0,1", "--out", str(tmp_path)]) == 2
    assert "run it as `emergence record relu_vs_tanh`" in capsys.readouterr().err


def test_a_closed_pipe_is_not_reported_as_a_damaged_file(tmp_path):
    path = tmp_path / "r.h5"
    write_run(path, {"conv1": np.zeros((3, 2, 4, 4, 2), np.float32)})
    done = subprocess.run(" ".join(EMERGENCE + ["info", str(path)]) + " | head -1", shell=True, capture_output=True,
                          text=True, timeout=120, executable="/bin/bash")
    assert done.stdout.startswith("run ") and "damaged" not in done.stderr and "Traceback" not in done.stderr


def test_a_refusal_comes_before_any_other_output(tmp_path):
    """`record --overwrite` on a file another process is recording: one line, before the model summary."""
    writer = write_run(tmp_path / "live.h5", {"conv1": np.zeros((3, 2, 4, 4, 2), np.float32)}, close=False)
    try:
        done = subprocess.run(EMERGENCE + ["record", "tiny", "--out", str(tmp_path), "--name", "live", "--overwrite",
                                           "--no-progress"], capture_output=True, text=True, timeout=120)
    finally:
        writer.close()
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("emergence: error: ") and "is being recorded right now" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
