"""Per-layer measures recorded in the training step, checked on cases whose answer is known."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compare.dynamics import layer_dynamics
from compare.weight_change import weight_change, weight_series, weight_settled
from recorder.config import RunConfig
from recorder.run import record
from recorder.train import layer_measures
from runfile.reader import open_run


def _state(**leaves):
    return nnx.State({k: {"kernel": nnx.Param(jnp.asarray(v, jnp.float32))} for k, v in leaves.items()})


def test_layer_measures_on_known_values():
    start = _state(a=np.ones((2, 2)), b=np.full((3,), 2.0))
    params = _state(a=np.full((2, 2), 2.0), b=np.full((3,), 2.0))
    updates = _state(a=np.full((2, 2), 0.5), b=np.zeros(3))
    grads = _state(a=np.full((2, 2), 3.0), b=np.zeros(3))
    out = {k: float(v) for k, v in layer_measures({"A": "a", "B": "b"}, params, start, updates, grads).items()}
    assert out["A/weight_change"] == pytest.approx(1.0)  # ‖2 − 1‖ / ‖1‖
    assert out["A/update_ratio"] == pytest.approx(0.25)  # ‖0.5‖ / ‖2‖
    assert out["A/grad_norm"] == pytest.approx(6.0)  # sqrt(4 · 9)
    assert out["B/weight_change"] == 0 and out["B/update_ratio"] == 0 and out["B/grad_norm"] == 0


def test_a_frozen_layer_reports_no_change_and_the_step_agrees_with_the_stored_weights(tmp_path):
    config = RunConfig(model="tiny_cnn", dataset="synthetic", synthetic_size=256, batch_size=64, steps=8,
                       analysis_probes=16, checkpoint_every=0, freeze=("conv1",))
    record(config, tmp_path / "f.h5", show_progress=False, log=lambda s: None)
    with open_run(tmp_path / "f.h5") as run:
        series = weight_series(run, ["conv1", "conv2"])
        frozen, trained = series["conv1"], series["conv2"]
        assert frozen["weight_change"][0].tolist() == list(range(1, 9))
        assert np.all(frozen["weight_change"][1] == 0) and np.all(frozen["update_ratio"][1] == 0)
        assert np.all(frozen["grad_norm"][1] > 0)  # the gradient exists; the optimiser gives it no update
        assert weight_settled(frozen, 0.9) is None and weight_change(run, "conv1") == 0
        assert np.all(np.diff(trained["weight_change"][1]) != 0) and np.all(trained["update_ratio"][1] > 0)
        assert trained["weight_change"][1][-1] == pytest.approx(weight_change(run, "conv2"), rel=1e-5)
        w90 = weight_settled(trained, 0.9)
        assert w90 is not None and trained["weight_change"][1][w90 - 1] >= 0.9 * trained["weight_change"][1][-1]
        flags = layer_dynamics(run, "conv1").flags
        assert any(f.startswith("no change: CKA(init, final) = 1.000 and weight change 0") for f in flags), flags

