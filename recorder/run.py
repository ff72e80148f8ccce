"""`emergence record`: config -> a plan (data, model, compiled steps, capture) -> the public `Recorder` -> the loop.

The loop (`TrainingLoop`) is the recorder API's first client: it calls `Recorder.write` with the frames its
own jitted steps capture, exactly as a user's loop does. The host touches device values at one boundary
only, the writer thread; the loop dispatches steps without waiting, paced by the writer's bounded queue.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from recorder.analysis import choose_analysis_probes
from recorder.capture import Capture
from recorder.config import ConfigError, RunConfig
from recorder.data import Dataset, load_dataset
from recorder.models import build_model
from recorder.probes import choose_probes
from recorder.progress import Progress
from recorder.recorder import Probes, Recorder
from recorder.summary import format_summary
from recorder.train import StepFunctions, evaluate, make_optimizer, make_step_functions, to_inputs

LARGE_FILE_BYTES = 2 * 1024**3
WRITER = "emergence record"


@dataclasses.dataclass(frozen=True)
class RunResult:
    path: Path
    steps: int
    frames: int
    test_loss: float
    test_accuracy: float
    seconds: float
    traces: dict[str, int]  # how often each jitted function was traced (compiled): 1 each is the goal


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

    def probes(self) -> Probes:
        d = self.dataset
        return Probes.select(d.test_images, d.test_labels, self.probe_idx, tuple(d.class_names), d.name)

    def analysis(self) -> Probes | None:
        d = self.dataset
        return None if self.analysis_idx is None else Probes.select(d.test_images, d.test_labels, self.analysis_idx,
                                                                    tuple(d.class_names), d.name)

    def recorder(self, path: str | Path, overwrite: bool = False, **kwargs: Any) -> Recorder:
        c = self.config
        return Recorder(path, self.probes(), self.capture, planned_steps=self.total, schedule=c.schedule,
                        analysis=self.analysis(), config=json_config(c), experiment=c.experiment,
                        activation=c.activation, compression=c.compression, eval_count=self.eval_count,
                        data_origin=self.dataset.origin, overwrite=overwrite, versions=versions(), writer=WRITER,
                        **kwargs)


def json_config(config: RunConfig) -> dict[str, Any]:
    return json.loads(config.to_json())


def make_plan(config: RunConfig, log: Callable[[str], None] = lambda s: None) -> RunPlan:
    """Validates `config`, loads the data, builds and compiles-to-be the model's steps."""
    config.validate()
    dataset = load_dataset(config.dataset, config.data_dir, config.synthetic_size)
    per_epoch, total = steps_of(config, dataset)
    probe_idx = choose_probes(dataset, config.probes)
    model = build_model(config.model, dataset.input_shape, len(dataset.class_names), config.activation, config.seed)
    capture = Capture.nnx(model, np.zeros((1, *dataset.input_shape), np.float32), kernels=config.kernels,
                          dtype=config.dtype)
    if not capture.summary["taps"]:
        raise ConfigError(f"model {config.model!r} marks no layer with tap(); nothing would be recorded")
    fns = make_step_functions(model, make_optimizer(config.optimizer, config.learning_rate, config.momentum), capture)
    analysis_idx = None
    if config.analysis_probes:
        n = min(config.analysis_probes, len(dataset.test_labels))
        if n < config.analysis_probes:
            log(f"note: analysis_probes={config.analysis_probes} but the {dataset.name} test split has {n} images; "
                f"analysing all {n}")
        analysis_idx = choose_analysis_probes(dataset.test_labels, n, len(dataset.class_names))
    return RunPlan(config, dataset, capture, fns, per_epoch, total, probe_idx, analysis_idx,
                   min(config.eval_size, len(dataset.test_labels)))


