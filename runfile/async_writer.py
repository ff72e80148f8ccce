"""Runs a `RunWriter`'s calls on one background thread: ordered, bounded, errors re-raised on the caller.

`AsyncRunWriter` has the writer's own typed methods (write_frame, write_train, write_eval, write_test,
write_scalars, write_weights); each queues a bound callable and its arguments, and `submit` queues any
callable. The arguments are made host values on this thread by `to_host` (the identity by default; the
recorder's `DeviceWriter` copies device arrays there, recorder/device_writer.py), so a training loop that
hands over device arrays never waits for a transfer and can dispatch the next step at once. The queue is bounded: when the disk or the device falls
behind, `submit` blocks, which keeps host memory flat however long the run.

The thread runs at a low scheduling priority (Linux nice 19 for this thread only), so compressing frames
yields to XLA's compute threads and uses the cycles they leave idle. It cannot starve: when the queue is full the training loop waits in `submit`, the compute threads
go idle, and the writer catches up (benchmarks/README.md has the measurements).

While a writer is open, the interpreter's GIL switch interval is at most `WRITER_SWITCH_INTERVAL` (0.5 ms; it
is put back when the last writer closes). The writer hands the GIL over around its waits (the queue, the
device's transfers, the encoding threads' results), and takes it back only when the thread holding it lets it
go: a thread that runs Python all the time (a data loader, a loop of one's own dispatching small steps) keeps
it for a whole switch interval, 5 ms by default. Every other switch waits that long too, so the writer
measured 12 recorded steps a second beside such a thread, against 1,448 without it
(benchmarks/block_writer.py). The writes themselves keep the GIL (runfile/chunks.py).
"""

from __future__ import annotations

import errno
import os
import queue
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

from runfile.errors import describe
from runfile.writer import RunWriter

_STOP = object()
HEARTBEAT_SECONDS = 5.0  # an idle writer still flushes this often, so readers can tell it is alive


WRITER_SWITCH_INTERVAL = 0.0005  # seconds: the GIL switch interval at most while a writer is open (module doc)


