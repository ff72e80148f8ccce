"""The public recorder API: a user's own loop records the same file `emergence record` writes; bad input is
one clear error on the caller's thread and loses nothing; the capture compiles once inside a user's step."""

import json

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config
from recorder import (PRE_ACTIVATION, Capture, CaptureError, Probes, Recorder, RecorderError, build_model,
                      layer_measures, load_dataset, tap)
from recorder.plan import epoch_permutation
from recorder.run import record
from replay import open_run
from replay.render import ReplayOptions, replay

CONFIG = tiny_config(steps=5, eval_every=0, analysis_probes=16)
DIFFERENT_BY_DESIGN = {"config_json", "versions_json", "created_unix", "writer", "experiment", "data_origin",
                       "writer_pid", "writer_host", "writer_started_unix"}


def _probes(n=3, shape=(6, 6, 1)):
    rng = np.random.default_rng(0)
    return Probes(rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % 2, ("a", "b"))


class Small(nnx.Module):
    def __init__(self, rngs, taps=True):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(6 * 6 * 4, 2, rngs=rngs)
        self.taps = taps

    def __call__(self, x):
        y = jnp.tanh(self.conv(x))
        if self.taps:
            y = tap(self, "act", y, kernel=self.conv.kernel)
        return self.head(y.reshape(y.shape[0], -1))


def test_a_users_loop_writes_the_file_emergence_record_writes(tmp_path):
    """The same model, data, seed and schedule, trained by hand in a user's own jitted step."""
    cli = record(CONFIG, tmp_path / "cli.h5", show_progress=False, log=lambda s: None).path
    data = load_dataset(CONFIG.dataset, synthetic_size=CONFIG.synthetic_size)
    model = build_model(CONFIG.model, data.input_shape, 10, CONFIG.activation, CONFIG.seed)
    with open_run(cli) as run:  # the same picture and analysis images, chosen by the user
        p_idx, a_idx = run.probes()[2], run.analysis_probe_set()["indices"]
    probes = Probes(data.test_images[p_idx], data.test_labels[p_idx], data.class_names, p_idx, data.name)
    analysis = Probes(data.test_images[a_idx], data.test_labels[a_idx], data.class_names, a_idx, data.name)
    probe_x = jnp.asarray(probes.images, jnp.float32) / 255.0
    analysis_x = jnp.asarray(analysis.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, probe_x)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(CONFIG.learning_rate)

    def loss_fn(p, x, y):
        logits = nnx.merge(graphdef, p, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (jnp.argmax(logits, -1) == y).mean()

    measured = {t["name"]: t["module"] for t in capture.summary["taps"]}  # layer -> the module computing it
    start = jax.tree.map(jnp.copy, params)

    @jax.jit
    def step(p, opt, images, labels, a_x):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, images.astype(jnp.float32) / 255.0, labels)
        updates, opt = tx.update(grads, opt, p)
        p = optax.apply_updates(p, updates)
        metrics = {"loss": loss, "accuracy": acc, **layer_measures(measured, p, start, updates, grads)}
        return p, opt, metrics, capture(nnx.merge(graphdef, p, rest), probe_x, a_x)

    opt = tx.init(params)
    perm = epoch_permutation(CONFIG.seed, 0, len(data.train_labels))
    with Recorder(tmp_path / "api.h5", probes, capture, planned_steps=CONFIG.steps, analysis=analysis,
                  activation=CONFIG.activation, eval_count=min(CONFIG.eval_size, len(data.test_labels)),
                  weights=(params, rest)) as rec:
        rec.write(0, capture(model, probe_x, analysis_x))
        rec.write_weights(0, (params, rest))
        for s in range(1, CONFIG.steps + 1):
            idx = perm[(s - 1) * CONFIG.batch_size:s * CONFIG.batch_size]
            params, opt, metrics, frame = step(params, opt, data.train_images[idx], data.train_labels[idx].astype(np.int32),
                                               analysis_x if rec.should_analyse(s) else None)
            rec.write(s, frame, metrics)
        rec.write_weights(CONFIG.steps, (params, rest))  # the final weights, as `emergence record` stores them
    with h5py.File(cli, "r") as a, h5py.File(tmp_path / "api.h5", "r") as b:
        assert {k for k in a.attrs} == {k for k in b.attrs}
        for key in set(a.attrs) - DIFFERENT_BY_DESIGN:
            assert np.array_equal(a.attrs[key], b.attrs[key]), key
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert sorted(names) == sorted(n for n in _datasets(b))
        for name in names:
            if name.endswith("wall_time") or name in ("updated_unix", "eval/step", "eval/loss", "eval/accuracy") \
                    or name.startswith("test/"):
                continue  # clocks; the user evaluated nothing
            x, y = a[name][()], b[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if x.dtype == np.float16:  # two XLA programs: float32 last bits, one float16 unit after rounding
                np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), rtol=2 ** -10, atol=2 ** -24)
            elif name.startswith(("layers/", "analysis/", "frames/logits", "train/loss", "weights/values/",
                                  "scalars/value")):
                np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-6, err_msg=name)  # two XLA programs: last bits
            else:
                assert np.array_equal(x, y), name
        assert dict(a["layers/conv1/activations"].attrs) == dict(b["layers/conv1/activations"].attrs)


