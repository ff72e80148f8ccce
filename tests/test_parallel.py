"""Data parallelism on a device mesh (recorder/parallel.py): 2 and 8 host devices against one, same global batch.

JAX's CPU device count is fixed when its backends start, so the runs happen in a child process that asks for
8 host devices first; this process compares the files they wrote. The sums over the batch (the gradient's
all-reduce, BatchNorm's statistics) run in another order on a mesh, so values agree to float32 rounding, not
bitwise. The runs use SGD: Adam's first update is lr · sign(g), so a gradient that is zero up to rounding
moves its weight by ±lr depending on the summation order (seen on vgg_bn: a conv6 channel off by 1e-5 after
one step), a property of Adam, not of the mesh. tiny_cnn meets rtol=1e-5, atol=1e-6. vgg_bn's BatchNorm divides
by the standard deviation of 16 images per channel, which magnifies those roundings where it is small: after 3
steps some conv1 values differ by 4e-6 (5e-5 of their size), and training amplifies such differences (2e-5
after 5 steps), as any other summation order would; so it runs 3 steps and each array is held to
rtol=1e-5 with atol=1e-5 of its largest magnitude (measured: at most 3.2e-5 on conv6, whose values reach 20).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recorder.config import ConfigError, RunConfig
from recorder.plan import make_plan
from runfile.reader import open_run

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
from recorder.config import RunConfig
from recorder.run import record
out = sys.argv[1]
for model, batch, steps in (("tiny_cnn", 32, 6), ("vgg_bn", 16, 3)):
    for name, devices in (("1", 1), ("2", 2), ("8", 8), ("2again", 2)):
        config = RunConfig(model=model, activation="relu", dataset="synthetic", synthetic_size=256,
                           batch_size=batch, steps=steps, eval_every=3, optimizer="sgd", learning_rate=0.05, eval_size=40, analysis_probes=16,
                           dtype="float32", checkpoint_every=0, devices=devices, kernels="all")
        record(config, f"{out}/{model}-{name}.h5", show_progress=False, log=lambda s: None)
from recorder.run import resume
for name, devices, steps in (("straight", 1, 10), ("resumed", 2, 6)):
    config = RunConfig(model="tiny_cnn", activation="relu", dataset="synthetic", synthetic_size=256, batch_size=32,
                       steps=steps, eval_every=5, eval_size=40, analysis_probes=16, dtype="float32",
                       optimizer="sgd", learning_rate=0.05, checkpoint_every=3, devices=devices)
    record(config, f"{out}/{name}.h5", show_progress=False, log=lambda s: None)
resume(f"{out}/resumed.h5", ["steps=10", "devices=1"], show_progress=False, log=lambda s: None)
from recorder.config import ConfigError
from recorder.plan import make_plan
try:
    make_plan(RunConfig(model="tiny_cnn", dataset="synthetic", synthetic_size=256, batch_size=30, steps=2, devices=8))
except ConfigError as e:
    open(f"{out}/divide.txt", "w").write(str(e))
"""


def _contents(path: Path) -> dict[str, np.ndarray]:
    with open_run(path) as run:
        out = {f"act/{n}": run.activations(n) for n in run.layers}
        out["logits"] = run.logits()
        out |= {f"w/{p}": v for p, v in run.weights(int(run.weight_steps[-1])).items()}
        out |= {f"gram/{n}": run.grams(n) for n in run.layers}
        out["loss"] = run.train_metrics().loss
    return out


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mesh")
    # a persistent compilation cache of its own: the "2again" runs load their programs (35 s instead of 43 s)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("mesh-cache")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}
    subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(folder)], check=True, cwd=ROOT, timeout=600,
                   env=env)
    return folder


@pytest.mark.parametrize("model", ["tiny_cnn", "vgg_bn"])
def test_two_and_eight_devices_record_what_one_device_records(mesh_runs, model):
    one = _contents(mesh_runs / f"{model}-1.h5")
    for devices in ("2", "8"):
        other = _contents(mesh_runs / f"{model}-{devices}.h5")
        assert other.keys() == one.keys()
        for key, value in one.items():
            atol = 1e-6 if model == "tiny_cnn" else 1e-5 * float(np.abs(value).max())
            np.testing.assert_allclose(other[key], value, rtol=1e-5, atol=atol, err_msg=f"{devices} devices: {key}")


