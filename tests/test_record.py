"""End to end on synthetic data: config -> jitted steps -> HDF5 -> schema checks."""

import json

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from recorder.analysis import STAT_NAMES, gram_and_stats
from recorder.data import load_dataset
from recorder.models import build_model
from recorder.run import record
from recorder.taps import capture_taps, flatten_taps
from replay import open_run
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "tiny.h5"
    result = record(tiny_config(), path, show_progress=False, log=lambda s: None)
    return path, result


def test_schema_and_shapes(tiny_run):
    path, result = tiny_run
    with h5py.File(path, "r") as f:
        assert f.attrs["schema"] == "emergence.run" and f.attrs["schema_version"] == 7
        assert f["frames/step"][()].tolist() == list(range(7))  # step 0 (initial model) .. 6
        acts = f["layers/conv1/activations"]
        assert acts.shape == (7, 10, 26, 26, 8) and acts.dtype == np.float16 and acts.chunks[0] == 1
        assert f["layers/conv2/activations"].shape == (7, 10, 11, 11, 16)
        assert f["layers/conv1/kernel"].shape == (7, 3, 3, 1, 8) and "kernel" not in f["layers/conv2"]
        assert f["frames/logits"].shape == (7, 10, 10)
        assert f["train/step"][()].tolist() == [1, 2, 3, 4, 5, 6]
        assert f["eval/step"][()].tolist() == [3, 6] and f["eval"].attrs["count"] == 40
        assert f["status"][()] == b"completed"
        assert json.loads(f.attrs["config_json"])["steps"] == 6
        assert f["test/count"][()] == 64 and f["test/accuracy"][()] == pytest.approx(result.test_accuracy)
        assert np.all(np.diff(f["frames/wall_time"][()]) >= 0)
        assert f["analysis/step"][()].tolist() == list(range(7))  # a short run: analysis at every frame
        assert f["analysis/conv1/gram"].shape == (7, 32 * 33 // 2) and f["analysis/conv2/stats"].shape == (7, 7)  # STAT_NAMES
        assert f["analysis/indices"].shape == (32,) and len(f["analysis"].attrs["sha256"]) == 64
        assert np.bincount(f["analysis/labels"][()], minlength=10).max() <= 4  # class-balanced
    assert result.traces == {"train_step": 0, "block_step": 1, "probe_frame": 1, "eval_chunk": 1}


def initial_model():
    """The tiny run's dataset and its model as initialised, before any update."""
    config = tiny_config()
    ds = load_dataset("synthetic", synthetic_size=config.synthetic_size)
    return ds, build_model(config.model, ds.input_shape, 10, config.activation, config.seed)


def test_step0_frame_is_the_initial_model_on_the_probes(tiny_run):
    path, _ = tiny_run
    ds, model = initial_model()
    with open_run(path) as run:
        images, labels, indices = run.probes()
        np.testing.assert_array_equal(images, ds.test_images[indices])
        assert labels.tolist() == list(range(10))  # one probe per class, in class order
        _, taps, _ = capture_taps(model)(jnp.asarray(images, jnp.float32) / 255)
        expected = np.asarray(flatten_taps(taps)["conv1"]).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(run.activations("conv1", [0])[0], expected)
        np.testing.assert_array_equal(run.kernels("conv1", [0])[0], model.conv_a.kernel[...])
        assert not np.array_equal(run.kernels("conv1", [6])[0], run.kernels("conv1", [0])[0])  # it trained


def test_same_seed_same_recording(tiny_run, tmp_path):
    path, _ = tiny_run
    other = record(tiny_config(), tmp_path / "again.h5", show_progress=False, log=lambda s: None).path
    with open_run(path) as a, open_run(other) as b:
        for layer in a.layers:
            np.testing.assert_array_equal(a.activations(layer), b.activations(layer))
        np.testing.assert_array_equal(a.train_metrics().loss, b.train_metrics().loss)


def test_schedule_every_k_compiles_each_step_kind_once(tmp_path):
    result = record(tiny_config(steps=9, schedule="every:4"), tmp_path / "k.h5", show_progress=False, log=lambda s: None)
    with open_run(result.path) as run:
        assert run.steps.tolist() == [0, 4, 8, 9]
        assert run.train_metrics().step.tolist() == list(range(1, 10))
    assert result.traces["block_step"] == 2  # on the CPU a block is one step: one executable per kind (train, analysed)
    # 51 frames: analysis on every 2nd frame (K = ceil(50 / 48)); three step kinds, each compiled once
    result = record(tiny_config(steps=100, schedule="every:2"), tmp_path / "a.h5", show_progress=False, log=lambda s: None)
    with open_run(result.path) as run:
        assert run.analysis_steps.tolist() == list(range(0, 101, 4))
    assert result.traces == {"train_step": 0, "block_step": 3, "probe_frame": 1, "eval_chunk": 1}


def test_refuses_to_overwrite_and_keeps_the_file(tiny_run):
    path, _ = tiny_run
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        record(tiny_config(), path, show_progress=False, log=lambda s: None)
    assert path.read_bytes() == before


def test_float32_storage_and_all_kernels(tmp_path):
    config = tiny_config(dtype="float32", kernels="all", steps=2, compression="none")
    result = record(config, tmp_path / "f32.h5", show_progress=False, log=lambda s: None)
    with h5py.File(result.path, "r") as f:
        assert f["layers/conv1/activations"].dtype == np.float32
        assert f["layers/conv2/kernel"].shape == (3, 3, 3, 8, 16)


def test_analysis_grams_are_the_centred_grams_of_the_model(tiny_run):
    path, _ = tiny_run
    ds, model = initial_model()
    with open_run(path) as run:
        probe_set = run.analysis_probe_set()
        x = jnp.asarray(ds.test_images[probe_set["indices"]], jnp.float32) / 255
        _, taps, _ = capture_taps(model)(x)
        for layer, a in flatten_taps(taps).items():
            feats = np.asarray(a, np.float64).reshape(len(x), -1)
            feats -= feats.mean(axis=0)
            expected = feats @ feats.T
            got = run.grams(layer, [0])[0]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
            stats = run.activity(layer)
            assert stats["saturated_fraction"][0] == np.mean(np.abs(np.asarray(a)) > 0.99)
            assert stats["std"][0] == pytest.approx(np.asarray(a).std(), rel=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_activity_statistics_are_exact_on_either_path(backend):
    """The CPU backend's statistics, accumulated over blocks of rows (with a remainder block), and the one-pass
    form other backends use give numpy's values on a layer with dead, constant, saturated and NaN units."""
    rng = np.random.default_rng(3)
    a = np.tanh(3 * rng.standard_normal((37, 24, 24, 40))).astype(np.float32)  # 37 rows of 90 kB: blocks of 11
    a[..., 4] = 0  # a dead channel
    a[:, 2, 3, 7] = 0.25  # a constant unit
    a[5, 1, 1, 1] = np.nan
    _, got = gram_and_stats(jnp.asarray(a), backend=backend)
    x = a.reshape(len(a), -1)
    expected = {"saturated_fraction": np.mean(np.abs(x) > 0.99), "dead_fraction": np.mean(np.all(x == 0, axis=0)),
                "constant_fraction": np.mean(np.all(x == x[:1], axis=0)), "zero_fraction": np.mean(x == 0),
                "nonfinite_fraction": 1 / x.size}
    got = dict(zip(STAT_NAMES, np.asarray(got).tolist()))
    assert {k: got[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    assert np.isnan(got["mean"]) and np.isnan(got["std"])  # a NaN makes them no measure (readers exclude the step)
    _, clean = gram_and_stats(jnp.asarray(np.nan_to_num(a)), backend=backend)
    clean = dict(zip(STAT_NAMES, np.asarray(clean).tolist()))
    assert clean["mean"] == pytest.approx(np.nan_to_num(x).mean(), rel=1e-4, abs=1e-6)
    assert clean["std"] == pytest.approx(np.nan_to_num(x).std(), rel=1e-5)


def test_zstd_compression_stores_the_same_values(tiny_run, tmp_path):
    pytest.importorskip("hdf5plugin")
    path, _ = tiny_run
    other = record(tiny_config(compression="zstd"), tmp_path / "z.h5", show_progress=False, log=lambda s: None).path
    with open_run(path) as a, open_run(other) as b:
        for layer in a.layers:
            np.testing.assert_array_equal(a.activations(layer), b.activations(layer))
    with h5py.File(other, "r") as f:
        plist = f["layers/conv1/activations"].id.get_create_plist()
        assert 32015 in [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]  # HDF5's zstd filter id


def test_the_built_in_loops_writer_deflates_on_threads_and_an_own_loops_in_processes(tmp_path, monkeypatch):
    """Where the writer has several encoding threads: the built-in loop's thread seldom runs Python, so its
    recorder deflates on threads (no copies into and out of processes); a `Recorder` of one's own uses
    processes where the system has them, as its loop may keep the GIL busy (recorder/plan.py)."""
    import recorder.recorder as recorder_module
    from recorder.plan import make_plan
    from runfile import encoders

    monkeypatch.setattr(recorder_module, "default_encode_threads", lambda accelerated=False: 2)
    plan = make_plan(tiny_config(steps=4))
    for name, options, processes in (("builtin", {}, False), ("own", {"encode_processes": None}, encoders.available())):
        with plan.recorder(tmp_path / f"{name}.h5", **options) as rec:
            writer = rec._writer.writer
            assert writer._encode_threads == 2 and writer._use_processes is processes, name
