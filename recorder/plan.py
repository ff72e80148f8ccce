"""A run's plan: config -> data, model, compiled steps, capture, probes; and the data order (a pure function of
seed and step)."""

from __future__ import annotations

import dataclasses
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recorder import fastconv
from recorder.analysis import choose_analysis_probes
from recorder.blocks import block_size
from recorder.capture import Capture, CaptureError
from recorder.config import ConfigError, RunConfig
from recorder.data import Dataset, load_dataset
from recorder.models import build_model
from recorder.parallel import Placement, data_placement, is_primary
from recorder.probes import choose_probes
from recorder.recorder import Probes, Recorder
from recorder.train import StepFunctions, TrainState, learning_rate_schedule, make_optimizer, make_step_functions
from recorder.transfer import freezing, frozen_paths, initialise
from recorder.weights import WeightsError


WRITER = "emergence record"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "h5py", "numpy", "emergence"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["backend"] = jax.default_backend()
    out["device"] = str(jax.devices()[0].device_kind)
    return out


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of epoch `epoch`: a pure function of (seed, epoch), so runs are reproducible."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def training_subset(dataset: Dataset, n: int) -> Dataset:
    """`dataset` with only `n` training images: round-robin over the classes in split order (the first of each
    class), in split order; the test split is untouched."""
    if n > len(dataset.train_labels):
        raise ConfigError(f"train_size={n} but {dataset.name} has {len(dataset.train_labels)} training images")
    idx = choose_analysis_probes(dataset.train_labels, n, len(dataset.class_names))
    return dataclasses.replace(dataset, train_images=dataset.train_images[idx], train_labels=dataset.train_labels[idx])


def steps_of(config: RunConfig, dataset: Dataset) -> tuple[int, int]:
    """(steps per epoch, total steps). The remainder batch of each epoch is dropped."""
    per_epoch = len(dataset.train_labels) // config.batch_size
    if per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(dataset.train_labels)} training images of "
            f"{dataset.name}; lower batch_size"
        )
    return per_epoch, config.steps or config.epochs * per_epoch


@dataclasses.dataclass
class RunPlan:
    """Everything decided before the first step: data, model, compiled steps, what is recorded."""

    config: RunConfig
    dataset: Dataset
    capture: Capture
    fns: StepFunctions
    per_epoch: int
    total: int
    probe_idx: np.ndarray  # test-split indices of the picture probes
    analysis_idx: np.ndarray | None  # test-split indices of the analysis images, or None
    eval_count: int
    placement: Placement = dataclasses.field(default_factory=lambda: Placement(None))
    init_note: str = ""  # what init_from did, in words
    learning_rates: np.ndarray | None = None  # [total] the rate of each update under a schedule (logged), else None
    block_steps: int = 1  # K: the most steps one dispatch runs (recorder/blocks.py)

    def probes(self) -> Probes:
        d = self.dataset
        return Probes.select(d.test_images, d.test_labels, self.probe_idx, tuple(d.class_names), d.name)

    def analysis(self) -> Probes | None:
        d = self.dataset
        return None if self.analysis_idx is None else Probes.select(d.test_images, d.test_labels, self.analysis_idx,
                                                                    tuple(d.class_names), d.name)

    def recorder(self, path: str | Path, overwrite: bool = False, **kwargs: Any) -> Recorder:
        """The built-in loop's `Recorder` for this plan. Its writer deflates on threads, not processes, where it
        has several: the loop's thread runs Python for about a millisecond per block (recorder/blocks.py) and
        otherwise waits for the device without the GIL, so threads lose nothing to it and spare the writer's
        thread the copies into and out of the processes (benchmarks/README.md, "Encoding in processes of
        their own": alone, 560 against 509 recorded steps a second and 3.1 against 4.5 ms of CPU a step)."""
        c = self.config
        kwargs.setdefault("encode_processes", False)
        return Recorder(path, self.probes(), self.capture, planned_steps=self.total, schedule=c.schedule,
                        analysis=self.analysis(), config=json_config(c), experiment=c.experiment,
                        activation=c.activation, compression=c.compression, eval_count=self.eval_count,
                        data_origin=self.dataset.origin, overwrite=overwrite, versions=versions(), writer=WRITER,
                        weights=self.weights(self.fns.init_state), initialised_from=self.init_note,
                        write_file=is_primary(), **kwargs)

    @staticmethod
    def weights(state: TrainState) -> tuple[Any, Any]:
        """What the run file's /weights stores of a training state: parameters and running statistics."""
        return state.params, state.model_state


