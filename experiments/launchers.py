"""Where a sweep's runs are recorded: processes on this machine, a Ray cluster, or SLURM through submitit.

Every launcher runs the same task for each grid point (`run_task`), in a fresh `emergence` process:

* a complete run file recorded with the very same config is reused (never recorded again);
* a file left by a killed, interrupted or failed try of the same config is resumed from its last checkpoint
  (`emergence resume`: the finished file equals an uninterrupted run's, bitwise on the CPU);
* anything else is recorded from the start.

So a task can be run again at any time and continues what the last try left: Ray retries a task whose process
died or failed (`retries`), SLURM requeues a preempted job (`RecordTask.checkpoint`), and running the sweep
again after Ctrl-C picks up every run where it stopped. `--overwrite` deletes a sweep's files before any task
starts; tasks themselves never delete a run.

Ctrl-C on the sweep creates a stop file in the sweep's folder (`.stop`, which every worker sees); each task
watches for it, sends its recorder SIGTERM and waits: the recorder stops at the next block boundary and closes
its file `interrupted` with a checkpoint. The sweep waits for that (up to STOP_WAIT), then cancels what is left
(Ray's cancel, submitit's job cancel). The child is also tied
to the task's process (PR_SET_PDEATHSIG on Linux), so a task process that dies outright takes its recorder
with it (a `killed` file, equally resumable) instead of leaving it running.

Every worker must see the sweep's folder (a shared filesystem) and run the same environment (this package
installed). By default runs are written there directly. HDF5's single-writer/many-reader mode relies on POSIX
semantics that NFS and Lustre do not give, so with `stage` (a folder on each worker's local disk; `$VARS` are
expanded on the worker, e.g. `$SLURM_TMPDIR`) a task records into that folder and publishes into the sweep's:

* the run file and its checkpoint are copied under hidden temporary names (`.NAME.h5.part-…`), flushed to
  disk, then renamed into place: a reader of the shared folder sees the previous file or the new one, never a
  part of one. The run file is renamed last, so a listed run always has its checkpoint beside it;
* a run is published when it completes, and also when it stops (Ctrl-C, preemption) or fails, as the
  resumable file it is: a retry on any worker copies it back to its own disk and resumes it;
* while it records, the task writes `NAME.progress.json` beside the run's place in the sweep's folder every
  PROGRESS_EVERY seconds (step, planned steps, last loss and accuracy, state, host; written to a temporary
  name and renamed): `emergence serve` lists it as a run recording elsewhere. It is removed once the complete
  run is published, and so are the staged files (the worker's scratch space is freed).

A worker that dies outright leaves its staged files on its own disk: a retry on the same worker resumes them,
one on another worker resumes from the last published state (or records the run again).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from runfile.progress import progress_path, run_progress, write_progress

TIED_TO = "EMERGENCE_TIED_TO"  # read by emergence/cli.py: the recorder gets SIGTERM when this process dies

LAUNCHERS = ("local", "ray", "slurm")


@dataclasses.dataclass(frozen=True)
class Task:
    experiment: str
    sets: tuple[str, ...]  # every override of this grid point: the sweep's --set and its grid values
    path: str  # absolute path of the run file
    own_session: bool = False  # Ray and SLURM: the recorder in a session of its own, out of reach of process-group
    # kills of the worker; it still gets SIGTERM when the worker dies (PR_SET_PDEATHSIG)
    stop_file: str | None = None  # when it exists, the task stops its recorder (SIGTERM) and returns
    stage: str | None = None  # a folder on the worker's local disk to record in, published into `path`'s
    fresh_since: float | None = None  # --overwrite: staged files older than this (unix time) are not used

    @property
    def stop_requested(self) -> bool:
        return self.stop_file is not None and Path(self.stop_file).exists()

    @property
    def name(self) -> str:
        return Path(self.path).name


class TaskFailed(RuntimeError):
    """The run's `emergence` process failed; the message is its last line."""