def _datasets(f):
    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return out


def test_the_capture_compiles_once_inside_a_users_step(tmp_path):
    model = Small(nnx.Rngs(0))
    probes = _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, x)
    traces = []

    @nnx.jit
    def step(m, batch):
        traces.append(1)
        loss, grads = nnx.value_and_grad(lambda mm: jnp.mean(mm(batch) ** 2))(m)
        nnx.update(m, jax.tree.map(lambda p, g: p - 0.1 * g, nnx.state(m, nnx.Param), grads))
        return {"loss": loss, "accuracy": jnp.float32(0)}, capture(m, x)

    with Recorder(tmp_path / "r.h5", probes, capture, planned_steps=6, activation="tanh") as rec:
        for s in range(1, 7):
            metrics, frame = step(model, x)
            rec.write(s, frame, metrics)
    assert len(traces) == 1
    with open_run(tmp_path / "r.h5") as run:
        assert run.steps.tolist() == [1, 2, 3, 4, 5, 6] and run.layers == ["act"] and run.kernel_layers == ["act"]
        np.testing.assert_array_equal(run.activations("act", [6])[0],
                                      np.asarray(capture(model, x)["act"], np.float32))  # the last parameters


def test_convenience_path_records_on_schedule_with_its_own_executable(tmp_path):
    model = Small(nnx.Rngs(1))
    probes = _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, x)
    with Recorder(tmp_path / "r.h5", probes, capture, planned_steps=6, schedule="every:3", activation="tanh") as rec:
        expected = {}
        for s in range(0, 7):
            if s:
                nnx.update(model, jax.tree.map(lambda p: p * 1.01, nnx.state(model, nnx.Param)))
            rec.capture_and_write(s, model, x, metrics={"loss": 1.0 / (s + 1), "accuracy": 0.5} if s else None)
            expected[s] = np.asarray(capture(model, x)["act"], np.float32)
    with open_run(tmp_path / "r.h5") as run:
        assert run.steps.tolist() == [0, 3, 6]
        for s in (0, 3, 6):
            np.testing.assert_allclose(run.activations("act", [s])[0], expected[s], atol=1e-3)  # float16 storage
        assert run.train_metrics().step.tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("gap,batches", [(60.0, 2), (0.0, 0)])
