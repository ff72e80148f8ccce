"""The typed, frozen configuration of one recorded run, and `key=value` overrides for the CLI."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from recorder.activations import ACTIVATIONS
from recorder.analysis import ANALYSIS_IMAGES
from recorder.augment import AUGMENTATIONS
from recorder.capture import CaptureError, parse_channels
from recorder.data import DATASETS
from recorder.fastconv import CONV_IMPLS
from recorder.models import MODELS
from recorder.schedule import parse_schedule
from recorder.train import LR_SCHEDULES
from runfile.schema import COMPRESSIONS, KERNEL_CHOICES

OPTIMIZERS = ("adam", "sgd")
ON_NONFINITE = ("stop", "continue")
# what `emergence resume --set` may change: keys that do not change what the steps already recorded mean
RESUMABLE_KEYS = ("epochs", "steps", "checkpoint_every", "on_nonfinite", "conv_impl", "devices", "checksums")
CHECKSUM_PLACES = ("auto", "device", "host")  # recorder/fletcher.py
DTYPES = ("float16", "float32")
PADDINGS = ("default", "same", "valid")  # default: the model's own
DOWNSAMPLES = ("default", "pool", "stride")
HEADS = ("default", "flatten", "gap")


class ConfigError(ValueError):
    """A configuration value or override is invalid; the message lists the valid options."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run: model, data, optimiser, schedule and storage. Saved in full inside the run file."""

    experiment: str = "custom"
    model: str = "learn_to_see"
    activation: str = "tanh"  # the conv nonlinearity; recorded values come after it
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    synthetic_size: int = 4096  # training images of the `synthetic` dataset (test: a quarter)
    train_size: int = 0  # > 0: train on this many training images only (class-balanced, the first of each class)
    optimizer: str = "adam"  # adam | sgd (with momentum)
    learning_rate: float = 1e-3
    momentum: float = 0.9  # sgd only
    lr_schedule: str = "constant"  # constant | cosine (to 0 over the run) | step (x0.1 at 1/2 and 3/4 of the run)
    weight_decay: float = 0.0  # L2 on kernels: weight_decay * W added to their gradients
    batch_size: int = 1024
    epochs: int = 5
    steps: int = 0  # > 0: train exactly this many updates instead of `epochs`
    seed: int = 0  # model init and the per-epoch shuffles
    probes: tuple[int, ...] = ()  # test-set indices of the probe images; empty = one per class
    schedule: str = "every"  # frames: every | every:K | log:N
    dtype: str = "float16"  # stored activations
    compression: str = "gzip"  # none | gzip | lzf | zstd (needs hdf5plugin, also to read)
    kernels: str = "first"  # record the kernel of the first tapped layer, all, or none
    eval_every: int = 50  # steps between held-out evaluations; 0 = only at the end
    eval_size: int = 1000  # held-out images (the first ones of the test split)
    analysis_probes: int = ANALYSIS_IMAGES  # held-out images for similarity statistics (recorder/analysis.py); 0 = none
    checkpoint_every: int = 100  # steps between checkpoints (RUN.ckpt/, for `emergence resume`); 0 = only at stops
    on_nonfinite: str = "stop"  # a NaN/Inf loss, gradient or activation: stop (status diverged) | continue
    padding: str = "default"  # conv padding of models that take it: default (the model's own) | same | valid
    downsample: str = "default"  # learn_to_see: default | pool (2x2 max-pool) | stride (stride-2 convs instead)
    init_from: str | None = None  # start from weights: RUN.h5 (its final), RUN.h5@STEP, FILE.npz, FILE.msgpack
    freeze: tuple[str, ...] = ()  # layers kept fixed: tap names (conv1) or module paths (dense1, blocks/0)
    dropout: float | None = None  # dropout rate before the dense layers; None: the model's own (0 but vgg_bn)
    head: str = "default"  # the conv-to-dense transition: default (the model's own) | flatten | gap (global average)
    augment: tuple[str, ...] = ()  # on-device augmentation of training batches: shift, flip (recorder/augment.py)
    devices: int = 1  # data-parallel over this many devices (a 1-D mesh; recorder/parallel.py)
    conv_impl: str = "auto"  # auto (CPU speed paths on the CPU backend only) | xla | banded (recorder/fastconv.py)
    channels: str = ""  # record only these channels of wider layers: "0:16" or "0,3,5" (analysis uses all)
    budget_mb: float = 0.0  # > 0: the densest frame schedule whose file fits this many MB (replaces schedule)
    snapshots: int = 0  # weights stored at this many log-spaced steps (>= 2); 0: step 0 and the last only
    block_steps: int = 0  # steps per dispatch at most (recorder/blocks.py); 0: as many frames as fit 32 MB, <= 64
    checksums: str = "auto"  # where uncompressed frames' Fletcher-32 is computed: auto (the device beside a GPU) | device | host

    def validate(self) -> "RunConfig":
        """Raises ConfigError naming the bad field and the valid options; returns self."""
        choices = {
            "model": tuple(sorted(MODELS)), "activation": tuple(sorted(ACTIVATIONS)), "dataset": DATASETS,
            "optimizer": OPTIMIZERS, "dtype": DTYPES, "compression": COMPRESSIONS, "kernels": KERNEL_CHOICES,
            "on_nonfinite": ON_NONFINITE, "padding": PADDINGS, "downsample": DOWNSAMPLES,
            "lr_schedule": LR_SCHEDULES, "head": HEADS, "conv_impl": CONV_IMPLS, "checksums": CHECKSUM_PLACES,
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"unknown {key} {getattr(self, key)!r}; expected one of: {', '.join(valid)}")
        for key in ("batch_size", "synthetic_size", "eval_size", "devices"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("epochs", "steps", "eval_every", "analysis_probes", "checkpoint_every", "train_size", "block_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if 0 < self.analysis_probes < 4:
            raise ConfigError(f"analysis_probes must be 0 (off) or >= 4 (the debiased estimator needs n > 3), got {self.analysis_probes}")
        if self.steps == 0 and self.epochs == 0:
            raise ConfigError("nothing to train: set epochs >= 1 or steps >= 1")
        for kind in self.augment:
            if kind not in AUGMENTATIONS:
                raise ConfigError(f"unknown augmentation {kind!r}; expected any of: {', '.join(AUGMENTATIONS)}")
        if self.snapshots < 0 or self.snapshots == 1:
            raise ConfigError(f"snapshots must be 0 (the first and last step only) or >= 2, got {self.snapshots}")
        if self.channels:
            try:
                parse_channels(self.channels)
            except CaptureError as e:
                raise ConfigError(str(e)) from None
        if not self.budget_mb >= 0:
            raise ConfigError(f"budget_mb must be >= 0 (0: no budget), got {self.budget_mb}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) (the fraction of units dropped), got {self.dropout}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        try:
            parse_schedule(self.schedule)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self

    def model_options(self) -> dict[str, str]:
        """The builder options this config sets (recorder/models.py), "default" ones left out."""
        out = {k: getattr(self, k) for k in ("padding", "downsample", "head") if getattr(self, k) != "default"}
        return out | ({"dropout": self.dropout} if self.dropout is not None else {})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def override_keys() -> list[str]:
    """The keys `--set key=value` accepts: every field of RunConfig but the experiment's name."""
    return [f.name for f in dataclasses.fields(RunConfig) if f.name != "experiment"]


def _coerce(key: str, text: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):  # `str | None`
        if text.lower() in ("none", "null", ""):
            return None
        return _coerce(key, text, next(a for a in args if a is not type(None)))
    if origin is tuple:
        items = [t for t in text.replace(" ", "").split(",") if t]
        return tuple(_coerce(key, t, args[0]) for t in items)
    if annotation is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {text!r}")
    try:
        return annotation(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a value of type {annotation.__name__}, got {text!r}") from None


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Applies `key=value` strings; unknown keys raise ConfigError listing the valid keys."""
    types_ = _field_types()
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in override_keys():
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(override_keys())}")
        changes[key] = _coerce(key, value.strip(), types_[key])
    return dataclasses.replace(config, **changes).validate()


def config_from_json(text: str) -> RunConfig:
    data = json.loads(text)
    data["probes"] = tuple(data.get("probes", ()))
    data["freeze"] = tuple(data.get("freeze", ()))
    data["augment"] = tuple(data.get("augment", ()))
    return RunConfig(**data)
