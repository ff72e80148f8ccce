"""One function per experiment; each docstring gives the command and the expected runtime.

Runtimes are for the 2-core CPU machine this project is developed on.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from recorder.config import ConfigError, RunConfig


def learn_to_see() -> RunConfig:
    """The "learn to see" tanh CNN: six 3x3 convs (4-4-8-8-16-16), Adam, batch 1024, 5 epochs.

    58 steps/epoch on 60,000 images (remainder dropped) = 290 updates, 291 frames (steps 0..290) of every
    conv layer on one probe per class. The reference used MNIST (`--set dataset=mnist` uses its probe
    indices); the default here is Fashion-MNIST, which ships with Debian and works offline. The weights are
    stored at 32 log-spaced steps (7.3 MB), for the per-channel measures, linear probes and `replay --maximise`.

        emergence record learn_to_see            # about 3 minutes on 2 CPU cores
    """
    return RunConfig(experiment="learn_to_see", model="learn_to_see", activation="tanh", dataset="fashion_mnist",
                     batch_size=1024, epochs=5, learning_rate=1e-3, eval_every=29, snapshots=32)


def keras_fashion() -> RunConfig:
    """The Keras Fashion-MNIST CNN (Conv32-pool-Conv64-pool-Dense64), relu, Adam, batch 64, 5 epochs.

    937 steps/epoch, 4,685 updates; about 0.91 test accuracy. Frames are log-spaced (300) by default
    because every step would be ~2.7 GB: `--set schedule=every` records them all.

        emergence record keras_fashion           # a few minutes on 2 CPU cores
    """
    return RunConfig(experiment="keras_fashion", model="keras_fashion", activation="relu", dataset="fashion_mnist",
                     batch_size=64, epochs=5, learning_rate=1e-3, schedule="log:300", eval_every=250)


def strided() -> RunConfig:
    """learn_to_see with stride-2 convolutions instead of max-pooling (conv2 and conv4 downsample themselves):
    the CNN article's "stride instead of pooling", otherwise identical (same seed, data, schedule).

        emergence record strided                 # about 3 minutes on 2 CPU cores
    """
    return dataclasses.replace(learn_to_see(), experiment="strided", model="learn_to_see_strided")


def vgg_bn() -> RunConfig:
    """A small VGG-style net with BatchNorm and Dropout (16-16, 32-32, 64-64 convs, each conv -> BN -> relu,
    pool after each pair; Dense 128, Dropout 0.5), Adam 1e-3, batch 128, 3 epochs (1,404 updates), 300
    log-spaced frames. Frames and evaluations use the running statistics and no dropout.

        emergence record vgg_bn                  # about 10 minutes on 2 CPU cores
    """
    return RunConfig(experiment="vgg_bn", model="vgg_bn", activation="relu", dataset="fashion_mnist",
                     batch_size=128, epochs=3, learning_rate=1e-3, schedule="log:300", eval_every=117)


def resnet8() -> RunConfig:
    """A small ResNet (conv stem, three residual blocks of 16, 32, 64 channels with BatchNorm, global average
    pooling), tapped after each block's addition and nonlinearity; Adam 1e-3, batch 128, 3 epochs, 300
    log-spaced frames. Made for 32x32 inputs (`--set dataset=cifar10`); runs on 28x28 as well.

        emergence record resnet8                 # about 10 minutes on 2 CPU cores
    """
    return RunConfig(experiment="resnet8", model="resnet8", activation="relu", dataset="fashion_mnist",
                     batch_size=128, epochs=3, learning_rate=1e-3, schedule="log:300", eval_every=117)


def cifar10_vgg() -> RunConfig:
    """vgg_bn on CIFAR-10 with a global-average-pooling head, random shifts and flips, Adam 1e-3, batch 128,
    10 epochs (3,900 updates), 300 log-spaced frames of the first 16 channels of each layer (the 32- and
    64-channel layers' analysis statistics still use all channels). CIFAR-10 (binary version) is downloaded on
    first use and cached (~170 MB).

        emergence record cifar10_vgg             # about an hour on 2 CPU cores
    """
    return dataclasses.replace(vgg_bn(), experiment="cifar10_vgg", dataset="cifar10", head="gap", epochs=10,
                               augment=("shift", "flip"), eval_every=390, channels="0:16")


def tiny() -> RunConfig:
    """A tiny CNN on the procedural `synthetic` dataset: runs anywhere in seconds, no data needed.

        emergence record tiny                    # ~10 seconds
    """
    return RunConfig(experiment="tiny", model="tiny_cnn", activation="tanh", dataset="synthetic",
                     synthetic_size=2048, batch_size=64, epochs=2, learning_rate=3e-3, eval_every=16)


EXPERIMENTS: dict[str, Callable[[], RunConfig]] = {
    "learn_to_see": learn_to_see,
    "keras_fashion": keras_fashion,
    "strided": strided,
    "vgg_bn": vgg_bn,
    "resnet8": resnet8,
    "cifar10_vgg": cifar10_vgg,
    "tiny": tiny,
}


# experiments that record several runs and compare them: name -> what they record (experiments/NAME.py)
PROGRAMS = {
    "relu_vs_tanh": "learn_to_see with tanh and with relu, same seed, then compared",
    "optimizers": "learn_to_see with Adam and with SGD + momentum, then compared",
    "overfitting": "keras_fashion on 1,000 images, plain and regularised, then compared",
    "transfer": "learn_to_see on a source, fine-tuned on a target three ways, then reported",
}


def get_experiment(name: str) -> RunConfig:
    """The config of experiment `name`; raises ConfigError listing the valid names otherwise."""
    if name in PROGRAMS:
        raise ConfigError(f"{name} records several runs ({PROGRAMS[name]}): run it as `emergence record {name}`; "
                          f"a single-run experiment is one of: {', '.join(EXPERIMENTS)}")
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; expected one of: {', '.join(EXPERIMENTS)} (or, recording "
                          f"several runs, {', '.join(PROGRAMS)})")
    return EXPERIMENTS[name]()