def test_fast_frames_travel_packed_and_arrive_bit_for_bit(tmp_path, monkeypatch, gap, batches):
    """Frames that come faster than the batcher's gap are packed 8 at a time into one buffer per dtype (one
    transfer); slow ones go one by one. Either way the file holds exactly what frames_per_transfer=1 writes."""
    from recorder.device_writer import DeviceWriter

    sent = []
    monkeypatch.setattr(DeviceWriter, "write_frames", lambda self, batch: (sent.append(batch.steps),
                                                                           self.submit(self._frames, batch)))
    model = Small(nnx.Rngs(2))
    probes = _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, x)
    frames = [capture(model, x * (1 + s / 10)) for s in range(20)]  # device arrays, float16 activations
    for name, per_transfer in (("packed", 8), ("single", 1)):
        with Recorder(tmp_path / f"{name}.h5", probes, capture, planned_steps=19, activation="tanh",
                      frames_per_transfer=per_transfer) as rec:
            rec._frames.gap = gap
            for s, frame in enumerate(frames):
                rec.write(s, frame, {"loss": 1.0, "accuracy": 0.5} if s else None)
    assert sent == [tuple(range(1, 9)), tuple(range(9, 17))][:batches]  # the first frame has no predecessor
    with open_run(tmp_path / "packed.h5") as packed, open_run(tmp_path / "single.h5") as single:
        assert packed.steps.tolist() == single.steps.tolist() == list(range(20))
        for read in (lambda r: r.activations("act"), lambda r: r.kernels("act"), lambda r: r.logits()):
            np.testing.assert_array_equal(read(packed), read(single))
        np.testing.assert_array_equal(single.activations("act", [7])[0],
                                      np.asarray(frames[7]["act"], np.float32))


def test_a_model_without_taps_records_its_conv_outputs_as_pre_activation(tmp_path):
    model = Small(nnx.Rngs(0), taps=False)
    probes = _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, x)
    assert [(l.name, l.stage) for l in capture.layers] == [("conv", PRE_ACTIVATION)]
    frame = capture(model, x)
    np.testing.assert_allclose(np.asarray(frame["conv"], np.float32), np.asarray(model.conv(x)), atol=2e-3)
    with Recorder(tmp_path / "r.h5", probes, capture, planned_steps=1, activation="tanh") as rec:
        rec.write(0, frame)
        rec.write(1, frame)
    with open_run(tmp_path / "r.h5") as run:
        assert run.layer_stage("conv") == PRE_ACTIVATION and run.activation_label("conv") == PRE_ACTIVATION
    report = replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(curves=False))
    (_, anim, scale), *_ = report.animations
    assert "p99.9" in scale  # a pre-activation tanh layer is unbounded: the percentile rule, not [-1, 1]


def test_a_plain_function_and_extra_scalars(tmp_path):
    w = jnp.ones((3, 3, 1, 2)) * 0.1

    def features(params, x):
        y = jax.lax.conv_general_dilated(x, params, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.zeros((x.shape[0], 2)), {"edges": jax.nn.relu(y)}

    probes = _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.function(features, w, x)
    with Recorder(tmp_path / "r.h5", probes, capture, planned_steps=2, activation="relu", config={"lr": 0.1}) as rec:
        for s in range(3):
            rec.write(s, capture(w * (s + 1), x))
            rec.log_scalars(s, learning_rate=0.1 / (s + 1), grad_norm=float(s))
    with open_run(tmp_path / "r.h5") as run:
        assert run.layers == ["edges"] and run.config == {"learning_rate": 0.1, "activation": "relu"}  # lr under its file name
        scalars = run.scalars()
        assert scalars["learning_rate"][0].tolist() == [0, 1, 2]
        np.testing.assert_allclose(scalars["learning_rate"][1], [0.1, 0.05, 0.1 / 3])
        assert scalars["grad_norm"][1].tolist() == [0.0, 1.0, 2.0]


def test_bad_input_is_one_clear_error_and_loses_nothing(tmp_path):
    model = Small(nnx.Rngs(0))
    probes = _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, x)
    with pytest.raises(RecorderError, match="uint8"):
        Probes(np.zeros((3, 6, 6, 1), np.float32), np.zeros(3, int))
    with pytest.raises(RecorderError, match=r"\[P, H, W, C\]"):
        Probes(np.zeros((3, 6, 6), np.uint8), np.zeros(3, int))
    with pytest.raises(RecorderError, match="one per image"):
        Probes(np.zeros((3, 6, 6, 1), np.uint8), np.zeros(2, int))

    class Dense(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(36, 2, rngs=rngs)

        def __call__(self, x):
            return self.lin(x.reshape(x.shape[0], -1))

    with pytest.raises(CaptureError, match="nothing to record"):
        Capture.nnx(Dense(nnx.Rngs(0)), x)
    with pytest.raises(RecorderError, match="JSON"):
        Recorder(tmp_path / "j.h5", probes, capture, planned_steps=1, config={"f": object()})

    path = tmp_path / "r.h5"
    with pytest.raises(RecorderError, match="steps must increase"):
        with Recorder(path, probes, capture, planned_steps=5, activation="tanh") as rec:
            rec.write(0, capture(model, x))
            rec.write(1, capture(model, x), {"loss": 1.0, "accuracy": 0.5})
            with pytest.raises(RecorderError, match="wrong shapes"):
                rec.write(2, {**capture(model, x), "act": jnp.zeros((3, 5, 5, 4))})
            with pytest.raises(RecorderError, match="missing"):
                rec.write(2, {"logits": jnp.zeros((3, 2))})
            with pytest.raises(RecorderError, match="no analysis probes"):
                rec.write(2, capture(model, x, x))
            rec.write(1, capture(model, x))  # backwards: ends the run
    with pytest.raises(RecorderError, match="closed"):
        rec.write(9, capture(model, x))
    with open_run(path) as run:  # everything written before the error is there, and the file says why it ended
        assert run.steps.tolist() == [0, 1] and run.train_metrics().step.tolist() == [1]
        assert run.status == "failed" and "steps must increase" in run.status_message


def test_ctrl_c_leaves_the_file_interrupted(tmp_path):
    model = Small(nnx.Rngs(0))
    probes = _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, x)
    with pytest.raises(KeyboardInterrupt):
        with Recorder(tmp_path / "r.h5", probes, capture, planned_steps=5) as rec:
            rec.write(0, capture(model, x))
            rec.write(1, capture(model, x), {"loss": 1.0, "accuracy": 0.5})
            raise KeyboardInterrupt
    with open_run(tmp_path / "r.h5") as run:
        assert run.state() == ("interrupted", "interrupted (Ctrl-C) at step 1") and run.num_frames == 2


