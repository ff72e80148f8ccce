"""The run file while it is written: background errors, live reading, and a SIGKILLed recorder."""

import dataclasses
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from runfile.async_writer import AsyncRunWriter, WriterError
from runfile.writer import H5RunWriter, LayerSpec, RunLayout
from replay import open_run


def _layout():
    return RunLayout(
        layers=(LayerSpec("conv1", (4, 4, 2), "tanh"),),
        num_classes=3,
        probe_images=np.zeros((2, 4, 4, 1), np.uint8),
        probe_labels=np.array([0, 1]),
        probe_indices=np.array([5, 7]),
        probe_dataset="synthetic",
        attrs={"experiment": "t", "config_json": "{}", "versions_json": "{}", "summary_json": "{}",
               "class_names_json": '["a", "b", "c"]', "planned_steps": 3, "record_schedule": "every"},
    )


def _frame(value):
    return {"conv1": np.full((2, 4, 4, 2), value, np.float32), "logits": np.zeros((2, 3), np.float32)}


def test_background_error_reaches_the_caller_and_marks_the_file_failed(tmp_path):
    path = tmp_path / "r.h5"
    writer = AsyncRunWriter(H5RunWriter(path, _layout()))
    writer.write_frame(0, _frame(0.5))
    writer.write_frame(1, {"conv1": np.zeros((9, 9))})  # wrong shape
    with pytest.raises(WriterError, match="keeps every frame written before the failure") as failed:
        writer.wait()
    assert "disk space" not in str(failed.value)  # a wrong value, not the disk: no hint about the disk
    with pytest.raises(WriterError):
        writer.close()
    with open_run(path) as run:
        assert run.status == "failed" and "writer error" in run.status_message
        assert run.steps.tolist() == [0]
        np.testing.assert_array_equal(run.activations("conv1"), np.full((1, 2, 4, 4, 2), 0.5))


def test_values_are_stored_unnormalised(tmp_path):
    path = tmp_path / "r.h5"
    with AsyncRunWriter(H5RunWriter(path, _layout())) as writer:
        for step, value in enumerate((-1.0, 0.0, 3.5)):
            writer.write_frame(step, _frame(value))
    with open_run(path) as run:
        assert run.activations("conv1")[:, 0, 0, 0, 0].tolist() == [-1.0, 0.0, 3.5]
        assert run.activations("conv1", [2]).shape == (1, 2, 4, 4, 2)
        with pytest.raises(KeyError, match="not recorded"):
            run.activations("conv1", [7])


def _frames_now(path):
    try:
        with open_run(path) as run:
            return run.num_frames, run.status
    except (OSError, ValueError):
        return 0, None


def _wait_for(path, at_least, deadline):
    while time.time() < deadline:
        n, status = _frames_now(path)
        if n >= at_least:
            return n, status
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach {at_least} frames in time")