def task_state(task: Task) -> str:
    """"complete", "resumable" or "new": what this task's file holds for this task's config."""
    return _task_state(task)[0]


def _task_state(task: Task) -> tuple[str, str]:
    """`task_state`, and why a file already at the task's path is not continued ("" when none is there)."""
    from experiments.pair import reusable
    from recorder.plan import json_config
    from runfile.reader import open_run

    path = Path(task.path)
    config = _config(task)
    if reusable(path, config):
        return "complete", ""
    if not path.exists():
        return "new", ""
    if not checkpoint_dir(path).is_dir():
        return "new", f"no checkpoint beside it ({checkpoint_dir(path).name})"
    try:
        with open_run(path) as run:
            same = run.config == json_config(config)
            state = run.state()[0]
    except Exception as e:  # noqa: BLE001 - an unreadable leftover is recorded again
        return "new", f"it could not be read ({type(e).__name__}: {e})"
    if not same:
        return "new", "it was recorded with another config"
    if state not in ("killed", "interrupted", "failed", "diverged"):
        return "new", f"it is {state}"
    return "resumable", ""


def _emergence(args: list[str], task: Task, tick: Callable[[], None] | None = None) -> tuple[int, str, bool]:
    """Runs `emergence ARGS` until it ends or the sweep asks its tasks to stop (the stop file appears, or this
    task is interrupted): then the recorder gets SIGTERM and is waited for, so it finishes its block,
    checkpoints and closes its file `interrupted`, resumable. `tick` is called about every PROGRESS_EVERY seconds
    while it runs. Returns (exit code, last line of stderr, stopped)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: nothing blocks however much it says
        proc = subprocess.Popen([sys.executable, "-m", "emergence", *args, "--no-progress"],  # stdout is not read
                                stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=task.own_session,
                                env={**os.environ, TIED_TO: str(os.getpid())})
        stopped = False
        next_tick = time.monotonic()
        try:
            while proc.poll() is None:
                if task.stop_requested and not stopped:
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
                if tick is not None and time.monotonic() >= next_tick:
                    tick()
                    next_tick = time.monotonic() + PROGRESS_EVERY
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
            raise
        err.seek(0)
        lines = err.read().strip().splitlines()
    return proc.returncode, lines[-1] if lines else "no message", stopped


def run_task(task: Task) -> str:
    """Reuses, resumes or records one grid point's run; returns one line saying which. Raises TaskFailed."""
    state = task_state(task)
    if state == "complete":
        return f"{task.name}: reused (complete, same config)"
    if task.stop_requested:
        return f"{task.name}: not started (the sweep was stopped)"
    if task.stage is None:
        return _record_or_resume(task, state)
    return _staged(task, state)


def _record_or_resume(task: Task, state: str, tick: Callable[[], None] | None = None) -> str:
    """Resumes the task's run (`state` "resumable") or records it from the start, where `task.path` says."""
    t0 = time.perf_counter()
    path = Path(task.path)
    stopped_line = f"{task.name}: stopped by the sweep's Ctrl-C, resumable (the same command continues it)"
    again = ""
    if state == "resumable":
        code, last, stopped = _emergence(["resume", str(path)], task, tick)
        if stopped:
            return stopped_line
        if code == 0:
            return f"{task.name}: resumed from its checkpoint and completed in {time.perf_counter() - t0:.0f} s"
        again = f" (resuming failed: {last})"  # a checkpoint that cannot be used: recorded again from the start
    elif path.exists():
        again = f" (the file there was not continued: {_task_state(task)[1]})"
    sets = [a for s in task.sets for a in ("--set", s)]
    code, last, stopped = _emergence(["record", task.experiment, "--out", str(path.parent), "--name", path.stem,
                                      "--overwrite", *sets], task, tick)
    if stopped:
        return stopped_line
    if code != 0:
        raise TaskFailed(f"{task.name}: `emergence record` exited with {code}: {last}")
    return f"{task.name}: recorded in {time.perf_counter() - t0:.0f} s{again}"


