"""Runs a writer's calls on one background thread: ordered, bounded, errors re-raised on the caller.

The training loop hands over device arrays; this thread is where they are copied to the host
(`np.asarray` blocks until the step that produced them has finished), so the loop never waits for a
transfer and can dispatch the next step at once. The queue is bounded: when the disk or the device falls
behind, `submit` blocks, which keeps host memory flat however long the run.

The thread runs at a low scheduling priority (Linux nice 19 for this thread only), so compressing frames
yields to XLA's compute threads and uses the cycles they leave idle. It cannot starve: when the queue is full the training loop waits in `submit`, the compute threads
go idle, and the writer catches up (benchmarks/README.md has the measurements).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from recorder.writer import H5RunWriter

_STOP = object()


class WriterError(RuntimeError):
    """The background writer failed; the run file holds everything written before the failure."""


def to_host(tree: Any) -> Any:
    """Device arrays -> numpy (blocks until they are computed). Runs on the writer thread only."""
    return jax.tree.map(np.asarray, tree)


class AsyncRunWriter:
    """Wraps an `H5RunWriter`; each `submit` runs `fn(writer, *host_args)` on the worker in order.

    The worker flushes the file at least every `flush_seconds` while data is arriving or pending.
    """

    def __init__(self, writer: H5RunWriter, max_pending: int = 8, flush_seconds: float = 1.0, nice: int = 19):
        self.writer = writer
        self._nice = nice
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._flush_seconds = flush_seconds
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="emergence-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:  # Linux: a thread id names just this thread; raising one's own nice needs no privileges
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        except (AttributeError, OSError):
            pass  # elsewhere the writer keeps the process's priority
        last_flush = time.monotonic()
        dirty = False
        while True:
            timeout = max(0.0, self._flush_seconds - (time.monotonic() - last_flush)) if dirty else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                if item is _STOP:
                    return
                if item is not None and self._error is None:
                    fn, args = item
                    fn(self.writer, *to_host(args))
                    dirty = True
                if dirty and time.monotonic() - last_flush >= self._flush_seconds:
                    self.writer.flush()
                    last_flush, dirty = time.monotonic(), False
            except BaseException as e:  # kept for the caller; later items are drained, not written
                self._error = e
            finally:
                if item is not None:
                    self._queue.task_done()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterError(
                f"writing {self.writer.path} failed: {type(self._error).__name__}: {self._error}. "
                "Check free disk space and that the file is not written by another process; "
                "the file keeps every frame written before the failure."
            ) from self._error

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queues `fn(writer, *args)`; args may hold device arrays. Blocks while the queue is full."""
        if self._closed:
            raise RuntimeError("submit() after close()")
        self._raise_if_failed()
        self._queue.put((fn, args))

    def wait(self) -> None:
        """Blocks until everything submitted so far is written; re-raises a background failure."""
        self._queue.join()
        self._raise_if_failed()

    def close(self, status: str | None = None, message: str = "") -> None:
        """Writes what is pending, sets the final `status` if given, flushes and closes the file.

        Re-raises a background failure (after marking the file `failed`)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        try:
            if self._error is not None and status != "failed":
                status, message = "failed", f"writer error: {type(self._error).__name__}: {self._error}"
            if status is not None:
                self.writer.set_status(status, message)
        finally:
            try:
                self.writer.close()
            finally:
                self._raise_if_failed()

    def __enter__(self) -> "AsyncRunWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
