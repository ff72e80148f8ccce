"""The fast 2x2 max-pool equals nnx.max_pool, values and gradients exactly, ties included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recorder.pooling import pool


def reference(x):
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


@pytest.mark.parametrize("shape", [(2, 28, 28, 4), (3, 14, 14, 8), (2, 11, 13, 3)])
def test_values_and_gradients_equal_nnx_max_pool(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    x[:, : shape[1] // 2] = np.round(x[:, : shape[1] // 2])  # many exact ties, as on image backgrounds
    x[0, :4, :4, :] = 0.25  # whole windows of equal values
    x = jnp.asarray(x)
    weights = jnp.asarray(rng.normal(size=reference(x).shape), jnp.float32)
    np.testing.assert_array_equal(pool(x), reference(x))
    got = jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)
    want = jax.grad(lambda x: jnp.sum(reference(x) * weights))(x)
    np.testing.assert_array_equal(got, want)
