"""Deflating a batch's chunks in processes of their own, so the training process's GIL is not shared.

Encoding threads share the GIL with the training thread: each chunk's deflate lets it go and takes it back,
and beside a thread that runs Python that wait is up to a switch interval (runfile/chunks.py). Processes
have their own: `EncoderProcesses` starts `runfile.encode_worker` processes (plain `python -m`, so nothing
of the parent's `__main__` is run again), which read the rows from one shared memory file (Linux
`memfd_create`) and write the chunks into another; a task's description and its chunks' lengths go over
pipes. The parent copies the rows in and the chunks out keeping the GIL (libc's memmove), so a batch costs it
one GIL hand-over per task, however many chunks.

The memory files are freed with the last process holding them, so a killed run leaves nothing behind; a
worker whose parent dies sees its stdin close and ends. If a worker fails (or cannot start), `encode`
returns None and the writer encodes on its own threads from then on.
"""

from __future__ import annotations

import collections
import functools
import mmap
import os
import selectors
import subprocess
import sys
from typing import Any, Callable, Sequence

import numpy as np

from runfile.checksum import _memmove
from runfile.deflate import bound

CAPACITY = 32 << 20  # bytes of rows per round; twice that for their chunks (`bound` of each row and a checksum)
ALIGN = 64
ANSWER_SECONDS = 60.0  # a batch whose workers say nothing for this long goes to the threads (they hang)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _stride(row_bytes: int) -> int:
    """Room for one row's chunk in the output file: its deflate bound and a checksum, aligned."""
    return _align(bound(row_bytes) + 4)