# -- worker-local recording, published atomically -----------------------------------------------------------
PROGRESS_EVERY = 2.0  # seconds between a staged run's progress files (runfile/progress.py)


def staged_path(task: Task) -> Path:
    """Where the task records on this worker: STAGE/<the sweep folder's hash>/<name>.h5 (two sweeps never share)."""
    import hashlib

    shared = Path(task.path)
    key = hashlib.sha256(str(shared.parent).encode()).hexdigest()[:12]
    stage = os.path.expandvars(os.path.expanduser(task.stage or ""))
    if "$" in stage:
        raise TaskFailed(f"{task.name}: --stage {task.stage!r} names an environment variable this worker "
                         f"({os.uname().nodename}) does not set")
    return Path(stage) / f"emergence-{key}" / shared.name


def _staged(task: Task, shared_state: str) -> str:
    shared, local = Path(task.path), staged_path(task)
    local.parent.mkdir(parents=True, exist_ok=True)
    if task.fresh_since is not None and local.exists() and local.stat().st_mtime < task.fresh_since:
        local.unlink()  # --overwrite: an earlier sweep's leftover on this worker is not used
        shutil.rmtree(checkpoint_dir(local), ignore_errors=True)
    here = dataclasses.replace(task, path=str(local), stage=None)
    state = task_state(here)
    if state == "complete":  # recorded here by an earlier try that died before publishing it
        publish(local, shared)
        return f"{task.name}: published (completed here by an earlier try)"
    if shared_state == "resumable" and (state != "resumable" or _last_step(shared) > _last_step(local)):
        _copy_run(shared, local)  # a stopped try, published from any worker, got further than this disk's
        state = task_state(here)
    from recorder.plan import json_config

    extra = {"config": json_config(_config(task)), "stage": str(local)}
    write_progress(shared, {"state": "starting", **extra})
    tick = lambda: write_progress(shared, {**run_progress(local), **extra})  # noqa: E731
    try:
        line = _record_or_resume(here, state, tick)
    except BaseException:
        _publish_resumable(local, shared, extra)
        raise
    if task_state(here) == "complete":
        publish(local, shared)
        progress_path(shared).unlink(missing_ok=True)
        local.unlink()  # published: the worker's scratch space is freed
        shutil.rmtree(checkpoint_dir(local), ignore_errors=True)
        return line + f"; published into {shared.parent}"
    _publish_resumable(local, shared, extra)
    return line


def _last_step(path: Path) -> int:
    from runfile.reader import open_run

    try:
        with open_run(path) as run:
            return run.last_step()
    except Exception:  # noqa: BLE001 - unreadable: nothing to continue from
        return -1


def _publish_resumable(local: Path, shared: Path, extra: dict[str, Any]) -> None:
    """A stopped, failed or killed run, published as the resumable file it is (any worker can continue it)."""
    if local.exists():
        publish(local, shared)
    write_progress(shared, {**run_progress(local), **extra})


def _config(task: Task) -> Any:
    """The task's RunConfig: its experiment with its overrides."""
    from experiments.configs import get_experiment
    from recorder.config import apply_overrides

    return apply_overrides(get_experiment(task.experiment), list(task.sets))


