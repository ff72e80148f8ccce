"""The banded 3x3 convolution gives XLA's numbers: values and gradients to 1e-5, and it is used only where it applies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from recorder import fastconv


def reference(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape", [(3, 28, 28, 1, 4), (2, 28, 28, 4, 4), (2, 14, 14, 4, 8), (2, 7, 7, 2, 16),
                                   (2, 9, 12, 3, 5)])
def test_values_and_gradients_match_lax(shape):
    b, h, w, cin, cout = shape
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.3, jnp.float32)
    np.testing.assert_allclose(fastconv.banded_conv3x3(x, k), reference(x, k), rtol=1e-5, atol=1e-5)
    probe = jnp.asarray(rng.normal(size=(b, h, w, cout)), jnp.float32)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) * probe)

    got = jax.grad(loss(fastconv.banded_conv3x3), argnums=(0, 1))(x, k)
    want = jax.grad(loss(reference), argnums=(0, 1))(x, k)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


def test_used_only_where_it_applies():
    nhwc = ("NHWC", "HWIO", "NHWC")
    assert fastconv.applies((8, 28, 28, 4), (3, 3, 4, 4), (1, 1), "SAME", None, None, nhwc, 1)
    assert fastconv.applies((8, 28, 28, 4), (3, 3, 4, 4), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), nhwc, 1)
    assert not fastconv.applies((8, 14, 14, 8), (3, 3, 8, 8), (1, 1), "SAME", None, None, nhwc, 1)  # XLA is faster
    assert not fastconv.applies((8, 28, 28, 1), (3, 3, 1, 4), (1, 1), "VALID", None, None, nhwc, 1)
    assert not fastconv.applies((8, 28, 28, 1), (3, 3, 1, 4), (2, 2), "SAME", None, None, nhwc, 1)
    assert not fastconv.applies((8, 28, 28, 1), (5, 5, 1, 4), (1, 1), "SAME", None, None, nhwc, 1)
    assert not fastconv.applies((8, 1, 28, 28), (4, 1, 3, 3), (1, 1), "SAME", None, None, ("NCHW", "OIHW", "NCHW"), 1)


def test_as_the_conv_of_an_nnx_layer():
    rngs = nnx.Rngs(0)
    fast = nnx.Conv(4, 4, (3, 3), padding="SAME", conv_general_dilated=fastconv.conv_general_dilated, rngs=rngs)
    plain = nnx.Conv(4, 4, (3, 3), padding="SAME", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 4)), jnp.float32)
    np.testing.assert_allclose(fast(x), plain(x), rtol=1e-5, atol=1e-5)