def test_live_reading_and_sigkill(tmp_path):
    path = tmp_path / "live.h5"
    cmd = [sys.executable, "-m", "emergence", "record", "tiny", "--out", str(tmp_path), "--name", "live",
           "--no-progress", "--set", "steps=100000", "--set", "synthetic_size=256", "--set", "batch_size=32"]
    log = open(tmp_path / "recorder.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        first, status = _wait_for(path, 5, deadline)
        assert status == "running"
        seen, _ = _wait_for(path, first + 5, deadline)  # another process sees the file grow
        with open_run(path) as run:  # and reads the latest step's data while it is written
            latest = run.steps[-1]
            assert run.activations("conv2", [latest]).shape == (1, 10, 11, 11, 16)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    with open_run(path) as run:
        assert run.status == "running"  # it never got to say otherwise
        steps = run.steps
        assert len(steps) >= seen
        np.testing.assert_array_equal(steps, np.arange(len(steps)))
        for layer in run.layers:
            acts = run.activations(layer)
            assert acts.shape[0] == len(steps) and np.isfinite(acts).all()
        assert len(run.train_metrics().step) >= len(steps) - 2


@pytest.mark.parametrize("compression,threads,processes", [("gzip", 1, None), ("gzip", 3, True), ("gzip", 3, False),
                                                           ("none", 2, None), ("lzf", 2, None)])
def test_chunks_written_directly_decode_through_hdf5s_own_filters(tmp_path, compression, threads, processes):
    """gzip and none rows are encoded by the writer itself (shuffle + zlib, H5Dwrite_chunk), a batch of
    frames at once on `threads` threads or processes; h5py's ordinary read path, i.e. HDF5's filter pipeline,
    must give back exactly the values written, in order."""
    import dataclasses

    import h5py

    path = tmp_path / "r.h5"
    layout = dataclasses.replace(_layout(), compression=compression, dtype="float16")
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(2, 4, 4, 2)).astype(np.float16) for _ in range(7)]
    values[1][:] = values[4][:] = 0.0  # runs of zeros, which deflate shortens a lot
    writer = H5RunWriter(path, layout, encode_threads=threads, encode_processes=processes)
    for step, v in enumerate(values):
        writer.write_frame(step, {"conv1": v, "logits": np.full((2, 3), step, np.float32)}, 0.1 * step)
        writer.write_train(step, np.float32(step), np.float32(0.5), 0.0)
    with h5py.File(path, "r", swmr=True) as f:  # nothing flushed yet: the batch is staged whole
        assert f["layers/conv1/activations"].shape[0] == 0 and f["frames/step"].shape[0] == 0
    writer.close()
    with h5py.File(path, "r") as f:
        ds = f["layers/conv1/activations"]
        np.testing.assert_array_equal(ds[...], np.stack(values))
        filters = [ds.id.get_create_plist().get_filter(i)[0] for i in range(ds.id.get_create_plist().get_nfilters())]
        expected = {"gzip": [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE], "none": [],
                    "lzf": [h5py.h5z.FILTER_SHUFFLE, 32000]}[compression]
        assert filters == expected + [h5py.h5z.FILTER_FLETCHER32]  # every chunk checksummed (schema 7)
        assert f["frames/step"][...].tolist() == list(range(7)) and f["train/loss"][...].tolist() == list(range(7))
        assert f["frames/logits"][:, 0, 0].tolist() == list(range(7))
        if compression == "gzip":
            assert ds.id.get_storage_size() < np.stack(values).nbytes


