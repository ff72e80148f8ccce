import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recorder.activations import ACTIVATIONS
from recorder.models import build_model
from recorder.summary import summarize
from recorder.taps import capture_taps, flatten_taps


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("learn_to_see", [(28, 28, 4), (28, 28, 4), (14, 14, 8), (14, 14, 8), (7, 7, 16), (7, 7, 16)]),
        ("keras_fashion", [(26, 26, 32), (11, 11, 64)]),
        ("tiny_cnn", [(26, 26, 8), (11, 11, 16)]),
    ],
)
def test_tap_shapes_in_call_order(name, shapes):
    summary = summarize(build_model(name, (28, 28, 1), 10, "tanh", 0), (28, 28, 1))
    assert [tuple(t["shape"]) for t in summary["taps"]] == shapes
    assert [t["name"] for t in summary["taps"]] == [f"conv{i + 1}" for i in range(len(shapes))]


def test_keras_fashion_parameter_count_matches_keras():
    summary = summarize(build_model("keras_fashion", (28, 28, 1), 10, "relu", 0), (28, 28, 1))
    assert summary["total_params"] == 121_930  # Keras summary(): 320 + 18,496 + 102,464 + 650


def test_learn_to_see_init_and_cifar_shape():
    model = build_model("learn_to_see", (32, 32, 3), 10, "tanh", 0)
    k = np.asarray(model.convs[2].kernel[...])
    assert abs(k.std() - 0.01) < 0.002 and abs(k.mean()) < 0.002  # Normal(0, 0.01)
    out, taps, _ = capture_taps(model)(jnp.zeros((2, 32, 32, 3)))
    assert out.shape == (2, 10) and flatten_taps(taps)["conv6"].shape == (2, 8, 8, 16)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_recorded_values_come_after_the_nonlinearity(activation):
    model = build_model("tiny_cnn", (28, 28, 1), 10, activation, 0)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    _, taps, kernels = capture_taps(model)(x)
    pre = jax.lax.conv_general_dilated(x, model.conv_a.kernel[...], (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + model.conv_a.bias[...]
    np.testing.assert_allclose(flatten_taps(taps)["conv1"], ACTIVATIONS[activation](pre), atol=1e-5)
    np.testing.assert_array_equal(flatten_taps(kernels)["conv1"], model.conv_a.kernel[...])


def _params(model):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_built_parameters_are_the_eager_initialisers_draws():
    """build_model draws in one program compiled at optimisation level 0: same random bits as the eager
    initialisers, so uniform draws are equal and normal ones agree to the last bit of float32."""
    from recorder.models import MODELS

    built = _params(build_model("learn_to_see", (28, 28, 1), 10, "tanh", 3))
    eager = _params(MODELS["learn_to_see"]((28, 28, 1), 10, "tanh", nnx.Rngs(params=3)))
    assert built.keys() == eager.keys()
    for path, value in eager.items():
        if path[-1] == "kernel" and path[0] == "convs":  # Normal(0, 0.01)
            np.testing.assert_allclose(built[path], value, rtol=5e-7, atol=0)
        else:  # glorot-uniform dense kernels and zero biases
            np.testing.assert_array_equal(built[path], value)


def test_a_constructor_that_reads_concrete_values_is_built_eagerly():
    from recorder.models import MODELS, register_model

    class Reads(nnx.Module):
        def __init__(self, input_shape, num_classes, activation, rngs):
            w = nnx.initializers.normal(1.0)(rngs.params(), (4,))
            self.scale = float(jnp.abs(w).max())  # needs a concrete value: cannot be traced
            self.w = nnx.Param(w)

    register_model("reads_concrete", Reads)
    try:
        model = build_model("reads_concrete", (28, 28, 1), 10, "tanh", 0)
        assert model.scale == pytest.approx(float(np.abs(np.asarray(model.w[...])).max()))
    finally:
        del MODELS["reads_concrete"]
