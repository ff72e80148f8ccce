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


def test_conv_impl_selects_the_cpu_paths_per_backend():
    try:
        fastconv.set_conv_impl("auto")
        assert fastconv.cpu_paths("cpu") and not fastconv.cpu_paths("gpu") and not fastconv.cpu_paths("tpu")
        fastconv.set_conv_impl("xla")
        assert not fastconv.cpu_paths("cpu")
        fastconv.set_conv_impl("banded")
        assert fastconv.cpu_paths("gpu")
        with pytest.raises(ValueError, match="conv_impl"):
            fastconv.set_conv_impl("cudnn")
    finally:
        fastconv.set_conv_impl("auto")


def test_conv_impl_changes_the_traced_program_not_the_numbers():
    from recorder.models import build_model

    model = build_model("learn_to_see", (28, 28, 1), 10, "tanh", 0)
    x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1)), jnp.float32)
    graphdef, state = nnx.split(model)

    def make_forward():  # a new function per choice: JAX caches traces per function, and the choice is read
        return lambda s, x: nnx.merge(graphdef, s)(x)  # while tracing

    out = {}
    try:
        for impl in ("xla", "banded"):
            fastconv.set_conv_impl(impl)
            forward = make_forward()
            text = str(jax.make_jaxpr(forward)(state, x))
            out[impl] = (text.count("conv_general_dilated["), text.count("reduce_window"),
                         np.asarray(jax.jit(forward)(state, x)))
    finally:
        fastconv.set_conv_impl("auto")
    assert out["xla"][0] == 6 and out["banded"][0] == 3  # conv1..3 (Cin·Cout <= 32) take the banded path
    assert out["xla"][1] == 2 and out["banded"][1] == 0  # XLA's pool (reduce_window) vs the custom one
    assert "custom_vjp" in str(jax.make_jaxpr(make_forward())(state, x))  # auto on this CPU: the custom pool
    np.testing.assert_allclose(out["xla"][2], out["banded"][2], rtol=1e-4, atol=1e-5)
