"""What keeps the writer's GIL hand-overs few: runfile/chunks.py (HDF5's H5Dwrite_chunk keeping the GIL),
runfile/deflate.py (one ISA-L call a chunk), runfile/encoders.py (deflate in processes of their own) and the
switch interval a writer holds."""

import sys
import zlib

import h5py
import numpy as np
import pytest

import runfile.chunks as chunks
import runfile.deflate as deflate
from runfile.encoders import EncoderProcesses
from runfile.async_writer import SWITCH_INTERVAL, AsyncRunWriter
from runfile.checksum import fletcher32, rows_with_checksums, with_checksum
from runfile.writer import DiscardingWriter, _encode_rows, _shuffle_deflate_checked


def _rows(n=5):
    return (np.arange(n * 6 * 7, dtype=np.float32).reshape(n, 6, 7) / 3).astype(np.float16)


def _write(path, rows, through_h5py):
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=rows.shape, chunks=(1, *rows.shape[1:]), dtype=rows.dtype, fletcher32=True)
        for i, row in enumerate(rows):
            chunk = with_checksum(row)
            if through_h5py:
                ds.id.write_direct_chunk((i, 0, 0), chunk.tobytes())
            else:
                chunks.write_chunks(ds, i, [chunk])


def test_a_chunk_written_keeping_the_gil_is_the_chunk_h5py_writes_and_reads_back_checked(tmp_path):
    assert chunks.native()  # h5py's libhdf5 exports H5Dwrite_chunk (Linux wheels, this machine)
    rows = _rows()
    _write(tmp_path / "mine.h5", rows, through_h5py=False)
    _write(tmp_path / "h5py.h5", rows, through_h5py=True)
    with h5py.File(tmp_path / "mine.h5") as mine, h5py.File(tmp_path / "h5py.h5") as theirs:
        assert np.array_equal(mine["x"][...], rows)  # HDF5's filter verified every chunk's Fletcher-32 on read
        for i in range(len(rows)):
            assert mine["x"].id.read_direct_chunk((i, 0, 0)) == theirs["x"].id.read_direct_chunk((i, 0, 0))


def test_a_failed_chunk_write_raises_hdf5s_own_message_and_a_missing_library_falls_back_to_h5py(tmp_path, monkeypatch):
    rows = _rows(2)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        ds = f.create_dataset("x", shape=rows.shape, chunks=(1, *rows.shape[1:]), dtype=rows.dtype, fletcher32=True)
        with pytest.raises(OSError, match="offset exceeds dimensions"):
            chunks.write_chunks(ds, 9, [with_checksum(rows[0])])
        monkeypatch.setattr(chunks, "_native", lambda: None)
        chunks.write_chunks(ds, 1, [with_checksum(rows[1]).tobytes()])  # through h5py
        assert np.array_equal(ds[1], rows[1])


def test_rows_written_as_a_batch_of_chunks_are_the_chunks_written_one_by_one(tmp_path, monkeypatch):
    rows = _rows(6)
    out = np.full((6, rows[0].nbytes + 4), 0xAB, np.uint8)
    batch = rows_with_checksums(rows, out)
    assert batch is out and all(batch[i].tobytes() == with_checksum(row).tobytes() for i, row in enumerate(rows))
    assert all(int(batch[i, -4:].view("<u4")[0]) == fletcher32(row) for i, row in enumerate(rows))
    _write(tmp_path / "one_by_one.h5", rows, through_h5py=False)
    for name, native in (("native.h5", True), ("h5py.h5", False)):
        if not native:
            monkeypatch.setattr(chunks, "_native", lambda: None)
        with h5py.File(tmp_path / name, "w") as f:
            ds = f.create_dataset("x", shape=rows.shape, chunks=(1, *rows.shape[1:]), dtype=rows.dtype, fletcher32=True)
            chunks.write_row_chunks(ds, 1, batch[1:4])  # rows 1 to 3, then the others
            chunks.write_chunks(ds, 4, (c if i else c.tobytes() for i, c in enumerate(batch[4:])))  # any buffers
            chunks.write_row_chunks(ds, 0, batch[:1])
            for write in (chunks.write_row_chunks, chunks.write_chunks):  # HDF5's own message, either way
                with pytest.raises(OSError, match="offset exceeds dimensions"):
                    write(ds, 9, batch[:2])
        with h5py.File(tmp_path / name) as mine, h5py.File(tmp_path / "one_by_one.h5") as theirs:
            assert np.array_equal(mine["x"][...], rows)  # every chunk's Fletcher-32 verified on read
            for i in range(len(rows)):
                assert mine["x"].id.read_direct_chunk((i, 0, 0)) == theirs["x"].id.read_direct_chunk((i, 0, 0))


