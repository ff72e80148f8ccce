"""`Recorder`: records any JAX training loop into a run file (docs/run_schema.md), the same file
`emergence record` writes.

    capture = Capture.nnx(model, probe_x)                      # once, outside jit
    with Recorder("runs/mine.h5", Probes(images, labels, class_names), capture, planned_steps=1000,
                  config={"lr": 1e-3}) as rec:
        for step in range(1, 1001):
            model, metrics, frame = train_step(model, batch, probe_x)   # your jitted step calls capture(...)
            rec.write(step, frame, metrics)                   # device arrays: copied on the writer thread

The recorder owns the file, the background writer and the schedule. `should_record(step)` and
`should_analyse(step)` are pure functions of the step (like big_vision's `itstime`), so a jitted step can be
chosen on the host without a sync. Nothing here touches a device value on the caller's thread: every
device→host copy happens on the writer thread; frames that come fast are first packed on the device,
`frames_per_transfer` at a time, into one buffer per dtype (recorder/batching.py; 1 sends each frame as it
is). While it is open the interpreter's GIL switch interval is at most `switch_interval` (0.5 ms; None leaves
it as it is), so a loop thread that runs Python all the time cannot starve the writer (runfile/async_writer.py).
Where the writer deflates on several threads (hosts with 8 cores or more, or 4 beside a GPU), it does so in
processes of their own by default (`encode_processes=None`), which no Python thread of the loop can slow;
`encode_processes=False` keeps it in threads, which costs the writer's thread less (no copies into and out of
the processes) when the loop's thread rarely runs Python, as the built-in loop's does (runfile/writer.py).
On exit the file is `completed`, `failed` (an exception, with its message) or `interrupted` (Ctrl-C), and
everything written before stays readable.

Users who do not want to touch their step call `rec.capture_and_write(step, model_or_params, probe_x)`:
the recorder runs the capture as its own small jitted program (one more executable, one more dispatch and a
second forward pass over the probes at each recorded step).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

from recorder.analysis import (ANALYSIS_FRAMES, ANALYSIS_IMAGES, STAT_DOCS, STAT_NAMES, analysis_steps, choose_analysis_probes,
                               probe_set_hash)
from recorder.device_writer import DeviceWriter
from recorder.batching import FRAMES_PER_TRANSFER, FrameBatcher, MetricsBatcher
from recorder.blocks import Block
from recorder.capture import Capture
from recorder.fletcher import on_device
from recorder.own_loop import (LiveAnalysis, OwnLoopError, auto_analysis, canonical_config, jitted_capture, progress,
                                measure_split)
from recorder.schedule import recorded_steps
from recorder.weights import flat_weights, weight_specs
from runfile.async_writer import WRITER_SWITCH_INTERVAL
from runfile.schema import UNKNOWN_INDEX
from runfile.writer import (AnalysisLayout, DiscardingWriter, H5RunWriter, LayerSpec, RunLayout,
                             default_encode_threads)

WRITER = "emergence.Recorder"
TRAIN_KEYS = {"loss", "accuracy", "finite"}  # metrics of the training rows; any other key is a scalar series


class RecorderError(ValueError):
    """Bad input to the recorder; raised on the caller's thread, nothing already written is lost."""