def json_config(config: RunConfig) -> dict[str, Any]:
    return json.loads(config.to_json())


def frame_bytes(layers: Sequence[Any], probes: int, dtype: str, num_classes: int) -> int:
    """Bytes of one frame before compression: every layer's activations on the probes (`layers`: anything
    with `shape` and `kernel_shape`, a capture's or a layout's), the recorded kernels, the logits, the step."""
    item = np.dtype(dtype).itemsize
    out = sum(probes * int(np.prod(l.shape)) * item for l in layers)
    out += sum(4 * int(np.prod(l.kernel_shape)) for l in layers if l.kernel_shape)
    return out + 4 * probes * max(num_classes, 0) + 16


def make_plan(config: RunConfig, log: Callable[[str], None] = lambda s: None) -> RunPlan:
    """Validates `config`, loads the data, builds and compiles-to-be the model's steps."""
    config.validate()
    fastconv.set_conv_impl(config.conv_impl)
    dataset = load_dataset(config.dataset, config.data_dir, config.synthetic_size)
    if config.train_size:
        dataset = training_subset(dataset, config.train_size)
        log(f"training on {config.train_size} of the {dataset.name} training images (class-balanced subset)")
    per_epoch, total = steps_of(config, dataset)
    try:
        placement = data_placement(config.devices, config.batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if placement.mesh is not None:
        log(f"data-parallel: {placement.describe()}")
    probe_idx = choose_probes(dataset, config.probes)
    try:
        model = build_model(config.model, dataset.input_shape, len(dataset.class_names), config.activation,
                            config.seed, config.model_options())
    except ValueError as e:
        raise ConfigError(str(e)) from None
    capture = Capture.nnx(model, np.zeros((1, *dataset.input_shape), np.float32), kernels=config.kernels,
                          dtype=config.dtype)
    if not capture.summary["taps"]:
        raise ConfigError(f"model {config.model!r} marks no layer with tap(); nothing would be recorded")
    if config.channels:
        try:
            capture.with_channels(config.channels)
        except CaptureError as e:
            raise ConfigError(str(e)) from None
    init_note = ""
    if config.init_from:
        try:
            init_note = initialise(model, config.init_from, capture.summary)
        except WeightsError as e:
            raise ConfigError(str(e)) from None
        log(init_note)
    try:
        frozen = frozen_paths(config.freeze, capture.summary)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if frozen:
        log(f"frozen (no updates, inference mode): {', '.join(frozen)}")
    lr = learning_rate_schedule(config.learning_rate, config.lr_schedule, total)
    learning_rates = None if config.lr_schedule == "constant" else np.asarray(jax.vmap(lr)(jnp.arange(total)))
    tx = make_optimizer(config.optimizer, lr, config.momentum, config.weight_decay)
    measured = {t["name"]: t["module"] for t in capture.summary["taps"] if t.get("module")}
    fns = make_step_functions(model, freezing(tx, nnx.state(model, nnx.Param), frozen), capture, frozen,
                              config.augment, config.seed, measured, placement.batch_sharding)
    analysis_idx = None
    if config.analysis_probes:
        n = min(config.analysis_probes, len(dataset.test_labels))
        if n < config.analysis_probes:
            log(f"note: analysis_probes={config.analysis_probes} but the {dataset.name} test split has {n} images; "
                f"analysing all {n}")
        analysis_idx = choose_analysis_probes(dataset.test_labels, n, len(dataset.class_names))
    block = block_size(frame_bytes(capture.layers, len(probe_idx), config.dtype, capture.num_classes),
                       config.block_steps, jax.default_backend())
    return RunPlan(config, dataset, capture, fns, per_epoch, total, probe_idx, analysis_idx,
                   min(config.eval_size, len(dataset.test_labels)), placement, init_note, learning_rates, block)
