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
import mmap
import os
import selectors
import subprocess
import sys
from typing import Sequence

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
        try:
            for _ in range(workers):
                self._workers.append(subprocess.Popen(
                    [sys.executable, "-m", "runfile.encode_worker", *map(str, self._fds)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, pass_fds=self._fds, env={**os.environ, "PYTHONPATH": _path()}))
        except BaseException:
            self.close()
            raise

    def encode(self, tasks: Sequence[tuple[np.ndarray, bool]]) -> list[list[np.ndarray]] | None:
        """The chunks of each task's rows (an array of rows, shuffled and deflated, checksummed if its flag is
        set), in order, valid until the next call; None if a worker failed (the processes are then closed)."""
        out: list[list[np.ndarray]] = []
        try:
            start = 0
            while start < len(tasks):  # rounds of as many tasks as both memory files hold
                end, size, room = start, 0, 0
                while end < len(tasks):
                    rows = tasks[end][0]
                    more, more_room = _align(rows.nbytes), len(rows) * _stride(rows[0].nbytes)
                    if size + more > self.capacity or room + more_room > self.out_capacity:
                        break
                    size, room, end = size + more, room + more_room, end + 1
                if end == start:
                    raise ValueError("a task larger than the memory files")
                out.extend(self._round(tasks[start:end], keep=end < len(tasks)))  # the next round reuses the room
                start = end
        except (OSError, ValueError):
            self.close()
            return None
        return out

    def _round(self, tasks: Sequence[tuple[np.ndarray, bool]], keep: bool) -> list[list[np.ndarray]]:
        """The chunks of `tasks`: copies if `keep`, else views of the chunks' memory file (valid until the
        next `encode`)."""
        copy = _memmove()
        lines, spans = [], []
        at_in = at_out = 0
        for rows, checked in tasks:
            n, row_bytes = len(rows), rows[0].nbytes
            stride = _stride(row_bytes)
            for j, row in enumerate(rows):
                row = np.ascontiguousarray(row)
                copy(self._in.ctypes.data + at_in + j * row_bytes, row.ctypes.data, row_bytes)
            lines.append(f"{at_in} {n} {row_bytes} {rows.dtype.itemsize} {at_out} {stride} {int(checked)}\n".encode())
            spans.append((at_out, stride))
            at_in += _align(n * row_bytes)
            at_out += n * stride
        answers = self._run(lines, [rows.nbytes for rows, _ in tasks])
        out = []
        for (at, stride), answer in zip(spans, answers):
            if not answer or answer[0] == b"error":
                raise ValueError(b" ".join(answer).decode(errors="replace"))
            chunks = []
            for j, length in enumerate(int(x) for x in answer):
                chunk = self._out[at + j * stride:at + j * stride + length]
                if keep:
                    chunk = np.empty(length, np.uint8)
                    copy(chunk.ctypes.data, self._out.ctypes.data + at + j * stride, length)
                chunks.append(chunk)
            out.append(chunks)
        return out

    def _run(self, lines: list[bytes], sizes: list[int]) -> list[list[bytes]]:
        """Each task's answer (its line split), the tasks handed out largest first, two at a time to each
        worker, the next to whichever answers (so a worker that drew small tasks takes more)."""
        queue = collections.deque(sorted(range(len(lines)), key=lambda i: -sizes[i]))
        inflight: list[collections.deque] = [collections.deque() for _ in self._workers]
        pending = [b"" for _ in self._workers]
        answers: dict[int, list[bytes]] = {}

        def send(w: int) -> None:
            i = queue.popleft()
            inflight[w].append(i)
            self._workers[w].stdin.write(lines[i])
            self._workers[w].stdin.flush()

        for w in range(len(self._workers)):
            for _ in range(2):
                if queue:
                    send(w)
        with selectors.DefaultSelector() as selector:
            for w, worker in enumerate(self._workers):
                selector.register(worker.stdout.fileno(), selectors.EVENT_READ, w)
            while len(answers) < len(lines):
                ready = selector.select(timeout=ANSWER_SECONDS)
                if not ready:
                    raise ValueError(f"no encoding process answered in {ANSWER_SECONDS:.0f} s")
                for key, _ in ready:
                    w = key.data
                    data = os.read(key.fd, 1 << 16)  # the fd itself: nothing waits in a Python buffer
                    if not data:
                        raise ValueError("an encoding process ended")
                    pending[w] += data
                    while b"\n" in pending[w]:
                        line, pending[w] = pending[w].split(b"\n", 1)
                        answers[inflight[w].popleft()] = line.split()
                        if queue:
                            send(w)
        return [answers[i] for i in range(len(lines))]

    def close(self) -> None:
        """Ends the workers (stdin closed; killed if they linger) and frees the memory files."""
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


def available() -> bool:
    """Whether encoding processes can run here (Linux's memfd_create)."""
    return hasattr(os, "memfd_create")


def _path() -> str:
    """PYTHONPATH for a worker: this package's parent first, so `-m runfile.encode_worker` is this code."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
