"""The built-in CNNs, written in Flax NNX with a `tap` after every conv nonlinearity.

Each builder takes the input shape `(H, W, C)`, the number of classes, the conv activation name and an
`nnx.Rngs`. Dense hidden layers always use relu, as in the reference experiments; only the conv
nonlinearity is configurable, because that is what is recorded and compared.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

import jax
from flax import nnx

from recorder import fastconv, pooling
from recorder.activations import get_activation
from recorder.taps import tap

# Keras' defaults (glorot-uniform kernels, zero biases) for the dense layers, as in the reference code.
_DENSE_INIT = nnx.initializers.glorot_uniform()
_HE_INIT = nnx.initializers.he_normal()  # for convs followed by BatchNorm and relu-like nonlinearities


def _dense(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, kernel_init=_DENSE_INIT, rngs=rngs)


def _pool(x: jax.Array) -> jax.Array:
    return pooling.pool(x)  # = nnx.max_pool 2x2/2, values and gradients, without select-and-scatter


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """A dropout layer on its own RNG stream, or None at rate 0 (the model then holds no RNG state)."""
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def _drop(dropout: nnx.Dropout | None, x: jax.Array) -> jax.Array:
    return x if dropout is None else dropout(x)


def _to_dense(x: jax.Array, gap: bool) -> jax.Array:
    """[B, H, W, C] -> [B, C] by global average pooling, or [B, H·W·C] by flattening."""
    return x.mean(axis=(1, 2)) if gap else x.reshape(x.shape[0], -1)


def _check_spatial(name: str, size: int, where: str) -> int:
    if size < 1:
        raise ValueError(f"{name}: the feature map shrinks to {size} pixels at {where}; use padding=same, or a "
                         "larger input")
    return size


class LearnToSee(nnx.Module):
    """Six 3x3 convs (4-4-8-8-16-16), Normal(0, 0.01) kernels, then Dense 64 relu, Dense 32 relu, Dense
    `num_classes` (logits). Downsampling after conv2 and conv4: a 2x2 max-pool (`downsample="pool"`, the
    reference), or those two convs with stride 2 instead (`"stride"`: learnt downsampling, no pooling layer).
    `padding="same"` (the reference) keeps each conv's size; `"valid"` shrinks it by 2. `head="gap"` averages
    each channel over the image instead of flattening (16 inputs to the dense layers instead of 7·7·16);
    `dropout` > 0 drops that fraction of each dense layer's inputs in training."""

    CHANNELS = (4, 4, 8, 8, 16, 16)
    POOL_AFTER = (1, 3)  # 0-based conv indices followed by a 2x2 max-pool (or strided)

    def __init__(self, input_shape: Sequence[int], num_classes: int, activation: str, rngs: nnx.Rngs,
                 padding: str = "same", downsample: str = "pool", head: str = "flatten", dropout: float = 0.0):
        h, w, c = input_shape
        self.act = get_activation(activation)
        self.strided = downsample == "stride"
        init = nnx.initializers.normal(stddev=0.01)
        chans = (c, *self.CHANNELS)
        convs = []
        for i in range(6):
            stride = 2 if self.strided and i in self.POOL_AFTER else 1
            convs.append(nnx.Conv(chans[i], chans[i + 1], (3, 3), strides=stride, padding=padding.upper(),
                                  kernel_init=init, rngs=rngs,
                                  conv_general_dilated=fastconv.conv_general_dilated))  # faster on CPU (fastconv.py)
            shrink = 0 if padding == "same" else 2
            h, w = ((_check_spatial("learn_to_see", (d - shrink + stride - 1) // stride, f"conv{i + 1}") for d in (h, w)))
            if i in self.POOL_AFTER and not self.strided:
                h, w = (_check_spatial("learn_to_see", d // 2, f"the pool after conv{i + 1}") for d in (h, w))
        self.convs = nnx.List(convs)
        self.gap = head == "gap"
        self.dense1 = _dense((1 if self.gap else h * w) * self.CHANNELS[-1], 64, rngs)
        self.dense2 = _dense(64, 32, rngs)
        self.logits = _dense(32, num_classes, rngs)
        self.dropout = _dropout(dropout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, K]
        for i, conv in enumerate(self.convs):
            x = tap(self, f"conv{i + 1}", self.act(conv(x)), kernel=conv.kernel)
            if i in self.POOL_AFTER and not self.strided:
                x = _pool(x)
        x = _to_dense(x, self.gap)
        x = jax.nn.relu(self.dense1(_drop(self.dropout, x)))
        x = jax.nn.relu(self.dense2(_drop(self.dropout, x)))
        return self.logits(_drop(self.dropout, x))


class TwoConvNet(nnx.Module):
    """Conv(c1) 3x3 -> pool -> Conv(c2) 3x3 -> pool -> flatten -> [Dense `hidden` relu] -> Dense K.

    `keras_fashion` is (32, 64, hidden 64), the Keras Fashion-MNIST tutorial CNN; `tiny_cnn` is (8, 16, no
    hidden layer), for tests and demos. Both use 'valid' padding (the tutorial's); `padding="same"` keeps
    each conv's size (28 -> 28 -> 14 -> 14 -> 7 instead of 28 -> 26 -> 13 -> 11 -> 5). `head` and `dropout` as
    for `LearnToSee`.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, activation: str, rngs: nnx.Rngs,
                 channels: tuple[int, int] = (32, 64), hidden: int | None = 64, padding: str = "valid",
                 head: str = "flatten", dropout: float = 0.0):
        h, w, c = input_shape
        self.act = get_activation(activation)
        init = nnx.initializers.glorot_uniform()
        pad = padding.upper()
        self.conv_a = nnx.Conv(c, channels[0], (3, 3), padding=pad, kernel_init=init, rngs=rngs)
        self.conv_b = nnx.Conv(channels[0], channels[1], (3, 3), padding=pad, kernel_init=init, rngs=rngs)
        shrink = 0 if padding == "same" else 2
        for i in (1, 2):
            h, w = (_check_spatial("two-conv net", (d - shrink) // 2, f"conv{i} and its pool") for d in (h, w))
        self.gap = head == "gap"
        flat = (1 if self.gap else h * w) * channels[1]
        self.dense = _dense(flat, hidden, rngs) if hidden else None
        self.logits = _dense(hidden or flat, num_classes, rngs)
        self.dropout = _dropout(dropout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _pool(tap(self, "conv1", self.act(self.conv_a(x)), kernel=self.conv_a.kernel))
        x = _pool(tap(self, "conv2", self.act(self.conv_b(x)), kernel=self.conv_b.kernel))
        x = _to_dense(x, self.gap)
        if self.dense is not None:
            x = jax.nn.relu(self.dense(_drop(self.dropout, x)))
        return self.logits(_drop(self.dropout, x))


class ConvBN(nnx.Module):
    """Conv 3x3 (no bias: BatchNorm's offset replaces it) -> BatchNorm -> nonlinearity."""

    def __init__(self, cin: int, cout: int, act: Callable[[jax.Array], jax.Array], rngs: nnx.Rngs, stride: int = 1,
                 kernel: int = 3):
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME", use_bias=False,
                             kernel_init=_HE_INIT, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.bn(self.conv(x)))


class VGGBN(nnx.Module):
    """A small VGG-style net with BatchNorm: three blocks of two [conv 3x3 -> BatchNorm -> act] and a 2x2
    max-pool (16-16, 32-32, 64-64 channels), then Dense 128 relu, Dropout 0.5, Dense K. Each conv is tapped
    after its BatchNorm and nonlinearity (conv1..conv6). For 28x28 (3x3x64 after the pools) and 32x32 inputs.
    `head="gap"` averages each of the 64 channels over the image instead of flattening."""

    CHANNELS = (16, 16, 32, 32, 64, 64)

    def __init__(self, input_shape: Sequence[int], num_classes: int, activation: str, rngs: nnx.Rngs,
                 dropout: float = 0.5, head: str = "flatten"):
        h, w, c = input_shape
        act = get_activation(activation)
        chans = (c, *self.CHANNELS)
        self.layers = nnx.List([ConvBN(chans[i], chans[i + 1], act, rngs) for i in range(6)])
        for i in range(3):
            h, w = (_check_spatial("vgg_bn", d // 2, f"pool {i + 1}") for d in (h, w))
        self.gap = head == "gap"
        self.dense = _dense((1 if self.gap else h * w) * chans[-1], 128, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.logits = _dense(128, num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = tap(self, f"conv{i + 1}", layer(x), kernel=layer.conv.kernel, source=layer)  # freeze: conv + BN
            if i % 2 == 1:
                x = _pool(x)
        x = self.dropout(jax.nn.relu(self.dense(_to_dense(x, self.gap))))
        return self.logits(x)


class ResidualBlock(nnx.Module):
    """[conv 3x3 (stride s) -> BN -> act -> conv 3x3 -> BN] + shortcut, then act. The shortcut is the input, or
    a 1x1 conv (stride s) + BN where the shape changes (He et al. 2016, option B)."""

    def __init__(self, cin: int, cout: int, stride: int, act: Callable[[jax.Array], jax.Array], rngs: nnx.Rngs):
        self.first = ConvBN(cin, cout, act, rngs, stride=stride)
        self.conv = nnx.Conv(cout, cout, (3, 3), padding="SAME", use_bias=False, kernel_init=_HE_INIT, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.project = ConvBN(cin, cout, lambda v: v, rngs, stride=stride, kernel=1) if (stride, cin) != (1, cout) else None
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.project is None else self.project(x)
        return self.act(self.bn(self.conv(self.first(x))) + shortcut)


class SmallResNet(nnx.Module):
    """A ResNet for 28x28 and 32x32 inputs (He et al. 2016's CIFAR design at depth 8): a conv 3x3 stem (16
    channels, BN, act), three stages of one residual block each (16, 32, 64 channels; stride 2 at the start of
    stages 2 and 3), global average pooling, Dense K. Tapped: `stem` and each block after its addition and
    nonlinearity (`block1`..`block3`)."""

    STAGES = ((16, 1), (32, 2), (64, 2))

    def __init__(self, input_shape: Sequence[int], num_classes: int, activation: str, rngs: nnx.Rngs):
        act = get_activation(activation)
        self.stem_conv = ConvBN(input_shape[-1], 16, act, rngs)
        cins = (16, *(c for c, _ in self.STAGES[:-1]))
        self.blocks = nnx.List([ResidualBlock(cin, c, s, act, rngs) for cin, (c, s) in zip(cins, self.STAGES)])
        self.logits = _dense(self.STAGES[-1][0], num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = tap(self, "stem", self.stem_conv(x), source=self.stem_conv)
        for i, block in enumerate(self.blocks):
            x = tap(self, f"block{i + 1}", block(x), source=block)
        return self.logits(x.mean(axis=(1, 2)))


ModelBuilder = Callable[..., nnx.Module]  # (input_shape, num_classes, activation, rngs, **options)

MODELS: dict[str, ModelBuilder] = {
    "learn_to_see": LearnToSee,
    "learn_to_see_strided": functools.partial(LearnToSee, downsample="stride"),
    "keras_fashion": functools.partial(TwoConvNet, channels=(32, 64), hidden=64),
    "tiny_cnn": functools.partial(TwoConvNet, channels=(8, 16), hidden=None),
    "vgg_bn": VGGBN,
    "resnet8": SmallResNet,
}


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options (`padding`, `downsample`, ...) the builder of model `name` accepts."""
    fixed = {"input_shape", "num_classes", "activation", "rngs"}
    builder = MODELS[name]
    bound = set(builder.keywords) if isinstance(builder, functools.partial) else set()
    func = builder.func if isinstance(builder, functools.partial) else builder
    params = inspect.signature(func.__init__ if isinstance(func, type) else func).parameters  # NNX hides a class's
    fixed.add("self")
    return tuple(p for p in params if p not in fixed and p not in bound
                 and params[p].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def build_model(name: str, input_shape: Sequence[int], num_classes: int, activation: str, seed: int,
                options: dict[str, Any] | None = None) -> nnx.Module:
    """Builds the model called `name` with `options` (keywords of its builder); raises ValueError listing the
    valid names, or the options the model takes, otherwise.

    The parameters are drawn by one jitted program compiled at XLA's backend optimisation level 0. Built
    eagerly, every initialiser call of a new shape compiles its own threefry program at full optimisation,
    about 2 s each on a 2-core CPU (learn_to_see: 16 s in all, against 1.6 s this way). The random bits are
    the same either way; normal draws can differ in the last bit (erfinv evaluated with other rounding).
    A constructor that cannot be traced (it reads concrete values) is run eagerly instead.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(MODELS))}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(model_options(name)))
    if unknown:
        takes = ", ".join(model_options(name)) or "none"
        raise ValueError(f"model {name!r} has no option {', '.join(unknown)} (its options: {takes})")

    def create() -> nnx.Module:
        return MODELS[name](tuple(input_shape), num_classes, activation, nnx.Rngs(params=seed, dropout=seed), **options)

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