def publish(local: Path, shared: Path) -> None:
    """The staged run file and its checkpoint into the shared folder, each copied under a temporary name, flushed
    and renamed into place; the checkpoint first, so that a listed run always has its checkpoint."""
    tag = f"part-{os.getpid()}-{time.monotonic_ns()}"
    ckpt, target_ckpt = checkpoint_dir(local), checkpoint_dir(shared)
    if ckpt.is_dir():
        tmp = target_ckpt.with_name(f".{target_ckpt.name}.{tag}")
        shutil.copytree(ckpt, tmp)
        _fsync_tree(tmp)
        old = target_ckpt.with_name(f".{target_ckpt.name}.old-{tag}")
        if target_ckpt.exists():
            os.replace(target_ckpt, old)
        os.replace(tmp, target_ckpt)
        shutil.rmtree(old, ignore_errors=True)
    tmp = shared.with_name(f".{shared.name}.{tag}")
    shutil.copyfile(local, tmp)
    _fsync(tmp)
    os.replace(tmp, shared)
    _fsync(shared.parent)


def checkpoint_dir(run_path: Path) -> Path:
    return run_path.with_suffix(".ckpt")  # as recorder/checkpoints.py places it (that module imports JAX)


def _copy_run(shared: Path, local: Path) -> None:
    """A published resumable run (file and checkpoint) onto this worker's disk, to continue it here."""
    shutil.rmtree(checkpoint_dir(local), ignore_errors=True)
    if checkpoint_dir(shared).is_dir():
        shutil.copytree(checkpoint_dir(shared), checkpoint_dir(local))
    shutil.copyfile(shared, local)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


STOP_WAIT = 150  # seconds the sweep waits, after Ctrl-C, for its tasks' recorders to close their files
STOP_FILE = ".stop"  # in the sweep's folder (every worker sees it): its tasks stop when it appears


def with_stop_file(tasks: Sequence[Task], folder: Path) -> list[Task]:
    """The tasks, told to watch the sweep's stop file; a stop file left by an earlier Ctrl-C is removed."""
    stop = folder / STOP_FILE
    stop.unlink(missing_ok=True)
    return [dataclasses.replace(t, stop_file=str(stop.resolve())) for t in tasks]


def request_stop(tasks: Sequence[Task]) -> None:
    for stop in {t.stop_file for t in tasks if t.stop_file}:
        Path(stop).touch()


def clear(tasks: Sequence[Task]) -> None:
    """--overwrite: the sweep's files and checkpoints go before any task starts."""
    for t in tasks:
        path = Path(t.path)
        path.unlink(missing_ok=True)
        progress_path(path).unlink(missing_ok=True)
        shutil.rmtree(checkpoint_dir(path), ignore_errors=True)


# -- local ------------------------------------------------------------------------------------------------
def run_local(tasks: Sequence[Task], jobs: int, log: Callable[[str], None]) -> list[str]:
    """`jobs` tasks at a time on threads of this process, each task's run in its own process."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    lines = []
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(run_task, t) for t in tasks]
        try:
            for f in as_completed(futures):
                lines.append(f.result())
                log(lines[-1])
        except BaseException:
            for f in futures:
                f.cancel()
            request_stop(tasks)  # the running ones stop their recorders cleanly; the pool waits for them
            raise
    return lines


# -- Ray ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS, or a local Ray instance started for the sweep
    cpus: float = 1.0  # per task
    gpus: float = 0.0
    retries: int = 2  # a task whose process dies or whose run fails is run again this many times


def cluster_module(name: str) -> Any:
    """`ray` or `submitit`, or one clear error that says how to install it (the optional extra `cluster`)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"--launcher {'ray' if name == 'ray' else 'slurm'} needs {name}, which is not installed "
                         f"({e}): pip install -e '.[cluster]' (setup.sh does)") from None


