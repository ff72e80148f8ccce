"""Sweeps beyond one machine on real engines: a Ray cluster of a head and a separate worker process on 127.0.0.1,
and SLURM's code path through submitit's local executor (SLURM itself is not on this machine)."""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.launchers import RecordTask, SlurmOptions, Task, sbatch_script, staged_path, task_state
from runfile.identity import differences
from runfile.reader import open_run

BIN = Path(sys.executable).parent
GRID = ["--grid", "seed=0,1", "--grid", "activation=tanh,relu"]
SETS = ["--set", "steps=40", "--set", "checkpoint_every=8"]
FOLDER = "sweep-tiny-seed-activation"


def emergence(*args, check=True, timeout=600, env=None):
    done = subprocess.run([sys.executable, "-m", "emergence", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recorder_pid(stem):
    """The pid of the `emergence record` process writing run `stem`, or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"emergence" in argv and b"record" in argv and stem.encode() in argv:
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 and one worker node started apart with `ray start --address`."""
    import secrets

    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(tmp_path_factory.mktemp("ray")),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # the cluster's own token, for every node and client
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    address = f"127.0.0.1:{port}"

    def ray(*args):
        done = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"ray {' '.join(args)}: {done.stderr[-2000:]}"

    ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false", *common)
    try:
        ray("start", "--address", address, "--node-ip-address", "127.0.0.1", *common)
        yield address, env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_a_ray_cluster_records_the_sweep_and_a_killed_task_resumes_to_the_same_file(tmp_path, ray_cluster):
    address, env = ray_cluster
    nodes = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={address!r}); "
                            "print(len([n for n in ray.nodes() if n['Alive']]))"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]  # the head and the worker node
    out = tmp_path / "ray"
    proc = subprocess.Popen([sys.executable, "-m", "emergence", "sweep", "tiny", *GRID, *SETS, "--launcher", "ray",
                             "--address", address, "--out", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    victim = "seed=0-activation=tanh"
    path = out / FOLDER / f"{victim}.h5"
    killed_at = None
    deadline = time.monotonic() + 300
    while killed_at is None and time.monotonic() < deadline and proc.poll() is None:
        pid = recorder_pid(victim)
        if pid is not None and path.exists():
            try:
                with open_run(path) as run:
                    last = int(run.train_metrics().step[-1]) if run.train_count else 0
            except Exception:  # noqa: BLE001 - the file is being created
                last = 0
            if last >= 20:  # past two checkpoints, before the end (40)
                os.kill(pid, signal.SIGKILL)
                killed_at = last
        time.sleep(0.1)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed_at is not None and proc.returncode == 0, stderr[-3000:]
    assert f"{victim}.h5: resumed from its checkpoint and completed" in stdout  # Ray ran the task again
    assert stdout.count(": recorded in ") == 3 and (out / FOLDER / "report.md").exists()
    with open_run(path) as run:
        assert run.status == "completed" and int(run.train_metrics().step[-1]) == 40
    # the killed and resumed run equals an uninterrupted recording of the same grid point on this machine
    emergence("sweep", "tiny", "--grid", "seed=0", "--grid", "activation=tanh", *SETS, "--out", str(tmp_path / "local"),
              "--name", "ref", "--no-progress")
    assert differences(path, tmp_path / "local" / "ref" / f"{victim}.h5") == []
    # a second sweep reuses every run: no task records anything
    again = emergence("sweep", "tiny", *GRID, *SETS, "--launcher", "ray", "--address", address, "--out", str(out),
                      env=env)
    assert again.stdout.count("reused (complete, same config)") == 4


def test_slurm_through_submitits_local_executor_and_the_sbatch_script(tmp_path):
    out = tmp_path / "slurm"
    done = emergence("sweep", "tiny", "--grid", "seed=0,1", "--set", "steps=12", "--launcher", "slurm",
                     "--slurm-cluster", "local", "--out", str(out))
    folder = out / "sweep-tiny-seed"
    assert "2 array tasks submitted (submitit local executor)" in done.stdout and done.stdout.count("recorded in") == 2
    for seed in (0, 1):
        with open_run(folder / f"seed={seed}.h5") as run:
            assert run.status == "completed"
    assert list((folder / "slurm-logs").glob("*_log.out"))  # logs next to the runs
    script = emergence("sweep", "tiny", *GRID, "--launcher", "slurm", "--dry-run", "--partition", "gpu",
                       "--gpus-per-run", "1", "--cpus-per-run", "4", "--time-min", "30", "--parallel", "2",
                       "--out", str(tmp_path / "dry")).stdout
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --time=30", "#SBATCH --job-name=sweep-tiny-seed-activation",
                 "#SBATCH --signal=USR2@90", "-m submitit.core._submit"):
        assert line in script, line
    assert f"--output={tmp_path / 'dry' / FOLDER / 'slurm-logs'}" in script
    assert not list((tmp_path / "dry").rglob("*.h5"))  # a dry run records nothing
    # preemption: submitit calls checkpoint(), which submits the same task again (and it resumes the run)
    task = Task("tiny", ("seed=0",), str(tmp_path / "x.h5"))
    again = RecordTask().checkpoint(task)
    assert isinstance(again.function, RecordTask) and again.args == (task,)
    text = sbatch_script([task] * 3, SlurmOptions(parallel=5), tmp_path / "logs", "s")  # never more than the tasks
    assert "#SBATCH --array=0-2%3" in text and "--partition" not in text and "--gpus-per-node" not in text


def test_ctrl_c_on_a_ray_sweep_cancels_its_tasks_and_the_same_command_resumes_them(tmp_path, ray_cluster):
    address, env = ray_cluster
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "emergence", "sweep", "tiny", "--grid", "seed=0,1", "--set", "steps=600",
           "--set", "checkpoint_every=50", "--launcher", "ray", "--address", address, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = out / "sweep-tiny-seed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = []
        for seed in (0, 1):
            try:
                with open_run(folder / f"seed={seed}.h5") as run:
                    steps.append(int(run.train_metrics().step[-1]) if run.train_count else 0)
            except Exception:  # noqa: BLE001 - not created yet
                steps.append(0)
        if min(steps) >= 100:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C on the launcher
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    deadline = time.monotonic() + 60
    while any(recorder_pid(f"seed={s}") for s in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(recorder_pid(f"seed={s}") for s in (0, 1))  # the cancelled tasks' recorders stopped
    for seed in (0, 1):
        with open_run(folder / f"seed={seed}.h5") as run:
            state, reason = run.state()
            assert state == "interrupted" and run.train_count < 600, (state, reason)  # SIGTERM: a clean stop
    again = emergence(*cmd[3:], env=env)
    assert again.stdout.count("resumed from its checkpoint and completed") == 2, again.stdout
    for seed in (0, 1):
        with open_run(folder / f"seed={seed}.h5") as run:
            assert run.status == "completed" and int(run.train_metrics().step[-1]) == 600


def test_a_launcher_without_its_package_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the `cluster` extra were not installed
    with pytest.raises(ValueError, match=r"--launcher slurm needs submitit, which is not installed .*pip install -e '\.\[cluster\]'"):
        sbatch_script([Task("tiny", (), str(tmp_path / "a.h5"))], SlurmOptions(), tmp_path, "s")
    done = emergence("sweep", "tiny", "--grid", "seed=0", "--dry-run", "--out", str(tmp_path), check=False)
    assert done.returncode == 2 and done.stderr.strip() == "emergence: error: --dry-run prints the sbatch script of --launcher slurm"


def test_a_staged_sweep_shows_progress_publishes_whole_files_and_resumes_after_ctrl_c(tmp_path):
    from runfile.progress import read_progress
    from viewer.catalog import Catalog

    out, stage = tmp_path / "shared", tmp_path / "worker-disk"
    sets = ["--set", "steps=400", "--set", "checkpoint_every=50"]
    cmd = [sys.executable, "-m", "emergence", "sweep", "tiny", "--grid", "seed=0,1", *sets, "--jobs", "2",
           "--stage", str(stage), "--out", str(out), "--name", "s"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = out / "s"
    progress = [folder / f"seed={s}.progress.json" for s in (0, 1)]
    deadline, seen = time.monotonic() + 300, []
    while time.monotonic() < deadline:
        assert not list(folder.glob("*.h5")) if folder.exists() else True  # nothing published before it stops
        try:
            seen = [read_progress(p) for p in progress]
        except (OSError, ValueError):  # not written yet
            seen = []
        if seen and min(p.get("step") or 0 for p in seen) >= 100:
            break
        time.sleep(0.2)
    rows = Catalog(folder).rows()  # the viewer lists both runs from their progress files
    assert [(r["name"], r["state"], r["staged"], r["readable"]) for r in rows] == [
        ("seed=0", "recording elsewhere", True, False), ("seed=1", "recording elsewhere", True, False)]
    assert all(r["last_step"] >= 100 and r["planned_steps"] == 400 and r["config"]["seed"] == s
               for r, s in zip(rows, (0, 1)))
    proc.send_signal(signal.SIGINT)  # Ctrl-C on the launcher: each run stops and is published, resumable
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode != 0, stderr[-2000:]
    for seed, p in zip((0, 1), progress):
        with open_run(folder / f"seed={seed}.h5") as run:
            assert run.state()[0] == "interrupted" and run.train_count < 400
        assert read_progress(p)["state"] == "interrupted"
    assert not [f for f in folder.iterdir() if f.name.startswith(".") and ".part-" in f.name]  # no half copies
    for seed in (0, 1):  # what the same command will find: each run resumable, published and on the worker's disk
        task = Task("tiny", (*sets[1::2], f"seed={seed}"), str(folder / f"seed={seed}.h5"), stage=str(stage))
        assert task_state(task) == "resumable", seed
        assert task_state(dataclasses.replace(task, path=str(staged_path(task)), stage=None)) == "resumable", seed
    again = emergence(*cmd[3:])
    assert again.stdout.count("resumed from its checkpoint and completed") == 2, again.stdout
    assert not any(p.exists() for p in progress) and not list(stage.rglob("*.h5"))  # published; scratch freed
    emergence("record", "tiny", *sets, "--set", "seed=0", "--out", str(tmp_path), "--name", "unstaged")
    assert differences(tmp_path / "unstaged.h5", folder / "seed=0.h5") == []  # the same run, bit for bit


def test_a_file_that_is_not_continued_says_why(tmp_path):
    from experiments.launchers import _task_state
    from conftest import write_run

    task = Task("tiny", (), str(tmp_path / "seed=0.h5"))
    assert _task_state(task) == ("new", "")  # nothing there
    write_run(tmp_path / "seed=0.h5", {"conv1": np.zeros((2, 1, 4, 4, 2), np.float16)}, status="interrupted")
    assert _task_state(task) == ("new", "no checkpoint beside it (seed=0.ckpt)")
    (tmp_path / "seed=0.ckpt").mkdir()
    assert _task_state(task) == ("new", "it was recorded with another config")
    (tmp_path / "seed=0.h5").write_bytes(b"not HDF5")
    state, why = _task_state(task)
    assert state == "new" and why.startswith("it could not be read (")


def test_a_stage_folder_named_by_an_unset_variable_is_one_clear_error(tmp_path, monkeypatch):
    from experiments.launchers import TaskFailed, staged_path

    monkeypatch.delenv("EMERGENCE_NO_SUCH_DIR", raising=False)
    task = Task("tiny", (), str(tmp_path / "s" / "seed=0.h5"), stage="$EMERGENCE_NO_SUCH_DIR/runs")
    with pytest.raises(TaskFailed, match="names an environment variable this worker"):
        staged_path(task)
    monkeypatch.setenv("EMERGENCE_NO_SUCH_DIR", str(tmp_path / "scratch"))
    assert staged_path(task).parent.parent == tmp_path / "scratch" / "runs"
    assert staged_path(task).name == "seed=0.h5"