class EncoderProcesses:
    """`workers` encoding processes and the two memory files they share with this one."""

    def __init__(self, workers: int, capacity: int = CAPACITY):
        self.capacity, self.out_capacity = capacity, 2 * capacity
        self._fds = [os.memfd_create("emergence-rows"), os.memfd_create("emergence-chunks")]
        os.ftruncate(self._fds[0], self.capacity)
        os.ftruncate(self._fds[1], self.out_capacity)
        self._in = np.frombuffer(mmap.mmap(self._fds[0], self.capacity), np.uint8)
        self._out = np.frombuffer(mmap.mmap(self._fds[1], self.out_capacity), np.uint8)
        self._workers: list[subprocess.Popen] = []
        self.failed = False  # a worker failed: closed, the threads encode from then on
        try:
            for _ in range(workers):
                self._workers.append(subprocess.Popen(
                    [sys.executable, "-m", "runfile.encode_worker", *map(str, self._fds)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, pass_fds=self._fds, env={**os.environ, "PYTHONPATH": _path()}))
        except BaseException:
            self.close()
            raise

    def encode(self, tasks: Sequence[tuple[np.ndarray, bool]],
               fallback: Callable[[np.ndarray, bool], list[Any]]) -> list[Callable[[], list[Any]]] | None:
        """One callable per task (its rows, an array; whether to checksum) that returns the task's chunks
        (shuffled, deflated, checksummed if asked), valid until the next call: the caller writes them in
        task order while the workers encode the later ones. None if the workers failed before the batch
        started (the processes are then closed). A worker that fails later makes the rest of the batch
        `fallback(rows, checked)`'s and closes the processes (`failed`)."""
        if self.failed or not self._workers:
            return None
        rounds, start = [], 0
        while start < len(tasks):  # rounds of as many tasks as both memory files hold
            end, size, room = start, 0, 0
            while end < len(tasks):
                rows = tasks[end][0]
                more, more_room = _align(rows.nbytes), len(rows) * _stride(rows[0].nbytes)
                if size + more > self.capacity or room + more_room > self.out_capacity:
                    break
                size, room, end = size + more, room + more_room, end + 1
            if end == start:
                self.close()
                return None  # a task larger than the memory files
            rounds.append(tasks[start:end])
            start = end
        out: list[Callable[[], list[Any]]] = []
        try:
            for batch in rounds[:-1]:  # all but the last: copied out, since the next round reuses the room
                pump = _Pump(self, batch)
                for i in range(len(batch)):
                    out.append(functools.partial(list, [np.array(c) for c in pump.chunks(i)]))
            last = _Pump(self, rounds[-1]) if rounds else None
        except (OSError, ValueError):
            self.close()
            return None

        def get(i: int, rows: np.ndarray, checked: bool) -> list[Any]:
            if not self.failed:
                try:
                    return last.chunks(i)
                except (OSError, ValueError):
                    self.close()
            return fallback(rows, checked)

        out.extend(functools.partial(get, i, rows, checked) for i, (rows, checked) in enumerate(rounds[-1] if rounds else []))
        return out

    def close(self) -> None:
        """Ends the workers (stdin closed; killed if they linger) and frees the memory files."""
        self.failed = True
        for worker in self._workers:
            try:
                worker.stdin.close()
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            worker.stdout.close()
        self._workers = []
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class _Pump:
    """One round of tasks in the workers: rows copied in and the first tasks handed out at once; `chunks(i)`
    reads answers until task i's has come, handing each worker that answers its next task (largest first)."""

    def __init__(self, processes: EncoderProcesses, tasks: Sequence[tuple[np.ndarray, bool]]):
        self.p = processes
        copy = _memmove()
        self.lines, self.spans = [], []
        at_in = at_out = 0
        for rows, checked in tasks:
            n, row_bytes = len(rows), rows[0].nbytes
            stride = _stride(row_bytes)
            for j, row in enumerate(rows):
                row = np.ascontiguousarray(row)
                copy(processes._in.ctypes.data + at_in + j * row_bytes, row.ctypes.data, row_bytes)
            self.lines.append(f"{at_in} {n} {row_bytes} {rows.dtype.itemsize} {at_out} {stride} {int(checked)}\n".encode())
            self.spans.append((at_out, stride))
            at_in += _align(n * row_bytes)
            at_out += n * stride
        workers = processes._workers
        self.queue = collections.deque(sorted(range(len(tasks)), key=lambda i: -tasks[i][0].nbytes))
        self.inflight: list[collections.deque] = [collections.deque() for _ in workers]
        self.pending = [b"" for _ in workers]
        self.answers: dict[int, list[bytes]] = {}
        for w in range(len(workers)):
            for _ in range(2):
                if self.queue:
                    self._send(w)

    def _send(self, w: int) -> None:
        i = self.queue.popleft()
        self.inflight[w].append(i)
        worker = self.p._workers[w]
        worker.stdin.write(self.lines[i])
        worker.stdin.flush()

    def _read(self) -> None:
        with selectors.DefaultSelector() as selector:
            for w, worker in enumerate(self.p._workers):
                if self.inflight[w]:
                    selector.register(worker.stdout.fileno(), selectors.EVENT_READ, w)
            ready = selector.select(timeout=ANSWER_SECONDS)
        if not ready:
            raise ValueError(f"no encoding process answered in {ANSWER_SECONDS:.0f} s")
        for key, _ in ready:
            w = key.data
            data = os.read(key.fd, 1 << 16)  # the fd itself: nothing waits in a Python buffer
            if not data:
                raise ValueError("an encoding process ended")
            self.pending[w] += data
            while b"\n" in self.pending[w]:
                line, self.pending[w] = self.pending[w].split(b"\n", 1)
                self.answers[self.inflight[w].popleft()] = line.split()
                if self.queue:
                    self._send(w)

    def chunks(self, i: int) -> list[np.ndarray]:
        """Task i's chunks, views of the chunks' memory file."""
        while i not in self.answers:
            self._read()
        answer = self.answers[i]
        if not answer or answer[0] == b"error":
            raise ValueError(b" ".join(answer).decode(errors="replace"))
        at, stride = self.spans[i]
        return [self.p._out[at + j * stride:at + j * stride + int(n)] for j, n in enumerate(answer)]


def available() -> bool:
    """Whether encoding processes can run here (Linux's memfd_create)."""
    return hasattr(os, "memfd_create")


def _path() -> str:
    """PYTHONPATH for a worker: this package's parent first, so `-m runfile.encode_worker` is this code."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
