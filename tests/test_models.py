import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recorder.activations import ACTIVATIONS
from recorder.models import build_model
from recorder.summary import summarize
from recorder.taps import Tap, TapKernel, flatten_taps


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
    out, taps, _ = nnx.capture(model, Tap, TapKernel)(jnp.zeros((2, 32, 32, 3)))
    assert out.shape == (2, 10) and flatten_taps(taps)["conv6"].shape == (2, 8, 8, 16)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_recorded_values_come_after_the_nonlinearity(activation):
    model = build_model("tiny_cnn", (28, 28, 1), 10, activation, 0)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    _, taps, kernels = nnx.capture(model, Tap, TapKernel)(x)
    pre = jax.lax.conv_general_dilated(x, model.conv_a.kernel[...], (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + model.conv_a.bias[...]
    np.testing.assert_allclose(flatten_taps(taps)["conv1"], ACTIVATIONS[activation](pre), atol=1e-5)
    np.testing.assert_array_equal(flatten_taps(kernels)["conv1"], model.conv_a.kernel[...])
