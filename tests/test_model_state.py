"""Model state beyond parameters: BatchNorm's running statistics and Dropout's RNG stream are carried through the
training step; frames and evaluations run in inference mode."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config
from recorder import Capture, Probes, Recorder, tap
from recorder.checkpoints import Checkpoints
from recorder.models import MODELS, register_model
from recorder.loop import TrainingLoop
from recorder.plan import make_plan
from recorder.run import record
from recorder.train import TrainState, make_optimizer, make_step_functions
from replay import open_run


class BNDrop(nnx.Module):
    """Conv -> BatchNorm -> relu (tapped) -> Dropout(0.5) -> Dense."""

    def __init__(self, input_shape, num_classes, activation, rngs):
        h, w, c = input_shape
        self.conv = nnx.Conv(c, 6, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(h * w * 6, num_classes, rngs=rngs)

    def __call__(self, x):
        y = tap(self, "bn_relu", nnx.relu(self.bn(self.conv(x))), kernel=self.conv.kernel)
        return self.head(self.drop(y).reshape(y.shape[0], -1))


@pytest.fixture(scope="module")
def bn_model():
    register_model("bn_drop", BNDrop)
    yield "bn_drop"
    MODELS.pop("bn_drop", None)


def _plan(model):
    return make_plan(tiny_config(model=model, steps=4, analysis_probes=0))


def test_batchnorm_and_dropout_record_through_the_built_in_loop(bn_model, tmp_path):
    """With a checkpoint every 2 steps, saved on the writer thread while the loop goes on: the dropout stream's
    key is copied before the next step takes the state's buffers."""
    result = record(tiny_config(model=bn_model, steps=4, analysis_probes=16, checkpoint_every=2), tmp_path / "bn.h5",
                    show_progress=False, log=lambda s: None)
    checkpoints = Checkpoints(result.path, _plan(bn_model).fns.init_state, {})
    assert checkpoints.steps()[-2:] == [2, 4]
    checkpoints.close()
    with open_run(result.path) as run:
        assert run.status == "completed" and run.layers == ["bn_relu"] and run.steps.tolist() == [0, 1, 2, 3, 4]
        assert np.isfinite(run.test_metrics()[1]) and len(run.analysis_steps) == 5
        assert not np.array_equal(run.activations("bn_relu", [0]), run.activations("bn_relu", [4]))


def test_running_statistics_change_in_training_and_are_used_in_frames(bn_model):
    plan = _plan(bn_model)
    loop = TrainingLoop(plan, None)
    before = jax.tree.map(np.asarray, plan.fns.init_state.model_state["bn"])
    loop.run(3)
    after = jax.tree.map(np.asarray, loop.state.model_state["bn"])
    assert not np.allclose(before["mean"], after["mean"]) and not np.allclose(before["var"], after["var"])
    # a frame uses the running statistics: probe k's maps do not depend on the other images in the batch
    fns, state = plan.fns, loop.state
    probe_x = loop.probe_x
    alone = fns.probe_frame(state.params, state.model_state, probe_x[:3])["bn_relu"]
    others = jnp.concatenate([probe_x[:3], probe_x[::-1]])[:3 + 7]
    mixed = fns.probe_frame(state.params, state.model_state, others)["bn_relu"][:3]
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(mixed))
    # and they equal the model in eval mode with those statistics
    model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: BNDrop((28, 28, 1), 10, "relu", nnx.Rngs(0)))),
                      state.params, state.model_state)
    model.eval()
    expected = nnx.relu(model.bn(model.conv(probe_x[:3])))
    np.testing.assert_allclose(np.asarray(alone, np.float32), np.asarray(expected), atol=2e-3)


def test_dropout_masks_differ_between_steps_and_repeat_for_a_seed(bn_model):
    plan = _plan(bn_model)
    loop = TrainingLoop(plan, None)
    fns = plan.fns
    idx = np.arange(plan.config.batch_size, dtype=np.int32)
    data = (loop.train_x, loop.train_y, loop.initial_params)
    copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731 - the steps donate their state
    first = copy(loop.state)
    state1, m1 = fns.train_step(copy(first), *data, idx, np.int32(1))
    again, m1_again = fns.train_step(copy(first), *data, idx, np.int32(1))
    assert float(m1["loss"]) == float(m1_again["loss"])  # same RNG state, same mask
    # the same parameters with the stream one step further: another mask, another loss
    advanced = TrainState(first.params, first.opt_state, state1.model_state)
    _, m2 = fns.train_step(copy(advanced), *data, idx, np.int32(2))
    assert float(m2["loss"]) != float(m1["loss"])
    count = lambda s: int(np.asarray(s.model_state["drop"]["rngs"]["count"].get_value()))  # noqa: E731
    assert count(state1) == count(first) + 1


def test_state_the_step_cannot_carry_is_refused_by_name():
    class Counter(nnx.Variable):
        pass

    class Odd(nnx.Module):
        def __init__(self):
            self.conv = nnx.Conv(1, 2, (3, 3), rngs=nnx.Rngs(0))
            self.calls = Counter(jnp.zeros(()))

        def __call__(self, x):
            return tap(self, "c", self.conv(x)).mean((1, 2))

    model = Odd()
    capture = Capture.nnx(model, np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="Counter"):
        make_step_functions(model, make_optimizer("adam", 1e-3, 0.9), capture)


def test_a_users_nnx_loop_with_batchnorm_keeps_its_mode_and_records_inference_frames(tmp_path):
    model = BNDrop((8, 8, 1), 2, "relu", nnx.Rngs(params=0, dropout=1))
    rng = np.random.default_rng(0)
    probes = Probes(rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8), np.array([0, 1, 0, 1]), ("a", "b"))
    x = jnp.asarray(probes.images, jnp.float32) / 255
    capture = Capture.nnx(model, x)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch, labels):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(batch), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return {"loss": loss, "accuracy": jnp.float32(0)}, capture(model, x)

    with Recorder(tmp_path / "r.h5", probes, capture, planned_steps=3, activation="relu") as rec:
        for s in range(1, 4):
            batch = jnp.asarray(rng.random((16, 8, 8, 1)), jnp.float32)
            metrics, frame = step(model, optimizer, batch, jnp.asarray(rng.integers(0, 2, 16)))
            rec.write(s, frame, metrics)
    assert model.drop.deterministic is False and model.bn.use_running_average is False  # still training
    assert not np.allclose(np.asarray(model.bn.mean[...]), 0)  # the statistics moved
    model.eval()
    expected = np.asarray(nnx.relu(model.bn(model.conv(x))))
    with open_run(tmp_path / "r.h5") as run:
        np.testing.assert_allclose(run.activations("bn_relu", [3])[0], expected, atol=2e-3)