def projected_bytes(rec: Recorder) -> int:
    """An upper bound of the run file's size before compression."""
    layout = rec.layout
    p = len(layout.probe_labels)
    item = np.dtype(layout.dtype).itemsize
    frame = sum(p * int(np.prod(s.shape)) * item for s in layout.layers)
    frame += sum(4 * int(np.prod(s.kernel_shape)) for s in layout.layers if s.kernel_shape)
    frame += 4 * p * layout.num_classes + 16
    total = len(rec.frame_steps) * frame
    if layout.analysis is not None:
        n = len(layout.analysis.indices)
        total += len(rec.analysis_steps) * len(layout.layers) * 4 * (n * (n + 1) // 2 + len(layout.analysis.stat_names))
    return total


class TrainingLoop:
    """The built-in loop over a plan, advanced with `run(until)`. With a `Recorder` it records on the
    recorder's schedule; without one it only trains (`frames=True` still computes the frames, and drops
    them: what the benchmarks use to separate the probe forward from the writer). `evaluate=False` skips
    the held-out evaluations (benchmarks compare training with and without recording)."""

    def __init__(self, plan: RunPlan, rec: Recorder | None, frames: bool = False, evaluate: bool = True):
        self.plan, self.rec, self.frames, self.evaluate = plan, rec, frames, evaluate
        d, fns = plan.dataset, plan.fns
        self.train_x = jax.device_put(d.train_images)  # uint8 on the device; batches are gathered there
        self.train_y = jax.device_put(d.train_labels.astype(np.int32))
        self.test_x = jax.device_put(d.test_images)
        self.test_y = jax.device_put(d.test_labels.astype(np.int32))
        self.probe_x = to_inputs(jax.device_put(d.test_images[plan.probe_idx]))
        self.analysis_x = None if plan.analysis_idx is None else to_inputs(jax.device_put(d.test_images[plan.analysis_idx]))
        self.state = jax.tree.map(jnp.copy, fns.init_state)  # its own copy: the steps donate the state they get
        self.step = 0
        self._perm = epoch_permutation(plan.config.seed, 0, len(d.train_labels))

    def start(self) -> None:
        """Step 0: the initial model's frame."""
        if self.rec is not None:
            analysis_x = self.analysis_x if self.rec.should_analyse(0) else None
            self.rec.write(0, self.plan.fns.probe_frame(self.state.params, self.state.model_state, self.probe_x, analysis_x))

    def run(self, until: int, progress: Progress | None = None) -> None:
        """Trains (and records) steps step+1 .. until."""
        plan, fns, rec, c = self.plan, self.plan.fns, self.rec, self.plan.config
        data = (self.train_x, self.train_y)
        for step in range(self.step + 1, until + 1):
            epoch, i = divmod(step - 1, plan.per_epoch)
            if i == 0 and epoch > 0:
                self._perm = epoch_permutation(c.seed, epoch, len(plan.dataset.train_labels))
            idx = self._perm[i * c.batch_size:(i + 1) * c.batch_size]  # [B] int32, copied in at dispatch
            frame = None
            if rec is not None and rec.should_analyse(step):  # three executables, each compiled once
                self.state, metrics, frame = fns.analysed_step(self.state, *data, idx, self.probe_x, self.analysis_x)
            elif (rec is not None and rec.should_record(step)) or (rec is None and self.frames):
                self.state, metrics, frame = fns.recorded_step(self.state, *data, idx, self.probe_x)
            else:
                self.state, metrics = fns.train_step(self.state, *data, idx)
            self.step = step
            if rec is None:
                continue
            rec.write(step, frame, metrics)
            if self.evaluate and (c.eval_every and step % c.eval_every == 0 or step == plan.total):
                loss, acc = evaluate(fns, self.state, self.test_x[:plan.eval_count], self.test_y[:plan.eval_count])
                rec.log_eval(step, loss=loss, accuracy=acc)
            if progress is not None:
                latest = rec.latest_train
                progress.update(latest.get("step", 0), latest.get("loss"), latest.get("accuracy"))

    def test(self) -> tuple[float, float]:
        """The full test split (syncs: the end of the run)."""
        loss, acc = (float(v) for v in evaluate(self.plan.fns, self.state, self.test_x, self.test_y))
        if self.rec is not None:
            self.rec.log_test(loss=loss, accuracy=acc, count=len(self.plan.dataset.test_labels))
        return loss, acc


def record(
    config: RunConfig,
    path: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> RunResult:
    """Trains `config` and records it to `path` (HDF5, see docs/run_schema.md)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, or pick another --name")
    plan = make_plan(config, log)
    d = plan.dataset
    log(format_summary(plan.capture.summary))
    rec = plan.recorder(path, overwrite=overwrite)
    with rec:
        log(f"{config.experiment}: {config.model} ({config.activation}) on {d.name} [{d.origin}], {plan.total} steps "
            f"({plan.per_epoch}/epoch, batch {config.batch_size}), {len(rec.frame_steps)} frames ({config.schedule}) "
            f"on {len(plan.probe_idx)} probes -> {path}")
        if plan.analysis_idx is not None:
            log(f"analysis: {len(plan.analysis_idx)} held-out test images at {len(rec.analysis_steps)} steps (centred "
                "Grams and activity statistics per layer, float32)")
        projected = projected_bytes(rec)
        log(f"projected file size: at most {projected / 1e6:.1f} MB before compression ({config.dtype})")
        if projected > LARGE_FILE_BYTES:
            log(f"warning: this run will write up to {projected / 1e9:.1f} GB; consider --set schedule=log:300 "
                "or schedule=every:K, or fewer probes")
        t0 = time.perf_counter()
        loop = TrainingLoop(plan, rec)
        progress = Progress(plan.total, enabled=show_progress)
        try:
            loop.start()
            loop.run(plan.total, progress)
            test_loss, test_acc = loop.test()
            rec.wait()
            latest = rec.latest_train
            progress.update(plan.total, latest.get("loss"), latest.get("accuracy"), force=True)
        finally:
            progress.close()
    seconds = time.perf_counter() - t0
    log(f"done: {plan.total} steps, {len(rec.frame_steps)} frames in {seconds:.1f} s; test accuracy {test_acc:.4f} "
        f"(loss {test_loss:.4f}, {len(d.test_labels)} images) -> {path}")
    return RunResult(path, plan.total, len(rec.frame_steps), test_loss, test_acc, seconds, dict(plan.fns.traces))
