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

Runs are written where the sweep's folder is, which every worker must see (a shared filesystem) and every
worker must run the same environment (this package installed). HDF5's single-writer/many-reader mode relies on
POSIX semantics that NFS and Lustre do not give: on those, watch a sweep's progress with `emergence serve` on
the files as they complete, not the frames of a run still recording (README, "More devices, sweeps").
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
    from experiments.configs import get_experiment
    from experiments.pair import reusable
    from recorder.config import apply_overrides
    from recorder.plan import json_config
    from runfile.reader import open_run

    path = Path(task.path)
    config = apply_overrides(get_experiment(task.experiment), list(task.sets))
    if reusable(path, config):
        return "complete"
    if not path.exists() or not path.with_suffix(".ckpt").is_dir():
        return "new"
    try:
        with open_run(path) as run:
            same = run.config == json_config(config)
            state = run.state()[0]
    except Exception:  # noqa: BLE001 - an unreadable leftover is recorded again
        return "new"
    return "resumable" if same and state in ("killed", "interrupted", "failed", "diverged") else "new"


def _emergence(args: list[str], task: Task) -> tuple[int, str, bool]:
    """Runs `emergence ARGS` until it ends or the sweep asks its tasks to stop (the stop file appears, or this
    task is interrupted): then the recorder gets SIGTERM and is waited for, so it finishes its block,
    checkpoints and closes its file `interrupted`, resumable. Returns (exit code, last line of stderr, stopped)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: nothing blocks however much it says
        proc = subprocess.Popen([sys.executable, "-m", "emergence", *args, "--no-progress"],  # stdout is not read
                                stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=task.own_session,
                                env={**os.environ, TIED_TO: str(os.getpid())})
        stopped = False
        try:
            while proc.poll() is None:
                if task.stop_requested and not stopped:
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
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
    t0 = time.perf_counter()
    state = task_state(task)
    if state == "complete":
        return f"{task.name}: reused (complete, same config)"
    path = Path(task.path)
    if task.stop_requested:
        return f"{task.name}: not started (the sweep was stopped)"
    stopped_line = f"{task.name}: stopped by the sweep's Ctrl-C, resumable (the same command continues it)"
    if state == "resumable":
        code, _, stopped = _emergence(["resume", str(path)], task)
        if stopped:
            return stopped_line
        if code == 0:
            return f"{task.name}: resumed from its checkpoint and completed in {time.perf_counter() - t0:.0f} s"
        # a checkpoint that cannot be used: record the run again from the start below
    sets = [a for s in task.sets for a in ("--set", s)]
    code, last, stopped = _emergence(["record", task.experiment, "--out", str(path.parent), "--name", path.stem,
                                      "--overwrite", *sets], task)
    if stopped:
        return stopped_line
    if code != 0:
        raise TaskFailed(f"{task.name}: `emergence record` exited with {code}: {last}")
    return f"{task.name}: recorded in {time.perf_counter() - t0:.0f} s"


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
        shutil.rmtree(path.with_suffix(".ckpt"), ignore_errors=True)


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