def test_linen_and_nnx_examples_record_files_every_command_reads(tmp_path, capsys):
    from emergence.cli import main
    from experiments import own_loop_linen, own_loop_nnx

    paths = [mod.main(["--out", str(tmp_path), "--steps", "6", "--dataset", "synthetic", "--batch", "32"])
             for mod in (own_loop_nnx, own_loop_linen)]
    for path, layers, stage in ((paths[0], ["relu1", "relu2"], "relu"), (paths[1], ["tanh1", "tanh2"], "tanh")):
        with open_run(path) as run:
            assert run.layers == layers and run.status == "completed" and run.steps.tolist() == list(range(7))
            assert run.activation_label(layers[0]) == stage and run.kernel_layers == [layers[0]]
            assert len(run.analysis_steps) == 7 and len(run.scalars()["learning_rate"][0]) == 6
            assert json.loads(run._f.attrs["summary_json"])["taps"][0]["name"] == layers[0]
        assert main(["info", str(path)]) == 0
        assert main(["replay", str(path), "--out", str(tmp_path / path.stem)]) == 0
        assert main(["compare", str(path), "--out", str(tmp_path / f"{path.stem}_dyn")]) == 0
    assert (tmp_path / "own_loop_linen" / "tanh1.gif").exists()
    assert "own_loop_nnx" in capsys.readouterr().out


def test_probes_from_a_split():
    labels = np.array([3, 1, 1, 0, 2, 3, 0, 2, 1])
    images = np.arange(9 * 4, dtype=np.uint8).reshape(9, 2, 2, 1)
    one = Probes.select(images, labels, "one per class", ("a", "b", "c", "d"), "mine")
    assert one.indices.tolist() == [3, 1, 4, 0] and one.labels.tolist() == [0, 1, 2, 3]
    assert np.array_equal(one.images, images[[3, 1, 4, 0]]) and one.dataset == "mine"
    balanced = Probes.select(images, labels, "balanced:8", ("a", "b", "c", "d"))
    assert sorted(np.bincount(balanced.labels).tolist()) == [2, 2, 2, 2]
    with pytest.raises(RecorderError, match="one per class"):
        Probes.select(images, labels, "first ten")
