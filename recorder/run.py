"""`emergence record` and `emergence resume`: config -> a plan (plan.py) -> the public `Recorder` -> the loop
(loop.py), under the lifecycle pieces any loop can use (lifecycle.py: signals; checkpoints.py), with the
byte budget (budget.py) checked first; the file ends with its honest status.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from recorder.blocks import BLOCK_SECONDS
from recorder.budget import LARGE_FILE_BYTES, budget_schedule, projected_bytes, weight_bytes, fitting_advice
from recorder.checkpoints import Checkpoints, checkpoint_dir
from recorder.config import RESUMABLE_KEYS, ConfigError, RunConfig, apply_overrides, config_from_json
from recorder.lifecycle import RunInterrupted, RunStopped, stop_on_signals
from recorder.loop import TrainingLoop
from recorder.parallel import barrier, from_primary, is_primary
from recorder.plan import RunPlan, WRITER, json_config, make_plan
from recorder.progress import Progress
from recorder.recorder import Recorder, RecorderError, refuse_live_writer
from recorder.schedule import recorded_steps, snapshot_steps
from recorder.summary import format_summary
from recorder.timing import Phases, process_age
from runfile.writer import room


@dataclasses.dataclass(frozen=True)
class RunResult:
    path: Path
    steps: int
    frames: int
    test_loss: float
    test_accuracy: float
    seconds: float
    traces: dict[str, int]  # how often each jitted function was traced (compiled): 1 each is the goal


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
        with stop_on_signals(loop.stop), rec:
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
    if loop.stop:
        saved = loop.checkpoint()
        where = f"checkpoint at step {saved}" if saved is not None else "its last checkpoint"
        return "interrupted", (f"interrupted ({loop.stop.reason}) at step {loop.step}; `emergence resume {path}` "
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
    if is_primary() and path.exists():
        refuse_live_writer(path)  # before any other output: a refusal comes first
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
            f"every frame written; {fitting_advice(plan, free)}")
    k = plan.block_steps
    loop = TrainingLoop(plan, rec, checkpoints=ckpts)
    log(f"blocks: at most {k} step{'s' if k != 1 else ''} per dispatch (--set block_steps=K), about {BLOCK_SECONDS:g} s "
        "of training each; stops, evaluations and checkpoints act between blocks"
        + ("; the frames' checksums are computed on the device (--set checksums=host)" if loop.blocks.checksums else ""))
    return _drive(plan, rec, loop, path, show_progress, log, phases)


def resume(path: str | Path, overrides: Sequence[str] = (), show_progress: bool = True,
           log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> RunResult:
    """Continues the run recorded at `path` from its last usable checkpoint (see `emergence resume --help`):
    a killed file is repaired first, rows after the checkpoint are dropped, and training goes on to the
    planned end (`overrides` may raise `epochs` or `steps` to extend a completed run)."""
    from runfile.repair import repair
    from runfile.reader import open_run

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