def test_frames_beyond_the_staging_bound_are_written_before_the_flush(tmp_path, monkeypatch):
    """Host memory stays bounded: once STAGE_BYTES of frames wait, they are written as one batch; their
    steps follow at the flush, so a reader meanwhile counts none of them."""
    import runfile.writer as w

    frame_bytes = 2 * 4 * 4 * 2 * np.dtype(_layout().dtype).itemsize
    monkeypatch.setattr(w, "STAGE_BYTES", 3 * frame_bytes)
    path = tmp_path / "r.h5"
    writer = H5RunWriter(path, _layout(), encode_threads=2)
    for step in range(5):
        writer.write_frame(step, _frame(float(step)))
    with open_run(path) as run:
        assert run.steps.tolist() == []
        assert run._f["layers/conv1/activations"].shape[0] == 3  # the first three, in one batch
    writer.flush()
    with open_run(path) as run:
        assert run.steps.tolist() == [0, 1, 2, 3, 4]
        assert run.activations("conv1")[:, 0, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    writer.close()


def test_a_nearly_full_disk_stops_the_writer_before_a_write_that_would_not_fit(tmp_path, monkeypatch):
    """HDF5 is not consistent after a write that fails half way, so the writer checks the room first: the
    frames that fit are written, the first that might not is refused whole, and the file closes readable."""
    import errno

    import runfile.writer as w

    frame_bytes = sum(v.nbytes for v in _frame(0.0).values())
    end = {}

    def room(path, file_end):  # a disk with 2.5 frames (and the margin) free once the file is created
        end.setdefault("start", file_end)
        return end["start"] + w.ROOM_MARGIN + int(2.5 * frame_bytes) - file_end, errno.ENOSPC, "the free disk space"

    monkeypatch.setattr(w, "room", room)
    path = tmp_path / "r.h5"
    layout = dataclasses.replace(_layout(), compression="none", attrs={**_layout().attrs, "planned_steps": 5})
    writer = AsyncRunWriter(H5RunWriter(path, layout))
    for step in range(5):
        writer.write_frame(step, _frame(float(step)))
    with pytest.raises(WriterError, match=r"Errno 28\] the free disk space leaves room for .* not written"):
        writer.close()
    with open_run(path) as run:
        assert run.status == "failed" and "Errno 28" in run.status_message
        n = len(run.steps)
        assert 1 <= n < 5 and run.steps.tolist() == list(range(n))
        assert run.activations("conv1")[:, 0, 0, 0, 0].tolist() == [float(s) for s in range(n)]


class _SlowDisk(H5RunWriter):
    """The real writer on a disk that takes 40 ms per frame."""

    def write_frame(self, step, frame, wall_time=None):
        time.sleep(0.04)
        super().write_frame(step, frame, wall_time)


def test_a_writer_that_falls_behind_warns_once_and_reports_its_throughput(tmp_path, monkeypatch):
    import runfile.async_writer as aw

    monkeypatch.setattr(aw, "BEHIND_SECONDS", 0.3)
    messages = []
    layout = dataclasses.replace(_layout(), attrs={**_layout().attrs, "planned_steps": 40})
    with AsyncRunWriter(_SlowDisk(tmp_path / "r.h5", layout), max_pending=2) as writer:
        writer.on_behind = messages.append
        for step in range(40):
            writer.write_frame(step, _frame(0.1))
        writer.wait()
        assert writer.frame_bytes == 40 * (2 * 4 * 4 * 2 * 4 + 2 * 3 * 4)
        assert writer.busy_seconds >= 40 * 0.04 and writer.waited_seconds >= 0.3
    assert len(messages) == 1 and messages[0].startswith("warning: the writer is behind")
    assert "MB/s" in writer.throughput()
    assert writer.throughput().endswith("the bottleneck is the writer (encoding and HDF5); record fewer frames or "
                                        "probes, or use compression=lzf")


class _SlowSteps(AsyncRunWriter):
    """Host copies that wait, as for a device still computing the steps: the loop waits, the writer does not."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_host = lambda values: (time.sleep(0.04), values)[1]


def test_the_writer_summary_blames_the_device_when_the_loop_waited_for_steps(tmp_path):
    layout = dataclasses.replace(_layout(), attrs={**_layout().attrs, "planned_steps": 60})
    with _SlowSteps(H5RunWriter(tmp_path / "r.h5", layout), max_pending=2) as writer:
        assert writer.throughput().endswith("(no bottleneck)")  # nothing waited yet
        for step in range(60):
            writer.write_frame(step, _frame(0.1))
        writer.wait()
        summary = writer.throughput()
    assert writer.device_seconds >= 60 * 0.04 > writer.busy_seconds + writer.flush_seconds
    assert summary.endswith("the loop dispatches steps faster than the device computes them (not a writer bottleneck)")


def test_a_full_disk_in_the_writer_is_one_line_that_says_what_was_kept(tmp_path):
    """HDF5's raw error (a multi-line stack, buffer addresses) is never the message."""
    import errno as errno_codes

    from runfile.async_writer import AsyncRunWriter, WriterError

    class Full:
        path = tmp_path / "x.h5"

        def write_eval(self, *args):
            raise OSError(errno_codes.ENOSPC, "No space left on device\n  #000: H5Dio.c line 179 in H5Dwrite(): "
                                              "can't write data\n    major: Dataset at 0x55d0c0ffee")

        def flush(self):
            pass

        def set_status(self, status, message):
            self.status = (status, message)

        def close(self):
            pass

    writer = Full()
    w = AsyncRunWriter(writer)
    w.write_eval(3, 0.5, 0.9)
    with pytest.raises(WriterError) as caught:
        w.wait()
    message = str(caught.value)
    assert "\n" not in message and "0x55d0c0ffee" not in message and "the disk is full" in message
    assert "free some space" in message
    with pytest.raises(WriterError):
        w.close()
    assert writer.status[0] == "failed" and "\n" not in writer.status[1]


def test_a_reader_without_the_lock_does_not_keep_a_recorder_from_opening_the_file(tmp_path):
    """A sweep's progress line reads the staged file without HDF5's file lock, so the recorder it starts can
    open it for writing meanwhile, as `emergence resume` does; with the lock that failed (errno 11)."""
    from runfile.progress import run_progress

    path = tmp_path / "r.h5"
    with AsyncRunWriter(H5RunWriter(path, _layout())) as writer:
        writer.write_frame(0, _frame(0.5))
    write = [sys.executable, "-c", f"import h5py; h5py.File({str(path)!r}, 'r+').close()"]
    with open_run(path, locking=False) as run:
        assert run.steps.tolist() == [0]
        opened = subprocess.run(write, capture_output=True, text=True)
        assert opened.returncode == 0, opened.stderr[-500:]
    with open_run(path) as run:  # the default keeps HDF5's lock (a process may mix it with h5py's own opens)
        assert subprocess.run(write, capture_output=True, text=True).returncode != 0
    assert run_progress(path)["step"] == 0
    with open_run(path, locking=False) as free, open_run(path) as locked:  # one process, both settings asked:
        assert free.steps.tolist() == locked.steps.tolist() == [0]  # the second takes the setting held