@pytest.mark.parametrize("model", ["tiny_cnn", "vgg_bn"])
def test_the_same_layout_twice_is_bitwise_equal(mesh_runs, model):
    a, b = _contents(mesh_runs / f"{model}-2.h5"), _contents(mesh_runs / f"{model}-2again.h5")
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_a_run_recorded_on_two_devices_resumes_on_one(mesh_runs):
    straight, resumed = _contents(mesh_runs / "straight.h5"), _contents(mesh_runs / "resumed.h5")
    assert len(resumed["loss"]) == 10
    for key, value in straight.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_batch_that_does_not_divide_and_too_many_devices_are_clear_errors(mesh_runs):
    assert (mesh_runs / "divide.txt").read_text() == ("batch_size 30 does not divide over 8 devices; use a multiple "
                                                      "of 8 (e.g. 24)")
    base = RunConfig(model="tiny_cnn", dataset="synthetic", synthetic_size=256, batch_size=30, steps=2)
    with pytest.raises(ConfigError, match="devices=64 but JAX sees 1"):
        make_plan(RunConfig(**{**base.__dict__, "devices": 64}))
    with pytest.raises(ConfigError, match="devices=0|devices must be >= 1"):
        RunConfig(**{**base.__dict__, "devices": 0}).validate()


def test_a_byte_budget_chooses_the_densest_schedule_that_fits(tmp_path):
    from recorder.budget import budget_schedule
    from recorder.run import record
    from recorder.schedule import recorded_steps

    config = RunConfig(model="tiny_cnn", dataset="synthetic", synthetic_size=512, batch_size=16, steps=60,
                       analysis_probes=16, eval_every=30, checkpoint_every=0)
    plan = make_plan(config)
    assert budget_schedule(plan, 1000)[0] == "every"
    schedule, why = budget_schedule(plan, 2.0)
    n = int(schedule.split(":")[1])
    assert schedule.startswith("log:") and 2 <= n < 61 and "fit" in why
    bigger = int(budget_schedule(plan, 2.5)[0].split(":")[1])
    assert bigger > n  # a larger budget buys more frames
    record(RunConfig(**{**config.__dict__, "budget_mb": 2.0}), tmp_path / "b.h5", show_progress=False,
           log=lambda s: None)
    with open_run(tmp_path / "b.h5") as run:
        assert run.config["schedule"] == schedule and run.config["budget_mb"] == 2.0
        assert run.steps.tolist() == recorded_steps(schedule, 60).tolist()
    assert (tmp_path / "b.h5").stat().st_size <= 2.0e6
    with pytest.raises(ConfigError, match="budget_mb=0.01 is too small"):
        budget_schedule(plan, 0.01)