def run_ray(tasks: Sequence[Task], options: RayOptions, log: Callable[[str], None]) -> list[str]:
    ray = cluster_module("ray")

    address = options.address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=options.cpus, num_gpus=options.gpus, max_retries=options.retries,
                            retry_exceptions=True)(run_task)
        pending = {remote.remote(dataclasses.replace(t, own_session=True)): t for t in tasks}
        where = address or "a local Ray instance"
        log(f"ray: {len(tasks)} tasks on {where} ({options.cpus:g} CPU, {options.gpus:g} GPU each; "
            f"{options.retries} retries)")
        lines = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        lines.append(ray.get(ref))
                    except Exception as e:  # noqa: BLE001 - Ray wraps the task's error
                        raise TaskFailed(f"{task.name}: failed after {options.retries} retries: "
                                         f"{_cause(e)}") from None
                    log(lines[-1])
        except BaseException:
            # the stop file tells every task to stop its recorder cleanly; the sweep waits for them (its tasks die
            # with it, and Ray's raylet SIGKILLs the children of a dead worker), then cancels what is left
            request_stop(tasks)
            ray.wait(list(pending), num_returns=len(pending), timeout=STOP_WAIT)
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return lines
    finally:
        ray.shutdown()


def _cause(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


# -- SLURM through submitit -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60
    gpus: int = 0  # per task (one node each)
    cpus: int = 2
    parallel: int = 16  # array tasks running at once
    cluster: str = "slurm"  # "local": submitit's local executor, the same code path without SLURM (tests)


class RecordTask:
    """The submitit job: a task that SLURM may preempt and requeue. On preemption or timeout submitit calls
    `checkpoint`, which submits the same task again; the next try resumes the run from its checkpoint."""

    def __call__(self, task: Task) -> str:
        return run_task(task)

    def checkpoint(self, task: Task) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(RecordTask(), task)


def slurm_parameters(options: SlurmOptions, name: str) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "timeout_min": options.time_min, "cpus_per_task": options.cpus,
                              "slurm_array_parallelism": options.parallel, "nodes": 1, "tasks_per_node": 1}
    if options.gpus:
        params["gpus_per_node"] = options.gpus
    if options.partition:
        params["slurm_partition"] = options.partition
    return params


def sbatch_script(tasks: Sequence[Task], options: SlurmOptions, logs: Path, name: str) -> str:
    """The sbatch script that submitit writes for this sweep's job array, from the same parameters (what
    `emergence sweep --launcher slurm --dry-run` prints; it needs no SLURM to be written)."""
    cluster_module("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    p = slurm_parameters(options, name)
    return _make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit {logs}", folder=logs, job_name=p["name"],
        partition=p.get("slurm_partition"), time=p["timeout_min"], nodes=p["nodes"], ntasks_per_node=p["tasks_per_node"],
        cpus_per_task=p["cpus_per_task"], gpus_per_node=p.get("gpus_per_node"),
        array_parallelism=p["slurm_array_parallelism"], map_count=len(tasks))


def run_slurm(tasks: Sequence[Task], options: SlurmOptions, logs: Path, name: str,
              log: Callable[[str], None]) -> list[str]:
    submitit = cluster_module("submitit")

    executor = submitit.AutoExecutor(folder=logs, cluster=options.cluster)
    executor.update_parameters(**slurm_parameters(options, name))
    jobs = executor.map_array(RecordTask(), [dataclasses.replace(t, own_session=True) for t in tasks])
    log(f"slurm: {len(jobs)} array tasks submitted ({'submitit local executor' if options.cluster == 'local' else 'sbatch'}); "
        f"logs in {logs}")
    lines = []
    try:
        for job, task in _as_done(jobs, tasks):
            try:
                lines.append(job.result())
            except Exception as e:  # noqa: BLE001 - submitit re-raises the job's error with its traceback
                raise TaskFailed(f"{task.name}: {_cause(e)}") from None
            log(lines[-1])
    except BaseException:
        request_stop(tasks)
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline and not all(job.done() for job in jobs):
            time.sleep(0.5)
        for job in jobs:
            job.cancel(check=False)
        raise
    return lines


def _as_done(jobs: list[Any], tasks: Sequence[Task]) -> Iterator[tuple[Any, Task]]:
    waiting = list(zip(jobs, tasks))
    while waiting:
        for item in [w for w in waiting if w[0].done()]:
            waiting.remove(item)
            yield item
        time.sleep(0.5)
