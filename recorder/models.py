"""The built-in CNNs, written in Flax NNX with a `tap` after every conv nonlinearity.

Each builder takes the input shape `(H, W, C)`, the number of classes, the conv activation name and an
`nnx.Rngs`. Dense hidden layers always use relu, as in the reference experiments; only the conv
nonlinearity is configurable, because that is what is recorded and compared.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
from flax import nnx

from recorder import fastconv, pooling
from recorder.activations import get_activation
from recorder.taps import tap

# Keras' defaults (glorot-uniform kernels, zero biases) for the dense layers, as in the reference code.
_DENSE_INIT = nnx.initializers.glorot_uniform()


def _dense(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, kernel_init=_DENSE_INIT, rngs=rngs)


def _pool(x: jax.Array) -> jax.Array:
    return pooling.pool(x)  # = nnx.max_pool 2x2/2, values and gradients, without select-and-scatter


class LearnToSee(nnx.Module):
    """Six 3x3 'same' convs (4-4-8-8-16-16), Normal(0, 0.01) kernels, max-pool after conv2 and conv4,
    then Dense 64 relu, Dense 32 relu, Dense `num_classes` (logits)."""

    CHANNELS = (4, 4, 8, 8, 16, 16)
    POOL_AFTER = (1, 3)  # 0-based conv indices followed by a 2x2 max-pool

    def __init__(self, input_shape: Sequence[int], num_classes: int, activation: str, rngs: nnx.Rngs):
        h, w, c = input_shape
        self.act = get_activation(activation)
        init = nnx.initializers.normal(stddev=0.01)
        chans = (c, *self.CHANNELS)
        self.convs = nnx.List(
            [nnx.Conv(chans[i], chans[i + 1], (3, 3), padding="SAME", kernel_init=init, rngs=rngs,
                      conv_general_dilated=fastconv.conv_general_dilated)  # XLA's numbers, faster (fastconv.py)
             for i in range(6)]
        )
        flat = (h // 4) * (w // 4) * self.CHANNELS[-1]
        self.dense1 = _dense(flat, 64, rngs)
        self.dense2 = _dense(64, 32, rngs)
        self.logits = _dense(32, num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, K]
        for i, conv in enumerate(self.convs):
            x = tap(self, f"conv{i + 1}", self.act(conv(x)), kernel=conv.kernel)
            if i in self.POOL_AFTER:
                x = _pool(x)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.dense1(x))
        x = jax.nn.relu(self.dense2(x))
        return self.logits(x)


class TwoConvNet(nnx.Module):
    """Conv(c1) 3x3 valid -> pool -> Conv(c2) 3x3 valid -> pool -> flatten -> [Dense `hidden` relu] -> Dense K.

    `keras_fashion` is (32, 64, hidden 64), the Keras Fashion-MNIST tutorial CNN; `tiny_cnn` is (8, 16, no
    hidden layer), for tests and demos.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, activation: str, rngs: nnx.Rngs,
                 channels: tuple[int, int] = (32, 64), hidden: int | None = 64):
        h, w, c = input_shape
        self.act = get_activation(activation)
        init = nnx.initializers.glorot_uniform()
        self.conv_a = nnx.Conv(c, channels[0], (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        self.conv_b = nnx.Conv(channels[0], channels[1], (3, 3), padding="VALID", kernel_init=init, rngs=rngs)
        flat = (((h - 2) // 2 - 2) // 2) * (((w - 2) // 2 - 2) // 2) * channels[1]
        self.dense = _dense(flat, hidden, rngs) if hidden else None
        self.logits = _dense(hidden or flat, num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _pool(tap(self, "conv1", self.act(self.conv_a(x)), kernel=self.conv_a.kernel))
        x = _pool(tap(self, "conv2", self.act(self.conv_b(x)), kernel=self.conv_b.kernel))
        x = x.reshape(x.shape[0], -1)
        if self.dense is not None:
            x = jax.nn.relu(self.dense(x))
        return self.logits(x)


ModelBuilder = Callable[[Sequence[int], int, str, nnx.Rngs], nnx.Module]

MODELS: dict[str, ModelBuilder] = {
    "learn_to_see": LearnToSee,
    "keras_fashion": functools.partial(TwoConvNet, channels=(32, 64), hidden=64),
    "tiny_cnn": functools.partial(TwoConvNet, channels=(8, 16), hidden=None),
}


def build_model(name: str, input_shape: Sequence[int], num_classes: int, activation: str, seed: int) -> nnx.Module:
    """Builds the model called `name`; raises ValueError listing the valid names otherwise.

    The parameters are drawn by one jitted program compiled at XLA's backend optimisation level 0. Built
    eagerly, every initialiser call of a new shape compiles its own threefry program at full optimisation,
    about 2 s each on a 2-core CPU (learn_to_see: 16 s in all, against 1.6 s this way). The random bits are
    the same either way; normal draws can differ in the last bit (erfinv evaluated with other rounding).
    A constructor that cannot be traced (it reads concrete values) is run eagerly instead.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(MODELS))}")

    def create() -> nnx.Module:
        return MODELS[name](tuple(input_shape), num_classes, activation, nnx.Rngs(params=seed, dropout=seed))

    try:
        graphdef, _ = nnx.split(nnx.eval_shape(create))
        state = jax.jit(lambda: nnx.split(create())[1]).lower().compile({"xla_backend_optimization_level": 0})()
    except jax.errors.JAXTypeError:
        return create()
    return nnx.merge(graphdef, state)


def register_model(name: str, builder: ModelBuilder) -> None:
    """Makes a user model recordable by name: `builder(input_shape, num_classes, activation, rngs)`
    must return an `nnx.Module` whose forward calls `tap(self, name, y)` after each recorded layer."""
    if name in MODELS:
        raise ValueError(f"a model called {name!r} is already registered")
    MODELS[name] = builder