def test_an_open_writer_holds_the_switch_interval_low_and_the_last_to_close_puts_it_back(tmp_path):
    before = sys.getswitchinterval()
    first = AsyncRunWriter(DiscardingWriter(tmp_path / "a.h5"), switch_interval=0.0005)
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    second = AsyncRunWriter(DiscardingWriter(tmp_path / "b.h5"), switch_interval=0.001)  # not raised by a second
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    first.close()
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    second.close()
    assert sys.getswitchinterval() == before
    untouched = AsyncRunWriter(DiscardingWriter(tmp_path / "c.h5"), switch_interval=None)
    assert sys.getswitchinterval() == before
    untouched.close()
    assert SWITCH_INTERVAL._holders == 0


def test_one_isal_call_a_chunk_makes_a_zlib_stream_of_the_bytes_and_without_the_library_python_isal_does(monkeypatch):
    assert deflate.native()  # python-isal's extension exports ISA-L's deflate (this machine's wheel)
    rng = np.random.default_rng(0)
    activations = np.maximum(rng.normal(size=(10, 28, 28, 16)), 0).astype(np.float16)
    for data in (activations, rng.integers(0, 256, 100_003, dtype=np.uint8), np.zeros(0, np.uint8), b"abc" * 999):
        raw = data if isinstance(data, bytes) else data.tobytes()
        out = deflate.compress(data)
        assert zlib.decompress(out) == raw and len(out) <= deflate.bound(len(raw))
    assert len(deflate.compress(activations)) < 0.7 * activations.nbytes  # it does compress
    monkeypatch.setattr(deflate, "_library", lambda: None)
    assert zlib.decompress(deflate.compress(activations)) == activations.tobytes()


def test_rows_deflated_as_a_batch_are_the_chunks_hdf5_reads_back(tmp_path):
    rows = np.maximum(np.random.default_rng(1).normal(size=(6, 4, 5, 3)), 0).astype(np.float16)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        ds = f.create_dataset("x", shape=rows.shape, chunks=(1, *rows.shape[1:]), dtype=rows.dtype, shuffle=True,
                              compression="gzip", fletcher32=True)
        for i, chunk in enumerate(_encode_rows(_shuffle_deflate_checked, rows)):
            chunks.write_chunks(ds, i, [chunk])
        assert np.array_equal(ds[...], rows)  # HDF5's own unshuffle, inflate and Fletcher-32 check
        assert ds.id.read_direct_chunk((2, 0, 0, 0))[1] == _shuffle_deflate_checked(rows[2]).tobytes()


def _expected(rows, checked):
    return [bytes(c) for c in (_encode_rows(_shuffle_deflate_checked, rows) if checked else
                               [deflate.compress(row) for row in deflate.shuffle(rows)])]


def test_encoding_processes_make_the_chunks_the_threads_make_and_a_dead_one_hands_back_to_the_threads(tmp_path):
    import os

    rng = np.random.default_rng(2)
    big = np.maximum(rng.normal(size=(5, 10, 28, 28, 16)), 0).astype(np.float16)  # 250 kB rows
    small = rng.normal(size=(3, 7)).astype(np.float32)
    tasks = [(big[:3], True), (big[3:], True), (small, False)]
    fell_back = []

    def fallback(rows, checked):
        fell_back.append(len(rows))
        return _expected(rows, checked)

    processes = EncoderProcesses(2, capacity=800_000)  # two rounds: the memory file holds three big rows
    try:
        done = processes.encode(tasks, fallback)
        assert done is not None and len(done) == 3
        for (rows, checked), get in zip(tasks, done):
            assert [c.tobytes() for c in get()] == _expected(rows, checked)
        assert fell_back == [] and not processes.failed
        many = [(big[i:i + 1], True) for i in range(5)] + [(small, False)] * 3  # more tasks than go out at once
        done = processes.encode(many, fallback)
        pids = [w.pid for w in processes._workers]
        for worker in processes._workers:  # both die with tasks still to hand out
            worker.kill()
            worker.wait()
        assert [[bytes(c) for c in get()] for get in done] == [_expected(*task) for task in many]
        assert processes.failed and fell_back and processes._workers == []  # the rest encoded here
        assert processes.encode(tasks, fallback) is None  # and the next batch is the threads'
    finally:
        processes.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_encoding_processes_of_a_killed_writer_end_with_it(tmp_path):
    import os
    import signal
    import subprocess
    import time

    script = ("import sys, time\nfrom runfile.encoders import EncoderProcesses\np = EncoderProcesses(2)\n"
              "print(*(w.pid for w in p._workers), flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd())
    pids = [int(x) for x in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.time() + 20
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    assert alive == []  # their stdin closed with the parent: they ended


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie (its parent gone, not yet reaped) ended
    except FileNotFoundError:
        return False
