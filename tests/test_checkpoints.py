"""Checkpoints (recorder/checkpoints.py): a copy made for another thread survives the donation of the state it
was taken from, typed PRNG keys included (a model with Dropout carries one in its state)."""

import jax
import jax.numpy as jnp
import numpy as np

from recorder.checkpoints import Checkpoints
from recorder.parallel import host


def test_a_device_copy_outlives_the_donated_state_keys_included(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "key": jax.random.key(7), "count": jnp.int32(3)}
    ckpts = Checkpoints(tmp_path / "run.h5", state, {"seed": 0})
    copies = ckpts.device_copy(state)
    step = jax.jit(lambda s: {"w": s["w"] + 1, "key": jax.random.split(s["key"])[0], "count": s["count"] + 1},
                   donate_argnums=0)
    expected = {"w": np.arange(6.0).reshape(2, 3), "key": np.asarray(jax.random.key_data(jax.random.key(7))),
                "count": 3}  # not read from the state: a host view of a buffer keeps it from being donated
    after = step(state)  # the next block: the state's own buffers are given to the step
    assert state["w"].is_deleted() and state["key"].is_deleted()
    ckpts.save_leaves(5, [host(c) for c in copies])  # as the writer thread does, after the donation
    ckpts.wait()
    restored = ckpts.restore(5)
    ckpts.close()
    np.testing.assert_array_equal(restored["w"], expected["w"])
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]), expected["key"])
    assert int(restored["count"]) == expected["count"] and int(after["count"]) == 4
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(after["key"])
