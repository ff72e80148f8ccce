"""Never lose a run: kill -9 and signals leave files that repair and resume to exactly the uninterrupted
run; honest states; a second writer refused; divergence caught; every HDF5 tool reads the files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import tiny_config
from emergence.cli import main
from recorder import Capture, Probes, Recorder
from recorder.checkpoints import checkpoint_dir
from runfile.repair import RepairError, open_flags, repair
from recorder.lifecycle import RunStopped
from recorder.run import record
from runfile.identity import differences
from runfile.reader import RunFileError, open_run

TINY = ["--set", "steps=160", "--set", "checkpoint_every=25", "--set", "eval_every=20"]
LEARN = ["--set", "steps=9", "--set", "checkpoint_every=3", "--set", "eval_every=3", "--set", "eval_size=200",
         "--set", "analysis_probes=32"]
ON_CI = os.environ.get("CI") == "true"


def start(out, name, experiment="tiny", sets=TINY):
    return subprocess.Popen([sys.executable, "-m", "emergence", "record", experiment, "--out", str(out), "--name",
                             name, "--no-progress", *sets], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout):
    """Waits for the process, keeps its stderr as `stderr_text`, closes its pipe; returns the exit code."""
    proc.stderr_text = proc.communicate(timeout=timeout)[1]
    return proc.returncode


def frames_of(path):
    try:
        with open_run(path) as run:
            return run.num_frames
    except Exception:  # not created yet, or caught before its first flush
        return 0


def wait_until(proc, ready, timeout=240):
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the recording ended early ({finish(proc, 30)}): {proc.stderr_text[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            finish(proc, 30)
            pytest.fail("the recording did not get far enough in time")
        time.sleep(0.05)


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted tiny run that every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("ref")
    proc = start(out, "run")
    assert finish(proc, 300) == 0, proc.stderr_text
    return out / "run.h5"


def test_kill_9_then_repair_then_every_reader_opens_it_and_resume_is_bitwise_identical(reference, tmp_path, capsys):
    path = tmp_path / "run.h5"
    proc = start(tmp_path, "run")
    wait_until(proc, lambda: frames_of(path) >= 80)
    proc.send_signal(signal.SIGKILL)
    finish(proc, 30)
    with open_run(path) as run:  # SWMR readers open it at once; the state says what happened
        state, reason = run.state()
        assert state == "killed" and f"process {proc.pid}" in reason
        last = run.last_step()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")  # what every non-SWMR reader meets before repair
    assert open_flags(path) != 0
    code, out, _ = cli(capsys, "repair", str(path))
    assert code == 0 and f"killed at step {last}" in out
    assert open_flags(path) == 0
    with h5py.File(path, "r") as f:  # a plain reader, and the file says what happened
        assert f["status"][()] == b"killed" and f"killed at step {last}".encode() in f["status_message"][()]
        assert f["frames/step"].shape[0] == f["layers/conv1/activations"].shape[0]  # rows cut to complete ones
    with open_run(path) as run:
        assert run.state()[0] == "killed" and run.num_frames >= 80
        last = run.num_frames - 1
    if shutil.which("h5dump") or ON_CI:  # HDF5 1.10's tools too (see the last test)
        listing = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and "ERROR" not in listing.stdout + listing.stderr
        dump = subprocess.run(["h5dump", "-d", "/layers/conv1/activations", "-s", f"{last},0,0,0,0", "-c",
                               "1,10,26,26,8", "-o", os.devnull, str(path)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0 and "error" not in dump.stderr.lower()
    code, _, _ = cli(capsys, "resume", str(path), "--no-progress")
    assert code == 0
    assert differences(reference, path) == []
    with open_run(path) as run:
        assert run.state() == ("completed", "") and run.test_metrics()[2] > 0


def test_sigint_stops_after_the_step_in_flight_with_a_checkpoint_and_resumes_identically(reference, tmp_path, capsys):
    path = tmp_path / "run.h5"
    proc = start(tmp_path, "run")
    wait_until(proc, lambda: frames_of(path) >= 40)
    proc.send_signal(signal.SIGINT)
    assert finish(proc, 60) == 130, proc.stderr_text[-3000:]
    with h5py.File(path, "r") as f:  # closed properly: plain readers open it without repair
        stopped = int(f["train/step"][-1])
        assert f["status"][()] == b"interrupted"
        assert f"(SIGINT) at step {stopped}".encode() in f["status_message"][()]
        assert f["frames/step"][-1] == stopped  # every queued frame was written before the file closed
    assert str(stopped) in os.listdir(checkpoint_dir(path))  # and a checkpoint of exactly that step
    code, _, err = cli(capsys, "resume", str(path), "--no-progress")
    assert code == 0 and f"at step {stopped} of 160 from its checkpoint" in err
    assert differences(reference, path) == []


def test_resume_without_any_checkpoint_starts_from_the_initial_model(reference, tmp_path, capsys):
    path = tmp_path / "run.h5"
    shutil.copy(reference, path)
    with h5py.File(path, "r+") as f:  # as if killed early: no checkpoint, the file holds steps 0..40
        from runfile.writer import trim_rows

        trim_rows(f, 40)
        f["status"][()] = np.bytes_(b"killed")
    code, _, err = cli(capsys, "resume", str(path), "--no-progress")
    assert code == 0 and "at step 0 of 160 from the initial model" in err
    assert differences(reference, path) == []


def test_extending_a_completed_run_appends_and_keeps_every_recorded_row(reference, tmp_path, capsys):
    path = tmp_path / "run.h5"
    shutil.copy(reference, path)
    shutil.copytree(checkpoint_dir(reference), checkpoint_dir(path))
    code, _, err = cli(capsys, "resume", str(path), "--no-progress")
    assert code == 2 and "to extend it, raise epochs or steps" in err
    code, _, _ = cli(capsys, "resume", str(path), "--set", "steps=190", "--no-progress")
    assert code == 0
    with open_run(reference) as a, open_run(path) as b:
        assert b.planned_steps == 190 and b.steps.tolist() == list(range(191)) and b.state()[0] == "completed"
        assert b.train_metrics().step.tolist() == list(range(1, 191))
        np.testing.assert_array_equal(b.activations("conv2", range(161)), a.activations("conv2", range(161)))
        np.testing.assert_array_equal(b.train_metrics().loss[:160], a.train_metrics().loss)
        assert b.activations("conv2", [190]).std() > 0
    code, _, err = cli(capsys, "resume", str(path), "--set", "learning_rate=0.1")
    assert code == 2 and "resume cannot change learning_rate=0.1" in err


def test_a_short_learn_to_see_run_killed_and_resumed_is_bitwise_identical(tmp_path, capsys):
    ref = start(tmp_path, "ref", "learn_to_see", LEARN)
    assert finish(ref, 600) == 0, ref.stderr_text
    path = tmp_path / "run.h5"
    proc = start(tmp_path, "run", "learn_to_see", LEARN)
    wait_until(proc, lambda: checkpoint_dir(path).is_dir() and "3" in os.listdir(checkpoint_dir(path)), timeout=600)
    proc.send_signal(signal.SIGKILL)
    finish(proc, 30)
    code, _, err = cli(capsys, "resume", str(path), "--no-progress")
    assert code == 0, err
    assert differences(tmp_path / "ref.h5", path) == []


def test_a_second_writer_is_refused_and_the_live_run_is_untouched(tmp_path, capsys):
    path = tmp_path / "run.h5"
    proc = start(tmp_path, "run", sets=["--set", "steps=100000", "--set", "checkpoint_every=0"])
    try:
        wait_until(proc, lambda: frames_of(path) >= 5)
        code, _, err = cli(capsys, "record", "tiny", "--out", str(tmp_path), "--name", "run", "--overwrite")
        assert code == 2 and f"being recorded right now by process {proc.pid}" in err
        code, _, err = cli(capsys, "resume", str(path))
        assert code == 2 and "still being recorded by a live process" in err
        with pytest.raises(RepairError, match=f"being written by process {proc.pid}"):
            repair(path)
        with open_run(path) as run:
            assert run.state() == ("recording", "")
    finally:
        proc.kill()
        finish(proc, 30)
    with open_run(path) as run:
        assert run.state()[0] == "killed"


def test_divergence_stops_with_its_step_and_keeps_only_finite_checkpoints(tmp_path):
    config = tiny_config(steps=40, optimizer="sgd", learning_rate=1e37, checkpoint_every=1)
    with pytest.raises(RunStopped, match="diverged at step"):
        record(config, tmp_path / "d.h5", show_progress=False, log=lambda s: None)
    with open_run(tmp_path / "d.h5") as run:
        state, reason = run.state()
        first = int(reason.split("diverged at step ")[1].split(":")[0])
        losses = run.train_metrics().loss
        assert state == "diverged" and run.last_step() < 40
        assert np.isfinite(losses[: first - 1]).all()  # the steps before were finite
        assert first <= run.last_step() <= first + 8  # stopped within the writer queue's depth
    saved = [int(s) for s in os.listdir(checkpoint_dir(tmp_path / "d.h5"))]
    assert saved and max(saved) < first  # the last finite checkpoint is kept, nothing after

    record(tiny_config(steps=8, optimizer="sgd", learning_rate=1e37, on_nonfinite="continue"), tmp_path / "c.h5",
           show_progress=False, log=lambda s: None)
    with open_run(tmp_path / "c.h5") as run:
        state, reason = run.state()
        assert state == "completed" and "non-finite values from step" in reason and run.num_frames == 9


def test_the_recorder_api_notes_the_first_non_finite_loss(tmp_path):
    import jax.numpy as jnp

    probes = Probes(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), ("a", "b"))
    capture = Capture.function(lambda p, x: {"act": jnp.tanh(x * p)}, 1.0, np.zeros((2, 4, 4, 1), np.float32))
    with Recorder(tmp_path / "r.h5", probes, capture, planned_steps=6) as rec:
        for step, loss in enumerate([1.0, 0.5, np.nan, 0.2, np.inf, 0.1], start=1):
            rec.write(step, metrics={"loss": loss, "accuracy": 0.5})
        rec.wait()
        assert rec.nonfinite_step == 3
        rec.write(7, metrics={"finite": False})  # an in-step flag alone also counts, but the first stays
        rec.wait()
        assert rec.nonfinite_step == 3


def test_a_full_disk_fails_the_run_with_one_clear_message_and_keeps_what_was_written(tmp_path):
    """The file size limit (RLIMIT_FSIZE) makes writes fail as a full disk does."""
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000)); "
              "from emergence.cli import main; sys.argv[0] = 'emergence'; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", script, "record", "tiny", "--out", str(tmp_path), "--name", "full",
                           "--no-progress", "--set", "steps=200", "--set", "checkpoint_every=0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Check free disk space" in proc.stderr
    with open_run(tmp_path / "full.h5") as run:
        assert run.status == "failed" and "WriterError" in run.status_message and "Errno 27" in run.status_message
        n = run.num_frames  # every frame of the last flush before the failure is readable
        assert n >= 1 and run.activations("conv2").shape == (n, 10, 11, 11, 16)


@pytest.mark.parametrize("free_mb,advice", [(20.0, "--set budget_mb=16 picks a frame schedule that fits"),
                                             (0.5, "even two frames would not fit")])
def test_a_run_that_may_not_fit_the_disk_is_told_so_before_training(tmp_path, monkeypatch, free_mb, advice):
    import errno

    import recorder.run

    monkeypatch.setattr(recorder.run, "room", lambda path, end: (free_mb * 1e6, errno.ENOSPC, "the free disk space"))
    said = []
    record(tiny_config(steps=200, checkpoint_every=0), tmp_path / "r.h5", show_progress=False, log=said.append)
    warning = [s for s in said if s.startswith("warning: the free disk space leaves room for")]
    projected = next(s for s in said if s.startswith("projected file size")).split("at most ")[1].split(" MB")[0]
    assert len(warning) == 1 and f"may write up to {projected} MB" in warning[0] and advice in warning[0]


def test_hdf5_1_10_tools_read_every_dataset(reference, tmp_path):
    """Debian's hdf5-tools (HDF5 1.10) list and dump every dataset, filtered ones included."""
    if shutil.which("h5dump") is None:
        if ON_CI:
            pytest.fail("h5dump is missing: ./setup.sh installs Debian's hdf5-tools for this test")
        pytest.skip("h5dump not installed (./setup.sh installs hdf5-tools)")
    version = subprocess.run(["h5dump", "--version"], capture_output=True, text=True).stdout
    listing = subprocess.run(["h5ls", "-r", str(reference)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "ERROR" not in listing.stdout + listing.stderr
    assert "/layers/conv1/activations Dataset {161/Inf, 10, 26, 26, 8}" in listing.stdout
    dump = subprocess.run(["h5dump", "-y", "-A", "0", "-m", "%.17g", "-d", "/layers/conv2/activations", "-s", "160,0,0,0,0", "-c", "1,1,1,1,4",
                           str(reference)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "ERROR" not in dump.stdout + dump.stderr, (version, dump.stderr)
    with open_run(reference) as run:
        want = run.activations("conv2", [160])[0, 0, 0, 0, :4]
    got = [float(v) for v in dump.stdout.split("DATA {")[1].split("}")[0].split(",")]
    np.testing.assert_array_equal(got, want)  # h5dump decodes the writer's own deflate chunks to the same values
    small = tmp_path / "small.h5"  # every dataset of a whole run, its analysis Grams included
    record(tiny_config(steps=6), small, show_progress=False, log=lambda s: None)
    full = subprocess.run(["h5dump", "-o", os.devnull, str(small)], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0 and "error" not in full.stderr.lower() and full.stdout.count('DATASET "gram"') == 2


def test_a_superblock_that_claims_the_space_of_a_failed_write_is_fitted_to_the_file(tmp_path):
    """A write that fails at a full disk leaves its reserved space in the superblock's end-of-file address."""
    from runfile.repair import _superblock_end, fit_end_of_file, lookup3

    path = tmp_path / "r.h5"
    record(tiny_config(steps=4), path, show_progress=False, log=lambda s: None)
    with open_run(path) as run:
        want = run.activations("conv2")
    offset, block, at, width = _superblock_end(path)
    size = path.stat().st_size
    block[at:at + width] = (size - offset + 26_326).to_bytes(width, "little")  # as the full-disk run left it
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(block) + lookup3(bytes(block)).to_bytes(4, "little"))
    with pytest.raises(RunFileError, match="cut short"):
        open_run(path)
    assert fit_end_of_file(path) and not fit_end_of_file(path)
    with open_run(path) as run:
        np.testing.assert_array_equal(run.activations("conv2"), want)


def test_two_sigterms_are_named_sigterm_not_ctrl_c(tmp_path):
    path = tmp_path / "run.h5"
    proc = start(tmp_path, "run", sets=["--set", "steps=100000", "--set", "checkpoint_every=0"])
    try:
        wait_until(proc, lambda: frames_of(path) >= 5)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        assert finish(proc, 60) == 130, proc.stderr_text[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            finish(proc, 30)
    with h5py.File(path, "r") as f:
        message = f["status_message"][()].decode()
        assert f["status"][()] == b"interrupted" and "(SIGTERM)" in message and "Ctrl-C" not in message, message


def test_a_flipped_byte_in_a_frame_is_caught_by_every_hdf5_reader(tmp_path, capsys):
    """Fletcher-32 on every chunk (schema 7): h5py, h5dump and emergence refuse the damaged frame instead of
    returning wrong numbers; the other frames still read."""
    path = tmp_path / "run.h5"
    record(tiny_config(steps=3), path, show_progress=False, log=lambda s: None)
    with h5py.File(path, "r") as f:
        info = f["layers/conv1/activations"].id.get_chunk_info(1)  # the frame of step 1
        good = f["layers/conv1/activations"][2]
    data = bytearray(path.read_bytes())
    data[info.byte_offset + info.size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with h5py.File(path, "r") as f:
        with pytest.raises(OSError, match="filter returned failure|checksum"):
            f["layers/conv1/activations"][1]
        np.testing.assert_array_equal(f["layers/conv1/activations"][2], good)
    if shutil.which("h5dump") or ON_CI:
        dump = subprocess.run(["h5dump", "-d", "/layers/conv1/activations", "-o", os.devnull, str(path)],
                              capture_output=True, text=True, timeout=60)
        assert dump.returncode != 0
    code, _, err = cli(capsys, "replay", str(path), "--out", str(tmp_path / "out"))
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
    code, out, _ = cli(capsys, "verify", str(path))  # names the dataset and the step of the damaged frame
    assert code == 1 and "damaged: /layers/conv1/activations (steps 1)" in out
    code, out, _ = cli(capsys, "info", str(path))
    assert code == 1 and "DAMAGED: /layers/conv1/activations (steps 1)" in out
    code, out, _ = cli(capsys, "verify", "--quick", str(path))  # the quick check skips the frames
    assert code == 0 and "every chunk but the frames'" in out


def test_verify_names_damaged_rows_by_their_steps_and_passes_a_whole_file(tmp_path, capsys):
    path = tmp_path / "run.h5"
    record(tiny_config(steps=3, snapshots=3), path, show_progress=False, log=lambda s: None)
    code, out, _ = cli(capsys, "verify", str(path))
    assert code == 0 and ": ok: metadata and every chunk read back" in out
    with h5py.File(path, "r") as f:
        weights = json.loads(f["weights"].attrs["specs_json"])[0]["path"]
        info = f[f"weights/values/{weights}"].id.get_chunk_info(2)  # the weights of the last stored step
        last = int(f["weights/step"][2])
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 1] ^= 0x40
    path.write_bytes(bytes(data))
    code, out, _ = cli(capsys, "verify", str(path))
    assert code == 1 and f"/weights/values/{weights} (steps {last})" in out
