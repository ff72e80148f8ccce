"""The recording loop: builds everything from a `RunConfig`, trains, and streams frames to the run file.

The host touches device values at one boundary only, the writer thread (async_writer.py). The loop
itself dispatches steps without waiting; the bounded writer queue is what paces it.
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

from recorder.analysis import (ANALYSIS_FRAMES, STAT_DOCS, STAT_NAMES, analysis_steps, choose_analysis_probes,
                                probe_set_hash)
from recorder.async_writer import AsyncRunWriter
from recorder.config import ConfigError, RunConfig
from recorder.data import Dataset, load_dataset
from recorder.models import build_model
from recorder.probes import choose_probes
from recorder.progress import Progress
from recorder.schedule import recorded_steps
from recorder.summary import format_summary, summarize
from recorder.train import StepFunctions, evaluate, make_optimizer, make_step_functions, to_inputs
from recorder.writer import AnalysisLayout, H5RunWriter, LayerSpec, RunLayout

LARGE_FILE_BYTES = 2 * 1024**3


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


def plan(config: RunConfig, dataset: Dataset) -> tuple[int, int]:
    """(steps per epoch, total steps). The remainder batch of each epoch is dropped."""
    per_epoch = len(dataset.train_labels) // config.batch_size
    if per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(dataset.train_labels)} training images of "
            f"{dataset.name}; lower batch_size"
        )
    return per_epoch, config.steps or config.epochs * per_epoch


def kernel_layers_of(config: RunConfig, summary: dict[str, Any]) -> tuple[str, ...]:
    """The tapped layers whose kernel is recorded, per `config.kernels`."""
    with_kernel = [t["name"] for t in summary["taps"] if t["name"] in summary["kernels"]]
    if config.kernels == "all":
        return tuple(with_kernel)
    if config.kernels == "first" and with_kernel:
        return (with_kernel[0],)
    return ()


def layer_specs(summary: dict[str, Any], activation: str, kernel_layers: tuple[str, ...]) -> tuple[LayerSpec, ...]:
    """One `LayerSpec` per tapped layer of `summary`, in call order."""
    return tuple(
        LayerSpec(t["name"], tuple(t["shape"]), activation,
                  tuple(summary["kernels"][t["name"]]) if t["name"] in kernel_layers else None)
        for t in summary["taps"]
    )


def analysis_layout(config: RunConfig, dataset: Dataset, frame_steps: np.ndarray,
                    log: Callable[[str], None] = lambda s: None) -> AnalysisLayout | None:
    """The analysis probe set and steps of a run (recorder/analysis.py), or None with analysis_probes=0."""
    if not config.analysis_probes:
        return None
    n_analysis = min(config.analysis_probes, len(dataset.test_labels))
    if n_analysis < config.analysis_probes:
        log(f"note: analysis_probes={config.analysis_probes} but the {dataset.name} test split has "
            f"{n_analysis} images; analysing all {n_analysis}")
    a_idx = choose_analysis_probes(dataset.test_labels, n_analysis, len(dataset.class_names))
    return AnalysisLayout(
        indices=a_idx, labels=dataset.test_labels[a_idx],
        sha256=probe_set_hash(dataset.name, a_idx, dataset.test_images[a_idx]),
        steps=analysis_steps(frame_steps, len(a_idx)),
        rule=f"every K-th frame step from 0 plus the last, K = ceil((frames - 1) / {ANALYSIS_FRAMES})",
        stat_names=STAT_NAMES, stat_docs=STAT_DOCS,
    )


def _frame_bytes(layout: RunLayout) -> int:
    p = len(layout.probe_labels)
    item = np.dtype(layout.dtype).itemsize
    total = sum(p * int(np.prod(s.shape)) * item for s in layout.layers)
    total += sum(4 * int(np.prod(s.kernel_shape)) for s in layout.layers if s.kernel_shape)
    return total + 4 * p * layout.num_classes + 16


def record(
    config: RunConfig,
    path: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> RunResult:
    """Trains `config` and records it to `path` (HDF5, see docs/run_schema.md)."""
    config.validate()
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, or pick another --name")
    dataset = load_dataset(config.dataset, config.data_dir, config.synthetic_size)
    per_epoch, total = plan(config, dataset)
    probe_idx = choose_probes(dataset, config.probes)
    model = build_model(config.model, dataset.input_shape, len(dataset.class_names), config.activation, config.seed)
    summary = summarize(model, dataset.input_shape)
    if not summary["taps"]:
        raise ConfigError(f"model {config.model!r} marks no layer with tap(); nothing would be recorded")
    kernel_layers = kernel_layers_of(config, summary)
    fns = make_step_functions(
        model, make_optimizer(config.optimizer, config.learning_rate, config.momentum), kernel_layers, jnp.dtype(config.dtype)
    )
    frame_steps = recorded_steps(config.schedule, total)
    eval_count = min(config.eval_size, len(dataset.test_labels))
    analysis = analysis_layout(config, dataset, frame_steps, log)
    layout = RunLayout(
        layers=layer_specs(summary, config.activation, kernel_layers),
        num_classes=len(dataset.class_names),
        probe_images=dataset.test_images[probe_idx],
        probe_labels=dataset.test_labels[probe_idx],
        probe_indices=probe_idx,
        probe_dataset=dataset.name,
        attrs={
            "experiment": config.experiment,
            "config_json": config.to_json(),
            "versions_json": json.dumps(versions()),
            "summary_json": json.dumps(summary),
            "class_names_json": json.dumps(list(dataset.class_names)),
            "planned_steps": total,
            "record_schedule": config.schedule,
            "data_origin": dataset.origin,
        },
        dtype=config.dtype,
        compression=config.compression,
        eval_count=eval_count,
        analysis=analysis,
    )

    projected = len(frame_steps) * _frame_bytes(layout)
    if analysis is not None:
        n = len(analysis.indices)
        projected += len(analysis.steps) * len(layout.layers) * 4 * (n * (n + 1) // 2 + len(STAT_NAMES))
    log(format_summary(summary))
    log(
        f"{config.experiment}: {config.model} ({config.activation}) on {dataset.name} [{dataset.origin}], "
        f"{total} steps ({per_epoch}/epoch, batch {config.batch_size}), {len(frame_steps)} frames "
        f"({config.schedule}) on {len(probe_idx)} probes -> {path}"
    )
    if analysis is not None:
        log(f"analysis: {len(analysis.indices)} held-out test images at {len(analysis.steps)} steps (centred Grams "
            f"and activity statistics per layer, float32)")
    log(f"projected file size: at most {projected / 1e6:.1f} MB before compression ({config.dtype})")
    if projected > LARGE_FILE_BYTES:
        log(
            f"warning: this run will write up to {projected / 1e9:.1f} GB; consider --set schedule=log:300 "
            "or schedule=every:K, or fewer probes"
        )
    if path.exists():
        path.unlink()  # --overwrite: only now that everything above has been validated
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = AsyncRunWriter(H5RunWriter(path, layout))
    return _train(config, dataset, fns, writer, probe_idx, frame_steps, analysis, per_epoch, total, eval_count,
                  show_progress, log)


def _train(
    config: RunConfig,
    dataset: Dataset,
    fns: StepFunctions,
    writer: AsyncRunWriter,
    probe_idx: np.ndarray,
    frame_steps: np.ndarray,
    analysis: AnalysisLayout | None,
    per_epoch: int,
    total: int,
    eval_count: int,
    show_progress: bool,
    log: Callable[[str], None],
) -> RunResult:
    t0 = time.perf_counter()
    latest: dict[str, float] = {}

    def write_frame(step: int) -> Callable[..., None]:
        def fn(w: H5RunWriter, frame: dict[str, np.ndarray]) -> None:
            w.write_frame(step, time.perf_counter() - t0, frame)
        return fn

    def write_train(step: int) -> Callable[..., None]:
        def fn(w: H5RunWriter, metrics: dict[str, np.ndarray]) -> None:
            wall = time.perf_counter() - t0  # when the step's results reached the host
            w.write_train(np.array([step]), metrics["loss"], metrics["accuracy"], np.array([wall]))
            latest.update(step=step, loss=float(metrics["loss"]), accuracy=float(metrics["accuracy"]))
        return fn

    def write_eval(step: int) -> Callable[..., None]:
        def fn(w: H5RunWriter, loss: np.ndarray, accuracy: np.ndarray) -> None:
            w.write_eval(step, float(loss), float(accuracy))
        return fn

    train_x = jax.device_put(dataset.train_images)  # uint8 on the device; batches are gathered there
    train_y = jax.device_put(dataset.train_labels.astype(np.int32))
    test_x = jax.device_put(dataset.test_images)
    test_y = jax.device_put(dataset.test_labels.astype(np.int32))
    probe_x = to_inputs(jax.device_put(dataset.test_images[probe_idx]))
    record_at = set(frame_steps.tolist())
    analyse_at = set(analysis.steps.tolist()) if analysis is not None else set()
    analysis_x = to_inputs(jax.device_put(dataset.test_images[analysis.indices])) if analysis is not None else None
    progress = Progress(total, enabled=show_progress)
    state = fns.init_state
    step = 0
    perm = epoch_permutation(config.seed, 0, len(dataset.train_labels))
    try:
        writer.submit(write_frame(0), fns.probe_frame(state.params, probe_x, analysis_x))
        for step in range(1, total + 1):
            epoch, i = divmod(step - 1, per_epoch)
            if i == 0 and epoch > 0:
                perm = epoch_permutation(config.seed, epoch, len(dataset.train_labels))
            idx = perm[i * config.batch_size:(i + 1) * config.batch_size]  # [B] int32, copied in at dispatch
            if step in analyse_at:  # three executables, each compiled once (the test suite checks)
                state, metrics, frame = fns.analysed_step(state, train_x, train_y, idx, probe_x, analysis_x)
                writer.submit(write_frame(step), frame)
            elif step in record_at:
                state, metrics, frame = fns.recorded_step(state, train_x, train_y, idx, probe_x)
                writer.submit(write_frame(step), frame)
            else:
                state, metrics = fns.train_step(state, train_x, train_y, idx)
            writer.submit(write_train(step), metrics)
            if config.eval_every and step % config.eval_every == 0 or step == total:
                writer.submit(write_eval(step), *evaluate(fns, state.params, test_x[:eval_count], test_y[:eval_count]))
            progress.update(latest.get("step", 0), latest.get("loss"), latest.get("accuracy"))
        test_loss, test_acc = (float(v) for v in evaluate(fns, state.params, test_x, test_y))  # syncs: run end
        writer.submit(lambda w: w.write_test(test_loss, test_acc, len(dataset.test_labels)))
        writer.wait()
        progress.update(total, latest.get("loss"), latest.get("accuracy"), force=True)
    except BaseException as e:
        progress.close()
        reason = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        writer.close("failed", f"{reason} at step {step}")
        raise
    progress.close()
    writer.close("completed")
    seconds = time.perf_counter() - t0
    log(
        f"done: {total} steps, {len(frame_steps)} frames in {seconds:.1f} s; "
        f"test accuracy {test_acc:.4f} (loss {test_loss:.4f}, {len(dataset.test_labels)} images) -> {writer.writer.path}"
    )
    return RunResult(writer.writer.path, total, len(frame_steps), test_loss, test_acc, seconds, dict(fns.traces))