class _SwitchInterval:
    """The interpreter's switch interval lowered while any writer holds it, put back when the last lets go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._before = 0.0

    def hold(self, interval: float) -> None:
        with self._lock:
            if self._holders == 0:
                self._before = sys.getswitchinterval()
            self._holders += 1
            if interval < sys.getswitchinterval():
                sys.setswitchinterval(interval)

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                sys.setswitchinterval(self._before)


SWITCH_INTERVAL = _SwitchInterval()


BEHIND_SECONDS = 5.0  # training time spent waiting for the writer before it warns ...
BEHIND_SHARE = 0.5  # ... if the writer spent at least this share of the time writing


def _disk_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


class WriterError(RuntimeError):
    """The background writer failed; the run file holds everything written before the failure."""


class AsyncRunWriter:
    """Wraps a `RunWriter`: each write method queues the call, which the worker runs in order on host copies
    of its arguments. Wall times left as None are stamped when the values reach the host (the step that
    produced them has finished). The worker flushes at least every `flush_seconds` while data arrives, and
    every `heartbeat_seconds` when none does (the file's `updated_unix` is the writer's heartbeat). Until it
    closes, the interpreter's GIL switch interval is at most `switch_interval` (None: left as it is; module doc).
    """

    def __init__(self, writer: RunWriter, max_pending: int = 8, flush_seconds: float = 1.0, nice: int = 19,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, switch_interval: float | None = WRITER_SWITCH_INTERVAL):
        self.writer = writer
        self.to_host: Callable[[tuple], tuple] = lambda args: args  # run on the worker before each call
        self.path = writer.path
        self.latest_train: dict[str, float] = {}
        self.nonfinite_step: int | None = None  # the first step whose watched values were not all finite
        self._nice = nice
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._flush_every = flush_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._error: BaseException | None = None
        self._closed = False
        self.frame_bytes = 0  # bytes of frames handed to the writer (host copies, before compression)
        self.busy_seconds = 0.0  # time the worker spent writing (encoding, HDF5), after the host copy
        self.device_seconds = 0.0  # time the worker waited for host copies (the steps computing them, transfers)
        self.flush_seconds = 0.0  # time the worker spent flushing the file to the disk
        self.waited_seconds = 0.0  # time the training side waited because the queue was full
        self.on_behind: Any = None  # called once with a message when the training side first waits BEHIND_SECONDS
        self._warned = False
        self._started = time.monotonic()
        self._switch = switch_interval
        if switch_interval is not None:
            SWITCH_INTERVAL.hold(switch_interval)
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
            wait = self._flush_every if dirty else self._heartbeat_seconds
            try:
                item = self._queue.get(timeout=max(0.0, wait - (time.monotonic() - last_flush)))
            except queue.Empty:
                item = None
                dirty = dirty or self._error is None  # idle: flush anyway, a heartbeat (updated_unix)
            try:
                if item is _STOP:
                    return
                if item is not None and self._error is None:
                    call, args = item
                    t0 = time.perf_counter()
                    values = self.to_host(args)  # waits for the step that computes them: not the writer's time
                    t1 = time.perf_counter()
                    call(*values)
                    t2 = time.perf_counter()
                    self.device_seconds += t1 - t0
                    self.busy_seconds += t2 - t1
                    dirty = True
                if dirty and time.monotonic() - last_flush >= self._flush_every:
                    t0 = time.perf_counter()
                    self.writer.flush()
                    self.flush_seconds += time.perf_counter() - t0
                    last_flush, dirty = time.monotonic(), False
            except BaseException as e:  # kept for the caller; later items are drained, not written
                self._error = e
            finally:
                if item is not None:
                    self._queue.task_done()

    def _watch(self, step: Any, values: Any) -> None:
        """Notes the first step at which any of `values` (host arrays: a loss, in-step finiteness flags) is not
        finite (a False flag counts as not finite)."""
        ok = [np.all(v) if np.asarray(v).dtype == bool else np.all(np.isfinite(v)) for v in values]
        if self.nonfinite_step is None and not all(ok):
            self.nonfinite_step = int(np.min(step))

    def watch(self, step: Any, *values: Any) -> None:
        """Queues a finiteness check of `values` for `step` (device arrays are copied on this thread)."""
        self.submit(self._watch, step, values)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if _disk_full(self._error):
                raise WriterError(f"writing {self.writer.path} failed: the disk is full ({describe(self._error)}); the "
                                  f"file keeps every row written before, up to step {self.latest_train.get('step', 0)}"
                                  "; free some space, then `emergence resume` it") from self._error
            hint = ("Check free disk space and that the file is not written by another process; "
                    if isinstance(self._error, OSError) else "")  # else the values handed to the writer were wrong
            raise WriterError(f"writing {self.writer.path} failed: {describe(self._error)}. {hint}the file keeps "
                              "every frame written before the failure.") from self._error

    def submit(self, call: Callable[..., None], *args: Any) -> None:
        """Queues `call(*args)` (a method of the wrapped writer or of this one), to run on the worker with host
        copies of `args` (which may hold device arrays). Blocks while the queue is full."""
        if self._closed:
            raise RuntimeError(f"{call.__name__}() after the writer of {self.path} was closed")
        self._raise_if_failed()
        try:
            self._queue.put_nowait((call, args))
        except queue.Full:  # the writer is behind: training waits (host memory stays flat)
            t0 = time.perf_counter()
            self._queue.put((call, args))
            self.waited_seconds += time.perf_counter() - t0
            # behind = training waits AND the writer itself is busy most of the time (not waiting for the device:
            # training also waits when the loop dispatches steps faster than the device computes them)
            busy_share = (self.busy_seconds + self.flush_seconds) / max(time.monotonic() - self._started, 1e-9)
            if (not self._warned and self.waited_seconds >= BEHIND_SECONDS and busy_share >= BEHIND_SHARE
                    and self.on_behind is not None):
                self._warned = True
                self.on_behind(f"warning: the writer is behind: training has waited {self.waited_seconds:.1f} s "
                               f"for it so far, and it is busy {busy_share:.0%} of the time ({self.throughput()}); record fewer frames (schedule=log:N or "
                               "budget_mb=MB), fewer probes, or dtype=float16")

    def throughput(self) -> str:
        """What the writer did so far and what the loop waited for, in words; names a bottleneck only when the
        loop waited long enough for one to matter."""
        rate = self.frame_bytes / 1e6 / self.busy_seconds if self.busy_seconds > 0 else float("nan")
        text = (f"{self.frame_bytes / 1e6:.1f} MB of frames; {self.busy_seconds:.1f} s encoding and writing "
                f"({rate:.1f} MB/s), {self.flush_seconds:.1f} s flushing to disk, {self.device_seconds:.1f} s waiting "
                f"for the device's steps; the loop waited {self.waited_seconds:.1f} s for room in the queue")
        elapsed = time.monotonic() - self._started
        if self.waited_seconds < max(1.0, 0.05 * elapsed):
            return text + " (no bottleneck)"
        own = self.busy_seconds + self.flush_seconds
        if own >= self.device_seconds:
            where = "the disk" if self.flush_seconds > self.busy_seconds else "the writer (encoding and HDF5)"
            return text + f": the bottleneck is {where}; record fewer frames or probes, or use compression=lzf"
        return text + ": the loop dispatches steps faster than the device computes them (not a writer bottleneck)"

    def write_frame(self, step: int, frame: Any, wall_time: float | None = None) -> None:
        self.submit(self._frame, step, frame, wall_time)

    def _frame(self, step: int, frame: Any, wall_time: float | None) -> None:
        self.frame_bytes += sum(v.nbytes for v in frame.values())
        self.writer.write_frame(step, frame, wall_time)

    def _train(self, step: Any, loss: Any, accuracy: Any, wall_time: Any, watch: Any) -> None:
        if watch:
            self._watch(step, watch)
        self.writer.write_train(step, loss, accuracy, wall_time)
        # for progress bars: read without touching a device value
        self.latest_train = {"step": int(np.max(step)), "loss": float(np.ravel(loss)[-1]),
                             "accuracy": float(np.ravel(accuracy)[-1])}

    def write_train(self, step: Any, loss: Any, accuracy: Any, wall_time: Any = None, watch: tuple = ()) -> None:
        """Queues training rows, and a finiteness check of the values in `watch` (see `_watch`)."""
        self.submit(self._train, step, loss, accuracy, wall_time, watch)

    def write_eval(self, step: int, loss: Any, accuracy: Any) -> None:
        self.submit(self.writer.write_eval, step, loss, accuracy)

    def write_test(self, loss: Any, accuracy: Any, count: int) -> None:
        self.submit(self.writer.write_test, loss, accuracy, count)

    def write_scalars(self, step: int, values: Any) -> None:
        self.submit(self.writer.write_scalars, step, values)

    def write_weights(self, step: int, values: Any) -> None:
        self.submit(self.writer.write_weights, step, values)

    def after_written(self, call: Callable[..., None], *args: Any) -> None:
        """Queues `call(*host copies of args)`, to run on the worker once everything submitted before is
        written and flushed to the file."""
        def after_flush(*values: Any) -> None:
            self.writer.flush()
            call(*values)

        self.submit(after_flush, *args)

    def wait(self) -> None:
        """Blocks until everything submitted so far is written and flushed to the file; re-raises a background
        failure."""
        self.submit(self.writer.flush)
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
        if self._switch is not None:
            SWITCH_INTERVAL.release()
        try:
            if self._error is not None and status != "failed":
                status, message = "failed", f"writer error: {describe(self._error)}"
            if status is not None:
                self.writer.set_status(status, message)
        finally:
            try:
                self.writer.close(failed=self._error is not None)
            finally:
                self._raise_if_failed()

    def __enter__(self) -> "AsyncRunWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
