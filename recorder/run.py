"""`emergence record`: config -> a plan (data, model, compiled steps, capture) -> the public `Recorder` -> the loop.

The loop (`TrainingLoop`) is the recorder API's first client: it calls `Recorder.write` with the frames its
own jitted steps capture, exactly as a user's loop does. The host touches device values at one boundary
only, the writer thread; the loop dispatches steps without waiting, paced by the writer's bounded queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recorder import fastconv
from recorder.analysis import ANALYSIS_FRAMES, STAT_NAMES, choose_analysis_probes
from recorder.blocks import ANALYSE, BLOCK_SECONDS, FRAME, TRAIN, Block, BlockStep, block_size
from recorder.capture import Capture, CaptureError
from recorder.checkpoints import Checkpoints, checkpoint_dir
from recorder.config import RESUMABLE_KEYS, ConfigError, RunConfig, apply_overrides, config_from_json
from recorder.data import Dataset, load_dataset
from recorder.models import build_model
from recorder.parallel import (SYNC_EVERY, Placement, barrier, data_placement, gather, from_primary, host, is_primary,
                               processes)
from recorder.probes import choose_probes
from recorder.progress import Progress
from recorder.recorder import Probes, Recorder, RecorderError
from recorder.schedule import recorded_steps, snapshot_steps
from recorder.summary import format_summary
from recorder.timing import Phases, process_age
from recorder.transfer import freezing, frozen_paths, initialise
from recorder.weights import WeightsError, weight_specs
from recorder.writer import WeightSpec, room
from recorder.train import (EVAL_CHUNK, StepFunctions, TrainState, evaluate, learning_rate_schedule, make_optimizer,
                            make_step_functions, to_inputs)

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
        c = self.config
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


def frame_bytes(layers: Sequence[Any], probes: int, dtype: str, num_classes: int) -> int:
    """Bytes of one frame before compression: every layer's activations on the probes (`layers`: anything
    with `shape` and `kernel_shape`, a capture's or a layout's), the recorded kernels, the logits, the step."""
    item = np.dtype(dtype).itemsize
    out = sum(probes * int(np.prod(l.shape)) * item for l in layers)
    out += sum(4 * int(np.prod(l.kernel_shape)) for l in layers if l.kernel_shape)
    return out + 4 * probes * max(num_classes, 0) + 16


def weight_bytes(specs: Sequence[WeightSpec]) -> int:
    """Bytes of one stored copy of the weights (float32)."""
    return sum(4 * int(np.prod(s.shape)) for s in specs)


def projected_bytes(rec: Recorder, weight_rows: int = 2) -> int:
    """An upper bound of the run file's size before compression (`weight_rows`: steps with stored weights)."""
    layout = rec.layout
    frame = frame_bytes(layout.layers, len(layout.probe_labels), layout.dtype, layout.num_classes)
    total = len(rec.frame_steps) * frame + weight_rows * weight_bytes(layout.weights)
    if layout.analysis is not None:
        n = len(layout.analysis.indices)
        total += len(rec.analysis_steps) * len(layout.layers) * 4 * (n * (n + 1) // 2 + len(layout.analysis.stat_names))
    return total


def _fitting(plan: RunPlan, free: float) -> str:
    """What to do when a run may not fit in `free` bytes, in words."""
    budget = int(free / 1e6 * 0.8)  # room for the checkpoints and HDF5's own metadata
    try:
        budget_schedule(plan, budget)
    except ConfigError:
        return "even two frames would not fit: free some space, or analyse fewer images (--set analysis_probes=32)"
    return f"--set budget_mb={budget} picks a frame schedule that fits"


def budget_schedule(plan: RunPlan, budget_mb: float) -> tuple[str, str]:
    """(schedule, explanation): the densest frame schedule whose run file fits `budget_mb` before compression:
    every step if that fits, else the most log-spaced frames (dense early, where features change fastest)
    that do. The analysis rows (at most ANALYSIS_FRAMES + 1) and the stored weights are counted first."""
    c, cap = plan.config, plan.capture
    frame = frame_bytes(cap.layers, len(plan.probe_idx), c.dtype, cap.num_classes)
    weights = weight_specs(RunPlan.weights(plan.fns.init_state))
    fixed = len(snapshot_steps(c.snapshots, plan.total)) * weight_bytes(weights)
    if plan.analysis_idx is not None:
        n = len(plan.analysis_idx)
        fixed += (ANALYSIS_FRAMES + 1) * len(cap.layers) * 4 * (n * (n + 1) // 2 + len(STAT_NAMES))
    budget = budget_mb * 1e6
    fits = int((budget - fixed) // frame)
    need = f"{frame / 1e6:.3f} MB a frame, {fixed / 1e6:.1f} MB of analysis and weights"
    if fits >= plan.total + 1:
        return "every", f"budget_mb={budget_mb:g}: every step fits ({plan.total + 1} frames, {need})"
    if fits < 2:
        raise ConfigError(f"budget_mb={budget_mb:g} is too small: {need}, so even 2 frames need "
                          f"{(fixed + 2 * frame) / 1e6:.1f} MB; raise it or record fewer probes")
    steps = recorded_steps(f"log:{fits}", plan.total)
    while len(steps) > fits:  # rounding of log-spaced steps never adds any, but be exact
        fits -= 1
        steps = recorded_steps(f"log:{fits}", plan.total)
    return f"log:{fits}", (f"budget_mb={budget_mb:g}: {len(steps)} log-spaced frames of {plan.total + 1} steps "
                           f"fit ({need}; at most {(fixed + len(steps) * frame) / 1e6:.1f} MB before compression)")


class TrainingLoop:
    """The built-in loop over a plan, advanced with `run(until)`. With a `Recorder` it records on the
    recorder's schedule; without one it only trains (`frames=True` still computes the frames, and drops
    them: what the benchmarks use to separate the probe forward from the writer). `evaluate=False` skips
    the held-out evaluations (benchmarks compare training with and without recording).

    With `checkpoints`, the state is checkpointed every `checkpoint_every` steps, each time once the run file
    holds every row up to that step. `run` returns early when `stop_requested` is set (a signal handler sets
    it) or, under on_nonfinite=stop, once the writer has seen a non-finite step."""

    def __init__(self, plan: RunPlan, rec: Recorder | None, frames: bool = False, evaluate: bool = True,
                 checkpoints: Checkpoints | None = None):
        self.plan, self.rec, self.frames, self.evaluate, self.checkpoints = plan, rec, frames, evaluate, checkpoints
        d, fns, put = plan.dataset, plan.fns, plan.placement.replicated
        self.train_x = put(d.train_images)  # uint8 on the device(s); batches are gathered there
        self.train_y = put(d.train_labels.astype(np.int32))
        self.test_x = put(d.test_images)
        self.test_y = put(d.test_labels.astype(np.int32))
        self.probe_x = to_inputs(put(d.test_images[plan.probe_idx]))
        self.analysis_x = None if plan.analysis_idx is None else to_inputs(put(d.test_images[plan.analysis_idx]))
        self.state = put(jax.tree.map(jnp.copy, fns.init_state))  # its own copy: the steps donate the state they get
        self.initial_params = put(jax.tree.map(jnp.copy, fns.init_state.params))  # W_0 of the per-layer measures
        self.snapshots = set(snapshot_steps(plan.config.snapshots, plan.total).tolist()) - {0, plan.total}
        self._snapshot_steps = np.asarray(sorted(self.snapshots), np.int64)
        self.data = (self.train_x, self.train_y, self.initial_params)
        self.blocks_probe_x = self.probe_x if rec is not None or frames else None
        self.blocks_analysis_x = self.analysis_x if rec is not None and len(rec.analysis_steps) else None
        self.blocks = BlockStep(fns.update, fns.frame_of, plan.block_steps, self.state, self.data,
                                plan.config.batch_size, self.blocks_probe_x, self.blocks_analysis_x)
        self.step = 0
        self.stop_requested: str | None = None
        self.stop_signal = 0  # the signal that set stop_requested, if one did
        self._perm = (-1, np.zeros(0, np.int32))  # (epoch, its shuffle)

    def restore(self, step: int, state: TrainState) -> None:
        """Continues from `state`, the state after update `step` (a checkpoint's), placed as this plan says."""
        self.state, self.step = self.plan.placement.replicated(state), step

    def _batch(self, step: int) -> np.ndarray:
        """Training-set indices of the batch of update `step` (the data order is a function of seed and step)."""
        c = self.plan.config
        epoch, i = divmod(step - 1, self.plan.per_epoch)
        if self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(c.seed, epoch, len(self.plan.dataset.train_labels)))
        return self._perm[1][i * c.batch_size:(i + 1) * c.batch_size]  # [B] int32, copied in at dispatch

    def compile(self) -> None:
        """Compiles the block, the step-0 frame and the evaluation before training, at once on threads
        (XLA compiles without holding the GIL), so that training starts with nothing left to compile."""
        fns, state = self.plan.fns, self.state
        plan = self.plan.placement.replicated(np.zeros((self.plan.block_steps, self.plan.config.batch_size + 4), np.int32))
        analysis_x = self.analysis_x if self.rec is not None and self.rec.should_analyse(0) else None
        chunk = np.zeros(EVAL_CHUNK, np.int32)  # every chunk has this shape (recorder/train.py `evaluate`)
        kinds = {TRAIN if self.rec is None and not self.frames else FRAME}
        if self.rec is not None:
            steps = range(self.step + 1, self.plan.total + 1)
            kinds = {self._kind(s) for s in steps} if len(steps) <= 10_000 else {TRAIN, FRAME, ANALYSE}
        jobs = [lambda v=v: self.blocks.compile(state, self.data, plan, self.blocks_probe_x, self.blocks_analysis_x, v)
                for v in self.blocks.variants(sorted(kinds))]
        if self.rec is not None:
            jobs.append(lambda: fns.probe_frame.lower(state.params, state.model_state, self.probe_x, analysis_x).compile())
            if self.evaluate:
                jobs.append(lambda: fns.eval_chunk.lower(state.params, state.model_state, self.test_x, self.test_y,
                                                         chunk, chunk > 0).compile())
        with ThreadPoolExecutor(len(jobs)) as pool:
            for job in [pool.submit(j) for j in jobs]:
                job.result()

    def start(self) -> None:
        """Step 0: the initial model's frame."""
        if self.rec is not None:
            analysis_x = self.analysis_x if self.rec.should_analyse(0) else None
            self.rec.write(0, self.plan.fns.probe_frame(self.state.params, self.state.model_state, self.probe_x, analysis_x))
            self.rec.write_weights(0, self.plan.weights(self.state))

    def diverged(self) -> bool:
        """Whether the writer has seen a non-finite step and the config says to stop there."""
        return self.rec is not None and self.rec.nonfinite_step is not None and self.plan.config.on_nonfinite == "stop"

    def _stop_wanted(self, unfinished: bool = False) -> bool:
        """A stop was asked for or the run diverged (or, with `unfinished`, it is short of the plan's end). With
        several processes they decide together, once each has written all it was given (the same rows on
        every process), so that all of them stop at the same step."""
        if processes() == 1:
            return bool(self.stop_requested) or self.diverged()
        if self.rec is not None:
            self.rec.wait()
        asked = (self.stop_signal or -1) if self.stop_requested else 0  # -1: asked for without a signal
        wanted = gather([asked, self.diverged(), unfinished and self.step < self.plan.total])
        if not self.stop_requested and wanted[:, 0].any():  # a stop asked of another process stops this one too
            rank = int(np.flatnonzero(wanted[:, 0])[0])
            code = int(wanted[rank, 0])
            self.stop_requested = f"{signal.Signals(code).name if code > 0 else 'a stop'} to process {rank}"
        return bool(wanted.any())

    def stopped_early(self) -> bool:
        """After `run`: whether it ended before the plan's end (all processes agree)."""
        return self._stop_wanted(unfinished=True)

    def should_stop(self, step: int) -> bool:
        """Whether to stop before update `step`; several processes decide only every SYNC_EVERY steps."""
        if processes() > 1 and (step - 1) % SYNC_EVERY:
            return False
        return self._stop_wanted()

    def run(self, until: int, progress: Progress | None = None) -> None:
        """Trains (and records) steps step+1 .. until, or fewer (see the class doc), a block at a time: the
        host acts (stops, evaluates, checkpoints, stores weights, updates the progress line) between blocks."""
        while self.step < until:
            if self.should_stop(self.step + 1):
                return
            first = self.step + 1
            last = min(first + self.block_length() - 1, until, self._next_event(first))
            self._run_block(first, last)
            self.step = last
            self._after_block(until, progress)

    def block_length(self) -> int:
        """Steps in the next block: about BLOCK_SECONDS of training at the pace the writer measures (one step
        until it has), at most K; K with several processes (their blocks must end at the same steps) or
        without a recorder."""
        k = self.plan.block_steps
        if self.rec is None or processes() > 1:
            return k
        per_step = self.rec.seconds_per_step
        return 1 if per_step is None else int(min(k, max(1, BLOCK_SECONDS // max(per_step, 1e-9))))

    def _next_event(self, first: int) -> int:
        """The first step >= `first` after which the host must act: an evaluation, a checkpoint, stored weights,
        the processes' agreement on stopping, or the plan's end."""
        c, rec = self.plan.config, self.rec
        periods = [c.eval_every if rec is not None and self.evaluate else 0,
                   c.checkpoint_every if self.checkpoints is not None and rec is not None else 0,
                   SYNC_EVERY if processes() > 1 else 0]
        out = [*([self.plan.total] if self.plan.total >= first else []), *(-(-first // p) * p for p in periods if p)]
        later = self._snapshot_steps[np.searchsorted(self._snapshot_steps, first):]
        return min(out + ([int(later[0])] if rec is not None and len(later) else []), default=first + self.plan.block_steps)

    def _kind(self, step: int) -> int:
        rec = self.rec
        if rec is None:
            return FRAME if self.frames else TRAIN
        return ANALYSE if rec.should_analyse(step) else FRAME if rec.should_record(step) else TRAIN

    def _run_block(self, first: int, last: int) -> None:
        """Dispatches steps first..last as one block and hands its results to the recorder (no wait)."""
        plan, rec = self.plan, self.rec
        steps = range(first, last + 1)
        kinds = [self._kind(s) for s in steps]
        host_plan = self.blocks.plan(steps, np.stack([self._batch(s) for s in steps]), kinds)
        self.state, metrics, frames, analysis = self.blocks(self.state, self.data, plan.placement.replicated(host_plan),
                                                            len(steps), self.blocks_probe_x, self.blocks_analysis_x,
                                                            kinds[0])
        if rec is None:
            return
        frame_steps = tuple(s for s, k in zip(steps, kinds) if k >= FRAME)
        analysis_steps = tuple(s for s, k in zip(steps, kinds) if k == ANALYSE)
        scalars = {} if plan.learning_rates is None else {"learning_rate": plan.learning_rates[first - 1:last]}
        filled = lambda buffers, n: {d: b if b.shape[0] == n else b[:n] for d, b in buffers.items()} if n else {}
        rec.write_block(Block(  # only the filled rows of the buffers leave the device
            tuple(steps), metrics, self.blocks.metric_names, frame_steps, filled(frames, len(frame_steps)),
            self.blocks.frame_layout, analysis_steps, filled(analysis, len(analysis_steps)),
            self.blocks.analysis_layout, scalars))

    def _after_block(self, until: int, progress: Progress | None) -> None:
        """What the host does once a block is dispatched: weights, evaluation, checkpoint, progress."""
        plan, rec, c, step = self.plan, self.rec, self.plan.config, self.step
        if rec is None:
            return
        if step in self.snapshots:  # the first and the last are written by start() and at the end
            rec.write_weights(step, plan.weights(self.state))
        if self.evaluate and (c.eval_every and step % c.eval_every == 0 or step == plan.total):
            loss, acc = evaluate(plan.fns, self.state, self.test_x, self.test_y, count=plan.eval_count)
            rec.log_eval(step, loss=loss, accuracy=acc)
        if c.checkpoint_every and step % c.checkpoint_every == 0 and step < until:
            self.checkpoint(wait=False)
        if progress is not None:
            latest = rec.latest_train
            progress.update(latest.get("step", 0), latest.get("loss"), latest.get("accuracy"))

    def checkpoint(self, wait: bool = True) -> int | None:
        """Checkpoints the current state once the run file holds every row up to it, unless a non-finite
        value was seen (the last finite checkpoint is kept). Returns the step checkpointed, or None. With
        `wait=False` (one process) the checkpoint is queued behind the rows on the writer thread and the loop
        goes on at once; returns the step it will checkpoint."""
        if self.checkpoints is None or self.rec is None:
            return None
        if not wait and processes() == 1:  # several processes save on the main thread: orbax may sync them
            step, ckpts, rec = self.step, self.checkpoints, self.rec

            def save(leaves: list[np.ndarray]) -> None:  # on the writer thread, the file flushed up to `step`
                if rec.nonfinite_step is None:
                    ckpts.save_leaves(step, leaves)

            rec.after_written(save, ckpts.device_copy(self.state))
            return step
        self.rec.wait()  # every row up to self.step is in the file: resuming from this step leaves no gap
        if self.rec.nonfinite_step is not None:
            return None
        self.checkpoints.save(self.step, self.state)
        return self.step

    def test(self) -> tuple[float, float]:
        """The full test split (syncs: the end of the run)."""
        loss, acc = (float(host(v)) for v in evaluate(self.plan.fns, self.state, self.test_x, self.test_y))
        if self.rec is not None:
            self.rec.log_test(loss=loss, accuracy=acc, count=len(self.plan.dataset.test_labels))
        return loss, acc


class RunStopped(RuntimeError):
    """The run stopped before its last step (diverged); the file and the last finite checkpoint are kept."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run at a step every process agreed on; the file is closed as interrupted
    and a checkpoint of that step is kept. (A second signal stops at once with `SignalStop`.)"""


class SignalStop(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: stop at once. Its argument names the signal (the file says which)."""

    @property
    def signal_name(self) -> str:
        return self.args[0]


@contextlib.contextmanager
def stop_on_signals(loop: TrainingLoop) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM ask the loop to stop after the step in flight; a second one stops at once;
    later ones are ignored, so that the run file closes whole (enter the recorder inside this context)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    forced = []

    def handler(signum: int, frame: Any) -> None:
        if forced:
            return
        if loop.stop_requested:
            forced.append(signum)
            raise SignalStop(signal.Signals(signum).name)
        loop.stop_requested, loop.stop_signal = signal.Signals(signum).name, signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def checkpoint_identity(config: RunConfig, path: Path) -> dict[str, Any]:
    """What a run's checkpoints must match to be resumed: its config (but the keys resume may change)."""
    kept = {k: v for k, v in json_config(config).items() if k not in RESUMABLE_KEYS}
    if not kept.get("block_steps"):  # the default: left out, so checkpoints from before the key still match
        kept.pop("block_steps", None)
    return {"run": path.name, "config_json": json.dumps(kept, sort_keys=True)}


def _drive(plan: RunPlan, rec: Recorder, loop: TrainingLoop, path: Path, show_progress: bool,
           log: Callable[[str], None], phases: Phases) -> RunResult:
    """Runs `loop` to the plan's end under `rec`, checkpointing, and ends the file with its honest status."""
    t0 = time.perf_counter()
    with phases("compile"):
        loop.compile()
    progress = Progress(plan.total, enabled=show_progress)
    rec.warn_when_behind(log)
    stopped = None
    try:
        with stop_on_signals(loop), rec:
            try:
                with phases(f"train ({_train_covers(plan, loop)})"):
                    if loop.step == 0 and from_primary(rec.last_steps["frame"] < 0):  # what the file holds decides
                        loop.start()
                    loop.run(plan.total, progress)
                if loop.stopped_early():
                    rec.wait()
                    stopped = _stop(loop, path)
                    rec.close(*stopped)
                else:
                    with phases("test and final weights"):
                        test_loss, test_acc = loop.test()
                        rec.write_weights(loop.step, plan.weights(loop.state))  # the final weights (init_from=RUN.h5)
                        loop.checkpoint()  # the end, too: `emergence resume --set epochs=N` extends from here
                        if loop.checkpoints is not None:  # finalised before the file says completed: a kill in
                            loop.checkpoints.wait()  # between leaves a running (resumable) file, never a
                            # completed one whose final checkpoint is a half-written orbax temp folder
                    with phases("writer drain and close"):
                        rec.wait()
                        latest = rec.latest_train
                        progress.update(plan.total, latest.get("loss"), latest.get("accuracy"), force=True)
                        first = rec.nonfinite_step
                        rec.close("completed", "" if first is None else
                                  f"non-finite values from step {first} on (on_nonfinite=continue)")
            finally:
                progress.close()
    finally:
        if loop.checkpoints is not None:
            loop.checkpoints.close()
    seconds = time.perf_counter() - t0
    if stopped is not None:
        log(f"{path}: {stopped[1]}")
        if stopped[0] == "interrupted":
            raise RunInterrupted(stopped[1])
        raise RunStopped(f"{path}: {stopped[1]}")
    d = plan.dataset
    log(f"writer: {rec.throughput()}")
    log(phases.line())
    log(f"done: {plan.total} steps, {len(rec.frame_steps)} frames in {seconds:.1f} s; test accuracy {test_acc:.4f} "
        f"(loss {test_loss:.4f}, {len(d.test_labels)} images) -> {path}")
    return RunResult(path, plan.total, len(rec.frame_steps), test_loss, test_acc, seconds,
                     {**plan.fns.traces, "block_step": loop.blocks.traces})


def _train_covers(plan: RunPlan, loop: TrainingLoop) -> str:
    """What the train phase includes, in words."""
    c = plan.config
    parts = [f"{plan.total - loop.step} steps in blocks of at most {plan.block_steps}"]
    if c.eval_every:
        parts.append(f"evaluations every {c.eval_every}")
    if c.checkpoint_every:
        parts.append(f"checkpoints every {c.checkpoint_every}")
    return ", ".join(parts)


def _stop(loop: TrainingLoop, path: Path) -> tuple[str, str]:
    """(status, message) of a run that stops early; an interrupted run is checkpointed where it stopped."""
    ckpts = loop.checkpoints
    if loop.stop_requested:
        saved = loop.checkpoint()
        where = f"checkpoint at step {saved}" if saved is not None else "its last checkpoint"
        return "interrupted", (f"interrupted ({loop.stop_requested}) at step {loop.step}; `emergence resume {path}` "
                               f"continues from {where}")
    last = ckpts.steps() if ckpts is not None else []
    keep = f"the last finite checkpoint is step {last[-1]}" if last else "no checkpoint was taken"
    return "diverged", (f"diverged at step {loop.rec.nonfinite_step}: a non-finite loss, gradient or activation "
                        f"(stopped at step {loop.step}; {keep}; on_nonfinite=continue records on)")


def _phases() -> Phases:
    """A phase timer that starts with the process's start-up (interpreter, imports) where it is known."""
    phases = Phases()
    age = process_age()
    if age is not None:
        phases.add("start-up", age)
    return phases


def _primary_speaks(log: Callable[[str], None], show_progress: bool) -> tuple[Callable[[str], None], bool]:
    """(log, show_progress) for this process: the other processes of a multi-process run run the same loop,
    silently (and write no file)."""
    return (log, show_progress) if is_primary() else ((lambda s: None), False)


def record(
    config: RunConfig,
    path: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> RunResult:
    """Trains `config` and records it to `path` (HDF5, see docs/run_schema.md), checkpointing beside it."""
    path = Path(path)
    phases = _phases()
    log, show_progress = _primary_speaks(log, show_progress)
    if is_primary() and path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, `emergence resume {path}` to "
                              "continue it, or pick another --name")
    with phases("data and model"):
        plan = make_plan(config, log)
    if config.budget_mb:
        schedule, why = budget_schedule(plan, config.budget_mb)
        plan.config = config = dataclasses.replace(config, schedule=schedule)  # the file states what was chosen
        log(why)
    d = plan.dataset
    log(format_summary(plan.capture.summary))
    rec = plan.recorder(path, overwrite=overwrite)
    if is_primary():
        shutil.rmtree(checkpoint_dir(path), ignore_errors=True)  # an earlier run's of this name: its file is replaced
    barrier("emergence: the run file and checkpoint folder are ready")
    ckpts = Checkpoints(path, plan.fns.init_state, checkpoint_identity(config, path))
    log(f"{config.experiment}: {config.model} ({config.activation}) on {d.name} [{d.origin}], {plan.total} steps "
        f"({plan.per_epoch}/epoch, batch {config.batch_size}), {len(rec.frame_steps)} frames ({config.schedule}) "
        f"on {len(plan.probe_idx)} probes -> {path}")
    weight_rows = len(snapshot_steps(config.snapshots, plan.total))
    if config.snapshots:
        size = weight_rows * weight_bytes(rec.layout.weights)
        log(f"snapshots: weights at {weight_rows} log-spaced steps, {size / 1e6:.1f} MB before compression")
    if plan.analysis_idx is not None:
        log(f"analysis: {len(plan.analysis_idx)} held-out test images at {len(rec.analysis_steps)} steps (centred "
            "Grams and activity statistics per layer, float32)")
    projected = projected_bytes(rec, weight_rows)
    log(f"projected file size: at most {projected / 1e6:.1f} MB before compression ({config.dtype})")
    if projected > LARGE_FILE_BYTES:
        log(f"warning: this run will write up to {projected / 1e9:.1f} GB; consider --set schedule=log:300 "
            "or schedule=every:K, or fewer probes")
    free, _, what = room(path, path.stat().st_size) if is_primary() else (projected, 0, "")
    if projected > free:
        log(f"warning: {what} leaves room for {free / 1e6:.1f} MB, and this run may write up to {projected / 1e6:.1f} MB "
            f"before compression (gzip often halves it); if it fills up, the run stops with one error and keeps "
            f"every frame written; {_fitting(plan, free)}")
    k = plan.block_steps
    log(f"blocks: at most {k} step{'s' if k != 1 else ''} per dispatch (--set block_steps=K), about {BLOCK_SECONDS:g} s "
        "of training each; stops, evaluations and checkpoints act between blocks")
    return _drive(plan, rec, TrainingLoop(plan, rec, checkpoints=ckpts), path, show_progress, log, phases)


def resume(path: str | Path, overrides: Sequence[str] = (), show_progress: bool = True,
           log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> RunResult:
    """Continues the run recorded at `path` from its last usable checkpoint (see `emergence resume --help`):
    a killed file is repaired first, rows after the checkpoint are dropped, and training goes on to the
    planned end (`overrides` may raise `epochs` or `steps` to extend a completed run)."""
    from recorder.repair import repair
    from replay.run_file import open_run

    path = Path(path)
    with open_run(path) as run:
        state, _ = run.state()
        status, writer, planned = run.status, run.recorded_by, run.planned_steps
        base = dict(run.config)
    if state == "recording":
        raise RecorderError(f"{path} is still being recorded by a live process; it cannot be resumed beside it")
    if writer != WRITER:
        raise ConfigError(f"{path} was written by {writer or 'an older emergence'}, not `emergence record`; a run "
                          "recorded through the Recorder API is resumed by its own loop (Recorder(..., resume_after=S))")
    bad = [o for o in overrides if o.partition("=")[0].strip() not in RESUMABLE_KEYS]
    if bad:
        raise ConfigError(f"resume cannot change {', '.join(bad)}: only {', '.join(RESUMABLE_KEYS)} keep the steps "
                          "already recorded meaningful; record a new run for other changes")
    config = apply_overrides(config_from_json(json.dumps(base)), list(overrides))
    log, show_progress = _primary_speaks(log, show_progress)
    if status == "running" and is_primary():
        log(f"repair: {repair(path)}")
    barrier("emergence: the run file is repaired")
    phases = _phases()
    with phases("data and model"):
        plan = make_plan(config, log)
    if plan.total != planned and config.lr_schedule != "constant":
        raise ConfigError(f"{path} uses lr_schedule={config.lr_schedule}, which spans its {planned} planned steps; "
                          "it cannot be extended (record a longer run instead)")
    if plan.total < planned or (status == "completed" and plan.total == planned):
        raise ConfigError(f"{path} is {status} at {planned} planned steps; to extend it, raise epochs or steps "
                          f"(now {plan.total} steps)")
    ckpts = Checkpoints(path, plan.fns.init_state, checkpoint_identity(config, path))
    with open_run(path) as run:
        frames, train_last = set(run.steps.tolist()), run.train_metrics().step
        train_last = int(train_last[-1]) if len(train_last) else 0
    schedule = set(recorded_steps(config.schedule, planned).tolist())  # the frames the file was to hold

    def complete_through(step: int) -> bool:  # the file holds every row up to `step`
        return train_last >= step and all(s in frames for s in schedule if s <= step)

    usable = [s for s in ckpts.steps() if complete_through(s)]
    start = usable[-1] if usable else 0
    train_state = ckpts.restore(start) if start else None
    barrier("emergence: every process has read the run file")  # before process 0 drops rows after `start`
    rec = plan.recorder(path, resume_after=start)
    loop = TrainingLoop(plan, rec, checkpoints=ckpts)
    if train_state is not None:
        loop.restore(start, train_state)
    log(f"resuming {path} ({state}) at step {start} of {plan.total}"
        + (" from its checkpoint" if start else " from the initial model (no usable checkpoint)")
        + (f"; the file's rows after step {start} are dropped" if train_last > start else ""))
    return _drive(plan, rec, loop, path, show_progress, log, phases)