def test_a_channel_subset_records_those_channels_exactly_and_analyses_all_of_them(tmp_path):
    from recorder.run import record
    from replay.animate import LayerFrames

    base = RunConfig(model="tiny_cnn", dataset="synthetic", synthetic_size=256, batch_size=32, steps=4,
                     analysis_probes=16, checkpoint_every=0, dtype="float32")
    record(base, tmp_path / "all.h5", show_progress=False, log=lambda s: None)
    record(RunConfig(**{**base.__dict__, "channels": "2,5,11"}), tmp_path / "sub.h5", show_progress=False,
           log=lambda s: None)
    with open_run(tmp_path / "all.h5") as full, open_run(tmp_path / "sub.h5") as sub:
        for layer in full.layers:
            assert sub.layer_channels(layer) == [2, 5, 11] if layer == "conv2" else [2, 5]  # conv1 has 8
            want = full.activations(layer)[..., sub.layer_channels(layer)]
            assert np.array_equal(sub.activations(layer), want)
            assert np.array_equal(sub.grams(layer), full.grams(layer))
        frames = LayerFrames(sub, "conv2")
        assert frames.grid.num_channels == 3
        from replay.info import describe

        assert "channels 2, 5, 11 of 16" in describe(sub)
    with pytest.raises(ConfigError, match="channels='x:y'"):
        RunConfig(channels="x:y").validate()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(args: list[str]) -> list[str]:
    """Runs `emergence ARGS` as two loopback processes of one jax.distributed run; returns their outputs."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "emergence", *args, "--no-progress", "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs + [procs[0].pid]


def test_two_processes_of_two_devices_record_and_resume_what_one_process_does(tmp_path):
    """jax.distributed on loopback (gloo collectives): process 0 writes the file, process 1 only computes."""
    from experiments import get_experiment
    from recorder.config import apply_overrides
    from recorder.run import record

    sets = ["steps=6", "synthetic_size=256", "batch_size=32", "eval_every=3", "eval_size=40", "analysis_probes=16",
            "dtype=float32", "optimizer=sgd", "learning_rate=0.05", "checkpoint_every=3", "activation=relu"]
    out0, out1, pid = _two_processes(["record", "tiny", "--out", str(tmp_path), "--name", "two", "--set", "devices=4",
                                      *[a for s in sets for a in ("--set", s)]])
    assert "done: 6 steps" in out0 and "done:" not in out1  # process 1 logs nothing of its own
    record(apply_overrides(get_experiment("tiny"), sets), tmp_path / "one.h5", show_progress=False, log=lambda s: None)
    with open_run(tmp_path / "two.h5") as run:
        assert run.writer_identity["pid"] == pid and run.config["devices"] == 4 and run.status == "completed"
    one, two = _contents(tmp_path / "one.h5"), _contents(tmp_path / "two.h5")
    for key, value in one.items():
        np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.ckpt", "one.h5", "two.ckpt", "two.h5"]

    # both processes continue the run from its last checkpoint to step 10; one process does the same
    out0, out1, pid = _two_processes(["resume", str(tmp_path / "two.h5"), "--set", "steps=10"])
    assert "resuming" in out0 and "done: 10 steps" in out0 and "done:" not in out1
    record(apply_overrides(get_experiment("tiny"), [*sets, "steps=10"]), tmp_path / "one10.h5", show_progress=False,
           log=lambda s: None)
    one, two = _contents(tmp_path / "one10.h5"), _contents(tmp_path / "two.h5")
    assert len(two["loss"]) == 10
    for key, value in one.items():
        np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


LONG_RUN = ["steps=400", "synthetic_size=256", "batch_size=32", "eval_every=0", "eval_size=40", "analysis_probes=16",
            "checkpoint_every=0", "devices=4"]


def _recording_two(folder: Path) -> list[subprocess.Popen]:
    """Two loopback processes recording LONG_RUN into folder/two.h5, returned once it holds a few frames."""
    import time

    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "emergence", "record", "tiny", "--out", str(folder), "--name",
                               "two", *[a for s in LONG_RUN for a in ("--set", s)], "--no-progress", "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and procs[0].poll() is None:  # until training is under way
        time.sleep(0.5)
        try:
            with open_run(folder / "two.h5") as run:
                if len(run.steps) >= 3:
                    break
        except (OSError, ValueError):
            pass  # not there or not readable yet
    return procs


def _ended(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """The processes' outputs, once all have ended within `timeout` seconds (killed and failed otherwise)."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_ctrl_c_to_one_process_stops_both_at_one_step_and_the_run_resumes(tmp_path):
    """SIGINT to process 1, which writes nothing: the processes agree to stop at the same step (every
    SYNC_EVERY steps), checkpoint there together, and process 0 closes the file as interrupted, naming the
    signal and the process; the run then resumes in one process to its planned end with no gap."""
    import signal

    from recorder.checkpoints import checkpoint_dir
    from recorder.parallel import SYNC_EVERY

    path = tmp_path / "two.h5"
    procs = _recording_two(tmp_path)
    procs[1].send_signal(signal.SIGINT)
    outs = _ended(procs, 120)
    assert [p.returncode for p in procs] == [130, 130], outs
    with open_run(path) as run:
        stopped = int(run.steps[-1])
        assert run.status == "interrupted" and 0 < stopped < 400 and stopped % SYNC_EVERY == 0
        assert f"interrupted (SIGINT to process 1) at step {stopped}" in run.status_message
        assert run.steps.tolist() == list(range(stopped + 1))
    assert stopped in [int(p.name) for p in checkpoint_dir(path).iterdir() if p.name.isdigit()]

    resumed = subprocess.run([sys.executable, "-m", "emergence", "resume", str(path), "--no-progress"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {stopped} of 400" in resumed.stdout + resumed.stderr
    with open_run(path) as run:
        assert run.status == "completed" and run.steps.tolist() == list(range(401))
        assert run.train_metrics().step.tolist() == list(range(1, 401))


def test_a_burst_of_ctrl_c_stops_at_once_closes_the_file_and_leaves_no_process_waiting(tmp_path):
    """Ctrl-C pressed again and again on process 0: the second stops it at once, out of step with process 1,
    so it leaves without JAX's shutdown barrier (which would wait forever) and process 1 ends when its
    connections close; later presses are ignored until the file is closed, so it closes whole."""
    import signal
    import time

    procs = _recording_two(tmp_path)
    for _ in range(6):
        procs[0].send_signal(signal.SIGINT)
        time.sleep(0.1)
    outs = _ended(procs, 60)
    # 130: it left by itself; -SIGINT: a press after the file was closed (the default handler is back by then)
    assert procs[0].returncode in (130, -signal.SIGINT) and procs[1].returncode != 0, outs
    with open_run(tmp_path / "two.h5") as run:
        assert run.status == "interrupted" and len(run.steps) >= 3