@dataclasses.dataclass(frozen=True)
class Probes:
    """Fixed images every frame is computed on: pixels as they should be shown, and their labels.

    images: uint8 [P, H, W, C] with C = 1 or 3 (what the pictures show; feed the model its own
    preprocessing of them). indices: where they come from in `dataset`; left out, the file stores -1 for each
    (unknown), never positions that would name other images. analysis: a held-out set from the same split that
    the recorder analyses by default (`from_dataset` picks one)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = ()
    indices: np.ndarray | None = None
    dataset: str = "user data"
    analysis: "Probes | None" = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise RecorderError(f"probe images must be [P, H, W, C] with C = 1 or 3; got shape {images.shape}")
        if images.dtype != np.uint8:
            raise RecorderError(f"probe images must be uint8 pixels (what the pictures show); got {images.dtype}. "
                                "Pass np.round(images * 255).astype(np.uint8) for images in [0, 1], and give the "
                                "model its own preprocessing of them")
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise RecorderError(f"probe labels must be integers, one per image ({images.shape[0]}); got "
                                f"{labels.dtype} {labels.shape}")
        indices = np.full(len(labels), UNKNOWN_INDEX) if self.indices is None else np.asarray(self.indices)
        if indices.shape != labels.shape:
            raise RecorderError(f"probe indices must be one per image ({len(labels)}); got shape {indices.shape}")
        names = tuple(self.class_names) or tuple(str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0))
        if len(labels) and int(labels.max()) >= len(names):
            raise RecorderError(f"probe label {int(labels.max())} has no class name; class_names has {len(names)}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "indices", indices.astype(np.int64))
        object.__setattr__(self, "class_names", names)

    @classmethod
    def select(cls, images: np.ndarray, labels: np.ndarray, indices: np.ndarray | str, class_names: tuple[str, ...] = (),
               dataset: str = "user data") -> "Probes":
        """The images of a split at `indices`, or with `indices="one per class"` the first image of each class
        (the reference experiment's choice), or `"balanced:N"` N class-balanced images (round-robin over the
        classes in split order: an analysis set)."""
        labels = np.asarray(labels)
        if isinstance(indices, str):
            classes = len(class_names) or int(labels.max()) + 1
            if indices == "one per class":
                indices = np.array([int(np.flatnonzero(labels == c)[0]) for c in range(classes) if (labels == c).any()])
            elif indices.startswith("balanced:") and indices[9:].isdigit():
                indices = choose_analysis_probes(labels, int(indices[9:]), classes)
            else:
                raise RecorderError(f"indices={indices!r}: expected an array, 'one per class' or 'balanced:N'")
        indices = np.asarray(indices, np.int64)
        return cls(np.asarray(images)[indices], labels[indices], tuple(class_names), indices, dataset)

    @classmethod
    def from_dataset(cls, data: Any, indices: np.ndarray | str = "one per class",
                     analysis: int = ANALYSIS_IMAGES) -> "Probes":
        """Probes from a `Dataset` (recorder.load_dataset, or one of your own): the test images at `indices` (an
        array, "one per class" or "balanced:N", as in `select`) with their true indices, the data set's name and
        class names, and `analysis` class-balanced test images as the analysis set (`emergence record` picks
        the same ones, so the runs compare; 0: none)."""
        images, labels, names = data.test_images, data.test_labels, tuple(data.class_names)
        probes = cls.select(images, labels, indices, names, data.name)
        if analysis:
            held = cls.select(images, labels, f"balanced:{min(analysis, len(labels))}", names, data.name)
            object.__setattr__(probes, "analysis", held)
        return probes

    @property
    def sha256(self) -> str:
        return probe_set_hash(self.dataset, self.indices, self.images)


class Recorder:
    """The file, the async writer and the schedule of one recorded run. Use it as a context manager."""

    def __init__(self, path: str | Path, probes: Probes, capture: Capture, *, planned_steps: int,
                 schedule: str = "every", analysis: Probes | str | None = "auto", config: Mapping[str, Any] | None = None,
                 experiment: str = "custom", activation: str | Mapping[str, str] = "unknown",
                 compression: str = "gzip", eval_count: int = 0, data_origin: str = "", overwrite: bool = False,
                 versions: Mapping[str, str] | None = None, writer: str = WRITER, max_pending: int = 8,
                 writer_nice: int = 19, resume_after: int | None = None, weights: Any = None,
                 initialised_from: str = "", write_file: bool = True,
                 frames_per_transfer: int = FRAMES_PER_TRANSFER,
                 switch_interval: float | None = WRITER_SWITCH_INTERVAL, encode_processes: bool | None = None):
        path = Path(path)
        if not write_file:  # a process other than 0 of a multi-process run: same loop, no file
            overwrite, resume_after = True, None
        if write_file and resume_after is None and path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it, or choose another path")
        if resume_after is not None and not path.exists():
            raise FileNotFoundError(f"no run file at {path} to resume")
        if write_file and path.exists():
            refuse_live_writer(path)
        if planned_steps < 0:
            raise RecorderError(f"planned_steps must be >= 0, got {planned_steps}")
        try:
            self.frame_steps = recorded_steps(schedule, planned_steps)
        except ValueError as e:
            raise RecorderError(str(e)) from None
        model_row = next((m for m in capture.summary.get("modules", []) if m.get("path") == "(model)"), {})
        try:
            config = canonical_config(config or {}, model=model_row.get("type"),
                                      activation=activation if isinstance(activation, str) and activation != "unknown" else None,
                                      dataset=probes.dataset if probes.dataset != "user data" else None)
        except OwnLoopError as e:
            raise RecorderError(str(e)) from None
        if isinstance(activation, str) and activation == "unknown" and isinstance(config.get("activation"), str):
            activation = config["activation"]
        self._live: LiveAnalysis | None = None
        self.analysis_note = ""  # why a run has no analysis set, when "auto" found none
        if isinstance(analysis, str):
            if analysis != "auto":
                raise RecorderError(f"analysis={analysis!r}: expected Probes, None or 'auto'")
            analysis, self._live, self.analysis_note = auto_analysis(probes, capture)
        try:
            config_json = json.dumps(config, sort_keys=True)
        except TypeError as e:
            raise RecorderError(f"config must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from None
        self.capture = capture
        self.probes = probes
        self.planned_steps = planned_steps
        self.analysis = analysis
        self.analysis_steps = analysis_steps(self.frame_steps, len(analysis.labels)) if analysis else np.zeros(0, np.int64)
        self._record_at = set(self.frame_steps.tolist())
        self._analyse_at = set(self.analysis_steps.tolist())
        names = probes.class_names
        if capture.has_logits and capture.num_classes != len(names):
            raise RecorderError(f"the model has {capture.num_classes} outputs but the probes name {len(names)} classes; "
                                "pass class_names to Probes, one per output")
        acts = {l.name: activation if isinstance(activation, str) else activation.get(l.name, "unknown")
                for l in capture.layers}
        layout = RunLayout(
            layers=tuple(LayerSpec(l.name, l.shape, acts[l.name], l.kernel_shape, l.stage, l.channels)
                         for l in capture.layers),
            num_classes=capture.num_classes,
            probe_images=probes.images, probe_labels=probes.labels, probe_indices=probes.indices,
            probe_dataset=probes.dataset,
            attrs={"experiment": experiment, "config_json": config_json, "versions_json": json.dumps(dict(versions or {})),
                   "summary_json": json.dumps(capture.summary), "class_names_json": json.dumps(list(names)),
                   "planned_steps": planned_steps, "record_schedule": schedule, "data_origin": data_origin,
                   "writer": writer, "frame_mode": capture.mode, "initialised_from": initialised_from},
            dtype=capture.dtype.name, compression=compression, eval_count=eval_count,
            analysis=None if analysis is None else AnalysisLayout(
                indices=analysis.indices, labels=analysis.labels, sha256=analysis.sha256, steps=self.analysis_steps,
                rule=f"every K-th frame step from 0 plus the last, K = ceil((frames - 1) / {ANALYSIS_FRAMES})",
                stat_names=STAT_NAMES, stat_docs=STAT_DOCS),
        )
        if weights is not None:
            layout = dataclasses.replace(layout, weights=weight_specs(weights))
        self.layout = layout
        self._expected = self._frame_shapes()
        self.path = path
        if not write_file:
            h5 = DiscardingWriter(path)
        else:
            if path.exists() and resume_after is None:
                path.unlink()  # overwrite=True: only once everything above has been validated
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                h5 = H5RunWriter(path, layout, resume_after=resume_after,
                                 encode_threads=default_encode_threads(jax.default_backend() != "cpu"),
                                 encode_processes=encode_processes)
            except ValueError as e:
                raise RecorderError(str(e)) from None
        self._writer = DeviceWriter(h5, max_pending=max_pending, nice=writer_nice, switch_interval=switch_interval)
        self._frames = FrameBatcher(self._writer.write_frame, self._writer.write_frames, size=frames_per_transfer,
                                    checksums=on_device("auto", compression))
        self._metrics = MetricsBatcher(self._send_metrics, self._writer.write_block,
                                       size=4 * frames_per_transfer if frames_per_transfer > 1 else 1)
        self._last = h5.last_steps()
        self._closed = False
        self._own_forward: Callable[..., Any] | None = None
        self._checked_layout: tuple = ()

    # -- the schedule ------------------------------------------------------------------------------
    def should_record(self, step: int) -> bool:
        """Whether `step` gets a frame (pure: a function of the schedule and the planned steps)."""
        return step in self._record_at

    def should_analyse(self, step: int) -> bool:
        """Whether the frame of `step` should also carry the analysis batch (pass analysis_x to the capture)."""
        return step in self._analyse_at

    # -- writing -----------------------------------------------------------------------------------
    def write(self, step: int, frame: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None) -> None:
        """Queues the frame of `step` (if given) and its training metrics (`loss`, `accuracy`, computed with the
        parameters before the update; `finite`, an optional in-step flag that gradients and activations were
        finite; any other key goes to the extra scalar series). Never waits for the device: values are copied
        to the host on the writer thread, which also notes the first non-finite step (`nonfinite_step`). The
        metrics of steps that come fast travel 32 at a time (recorder/batching.py), so the writer sees them up
        to 32 steps late; `wait()` sends everything."""
        self._open()
        if frame is not None:
            if self._live is not None and self.should_analyse(step) and not any(k.startswith("analysis/") for k in frame):
                try:
                    frame = self._live.add(step, frame)
                except OwnLoopError as e:
                    raise RecorderError(str(e)) from None
            self._check_frame(step, frame)
            self._advance("frame", step, strict=True)
            self._frames.add(step, dict(frame))
        if metrics:
            metrics = dict(metrics)
            if "loss" in metrics or "accuracy" in metrics:
                self._advance("train", step, strict=True)
            if set(metrics) - TRAIN_KEYS:
                self._advance("scalars", step, strict=False)
            self._metrics.add(step, metrics)

    def _send_metrics(self, step: int, metrics: dict) -> None:
        """One step's metrics to the writer (see `write`; the checks are done)."""
        watch = tuple(v for v in (metrics.get("loss"), metrics.pop("finite", None)) if v is not None)
        if "loss" in metrics or "accuracy" in metrics:
            self._writer.write_train(step, metrics.pop("loss", np.nan), metrics.pop("accuracy", np.nan), watch=watch)
        elif watch:
            self._writer.watch(step, *watch)
        if metrics:
            self._writer.write_scalars(step, metrics)

    def _drain(self) -> None:
        """Sends what the batchers hold (frames first)."""
        self._frames.drain()
        self._metrics.drain()

    def write_block(self, block: Block) -> None:
        """Queues a block of consecutive steps (recorder/blocks.py: what `BlockStep` returns, or one a loop
        of your own builds): their training rows, per-step series, frames and analysis rows, as one item. The
        host touches no device value here; the writer copies each buffer once."""
        self._open()
        if block.frame_layout:
            self._check_layout(block)
        for step in block.frame_steps:
            self._advance("frame", step, strict=True)
        self._advance("train", block.steps[0], strict=True)
        self._last["train"] = block.steps[-1]
        if set(block.metric_names) - TRAIN_KEYS or block.scalars:  # anything else is a series
            self._advance("scalars", block.steps[0], strict=False)
            self._last["scalars"] = block.steps[-1]
        self._drain()  # frames and metrics handed over one by one before go first
        self._writer.write_block(block)

    def _check_layout(self, block: Block) -> None:
        """The block's frames match the run's layout (checked once per layout)."""
        if block.frame_layout == self._checked_layout:
            return
        got = {key: shape for key, shape, _ in block.frame_layout}
        if got != self._expected:
            raise RecorderError(f"the frames of steps {block.steps[0]}..{block.steps[-1]} do not match the run's "
                                f"layout: {got} against {self._expected}")
        if block.analysis_steps and self.analysis is None:
            raise RecorderError("the block carries analysis statistics but the recorder has no analysis probes")
        self._checked_layout = block.frame_layout

    def capture_and_write(self, step: int, model: Any, probe_x: Any, analysis_x: Any = None,
                          metrics: Mapping[str, Any] | None = None) -> None:
        """The convenience path: at a scheduled step, computes the frame with the recorder's own jitted capture
        (a second executable and a second forward pass over the probes) and writes it with `metrics`."""
        frame = None
        if self.should_record(step):
            if self._own_forward is None:
                self._own_forward = jitted_capture(self.capture, model)
            frame = self._own_forward(model, probe_x, analysis_x if self.should_analyse(step) else None)
        self.write(step, frame, metrics)

    def write_weights(self, step: int, weights: Any) -> None:
        """Stores the model's weights after `step` (an nnx.Module, nnx.State or any pytree of arrays with the
        structure of the `weights=` template given at construction). `init_from=RUN.h5@STEP` starts a run from
        them; a run's final weights (its last step) make `init_from=RUN.h5`. Device arrays are copied on the
        device first (a later step may donate their buffers) and to the host on the writer thread."""
        self._open()
        if not self.layout.weights:
            raise RecorderError("this recorder stores no weights; pass weights=<the model or its state> to Recorder")
        flat = flat_weights(weights)
        got = {p: (tuple(np.shape(v)), kind) for p, (v, kind) in flat.items()}
        want = {s.path: (tuple(s.shape), s.kind) for s in self.layout.weights}
        if got != want:
            raise RecorderError(f"weights of step {step} do not match the run's: missing {sorted(set(want) - set(got))}, "
                                f"unexpected {sorted(set(got) - set(want))}, different "
                                f"{sorted(p for p in got if p in want and got[p] != want[p])}")
        self._advance("weights", step, strict=True)
        values = {p: jax.numpy.copy(v) if isinstance(v, jax.Array) else np.array(v) for p, (v, _) in flat.items()}
        self._writer.write_weights(step, values)

    def log_eval(self, step: int, *, loss: Any, accuracy: Any) -> None:
        """Held-out metrics with the parameters after `step` (`eval_count` images, as given at construction)."""
        self._open()
        self._advance("eval", step, strict=True)
        self._writer.write_eval(step, loss, accuracy)

    def log_test(self, *, loss: Any, accuracy: Any, count: int) -> None:
        """The full test split, once, at the end."""
        self._open()
        self._writer.write_test(loss, accuracy, count)

    def log_scalars(self, step: int, **values: Any) -> None:
        """Extra scalar series (learning rate, gradient norm, ...), any names, one value each at `step`."""
        self._open()
        self._advance("scalars", step, strict=False)
        self._writer.write_scalars(step, values)

    def measure_test(self, predict: Callable[[np.ndarray], Any], images: np.ndarray, labels: np.ndarray, *,
                     batch_size: int = 1000) -> tuple[float, float]:
        """Records the test metrics of the final model: `predict(uint8 images) -> logits [batch, classes]` (your
        preprocessing and model in inference mode, e.g. `lambda x: model(prepare(x))`) over every image, in
        batches; the loss is the mean cross-entropy of the logits. Returns (loss, accuracy)."""
        try:
            loss, accuracy, count = measure_split(predict, images, labels, batch_size)
        except OwnLoopError as e:
            raise RecorderError(str(e)) from None
        self.log_test(loss=loss, accuracy=accuracy, count=count)
        return loss, accuracy

    def progress(self, steps: Iterable[int], *, enabled: bool = True, stream: Any = None) -> Iterator[int]:
        """`for step in rec.progress(range(1, n + 1)):` — your loop with a progress line (step, the latest
        training loss and accuracy that reached the host, steps/s, ETA); it never waits for the device."""
        total = len(steps) if hasattr(steps, "__len__") else self.planned_steps  # type: ignore[arg-type]
        if isinstance(steps, range) and len(steps):
            total = steps[-1]
        return progress(steps, total, lambda: self._writer.latest_train, enabled, stream)

    def after_written(self, call: Callable[..., None], *args: Any) -> None:
        """Runs `call(*args)` on the writer thread once everything queued before is written and flushed to the
        file, with host copies of the device arrays in `args` (the loop does not wait: a checkpoint that must
        not run ahead of the file, for instance)."""
        self._open()
        self._drain()
        self._writer.after_written(call, *args)

    def wait(self) -> None:
        """Blocks until everything queued is written and flushed to the file (re-raises a writer failure)."""
        self._drain()
        self._writer.wait()

    def throughput(self) -> str:
        """The writer's work so far, in words: MB of frames, seconds writing, MB/s, and how long training waited."""
        return self._writer.throughput()

    def warn_when_behind(self, log: Any) -> None:
        """Calls `log(message)` once, when training has waited for the writer for a few seconds in all."""
        self._writer.on_behind = log

    @property
    def last_steps(self) -> dict[str, int]:
        """The last step written (or queued) of each kind: frame, train, eval, scalars, weights; -1 for none."""
        return dict(self._last)

    @property
    def nonfinite_step(self) -> int | None:
        """The first step whose loss (or `finite` flag, see `write`) was not finite, as far as the writer thread
        has seen (it runs a few steps behind the loop; `wait()` first for an exact answer); None while all were."""
        return self._writer.nonfinite_step

    @property
    def seconds_per_step(self) -> float | None:
        """Training's pace as the writer sees blocks arrive (None before two blocks have)."""
        return self._writer.seconds_per_step

    @property
    def latest_train(self) -> dict[str, float]:
        """The last training row that reached the host: step, loss, accuracy (empty before the first)."""
        return self._writer.latest_train

    # -- checks ------------------------------------------------------------------------------------
    def _frame_shapes(self) -> dict[str, tuple[int, ...]]:
        p = len(self.probes.labels)
        out = {l.name: (p, *l.shape) for l in self.layout.layers}
        out.update({f"kernel/{l.name}": tuple(l.kernel_shape) for l in self.layout.layers if l.kernel_shape})
        if self.layout.num_classes:
            out["logits"] = (p, self.layout.num_classes)
        return out

    def _check_frame(self, step: int, frame: Mapping[str, Any]) -> None:
        analysed = any(k.startswith("analysis/") for k in frame)
        got = {k: tuple(np.shape(v)) for k, v in frame.items() if not k.startswith("analysis/")}
        if got != self._expected:
            missing = sorted(set(self._expected) - set(got))
            extra = sorted(set(got) - set(self._expected))
            wrong = {k: f"{got[k]} (expected {self._expected[k]})" for k in got if k in self._expected
                     and got[k] != self._expected[k]}
            raise RecorderError(f"frame of step {step} does not match the run's layout: missing {missing}, "
                                f"unexpected {extra}, wrong shapes {wrong}; the probe batch must be the "
                                f"{len(self.probes.labels)} probes, captured by the same Capture")
        if analysed and self.analysis is None:
            raise RecorderError(f"frame of step {step} carries analysis statistics but the recorder has no analysis "
                                "probes; pass analysis=Probes(...) or call the capture without analysis_x")
        if analysed and not self.should_analyse(step):
            raise RecorderError(f"step {step} is not an analysis step (see should_analyse); capture without analysis_x")

    def _advance(self, what: str, step: int, strict: bool) -> None:
        last = self._last[what]
        if step < last or (strict and step == last):
            raise RecorderError(f"{what} step {step} after step {last}: steps must increase")
        self._last[what] = step

    def _open(self) -> None:
        if self._closed:
            raise RecorderError(f"the recorder of {self.path} is closed; nothing more can be written to it")

    # -- the end -----------------------------------------------------------------------------------
    def close(self, status: str = "completed", message: str = "") -> None:
        """Writes everything queued, sets the final status and closes the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drain()
        finally:
            self._writer.close(status, message)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> None:
        step = self._last["train"]
        if kind is None:
            self.close("completed")
        elif issubclass(kind, KeyboardInterrupt):  # a signal handler may name its signal (recorder/lifecycle.py)
            self.close("interrupted", f"interrupted ({getattr(error, 'signal_name', 'Ctrl-C')}) at step {step}")
        else:
            self.close("failed", f"{kind.__name__}: {error} at step {step}")


def refuse_live_writer(path: Path) -> None:
    """Raises RecorderError when another live process is writing the run file at `path`."""
    from runfile.reader import RunFileError, open_run

    try:
        with open_run(path) as run:
            state, who = run.state()[0], run.writer_identity
    except (RunFileError, OSError, KeyError):
        return  # not a readable run: nothing live to protect
    if state == "recording":
        writer = f"process {who['pid']} on {who['host']}" if who else "another process (heartbeat fresh)"
        raise RecorderError(f"{path} is being recorded right now by {writer}; a second writer would corrupt it. "
                            "Stop that run first, or choose another path")
