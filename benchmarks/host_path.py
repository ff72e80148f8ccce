"""Where recording's host time goes: the CPU time of the loop's thread and of the writer's thread per training
step, and of the functions on each, for the built-in loop recording one experiment.

    .venv/bin/python benchmarks/host_path.py [--experiment tiny --set steps=100000] [--steps 400]
        [--block-steps K] [--compression none]

`record_overhead.py` says how much host CPU recording adds; this says where it goes. The loop runs unrecorded
and then recorded (every step, the experiment's analysis schedule), each for `--steps` steps after a warm-up
that compiles every step kind and every cut of the frame buffers. During the measured steps the functions
below are wrapped so that each call adds its thread's CPU time (`time.thread_time_ns`, the calls nested in
it included) to its row. The threads' totals come from /proc (Linux). XLA's own threads are not counted:
on the CPU backend they are the device.

`--block-steps 64` on the CPU runs the blocks a GPU runs (recorder/blocks.py): the same host path per block.
Per-step figures of the writer's flush, once a second, depend on the step rate (see record_overhead.py).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax

import recorder.blocks as blocks
import recorder.device_writer as device_writer
import recorder.loop as loop_module
import recorder.recorder as recorder_module
import runfile.async_writer as async_writer
import runfile.writer as writer_module
from experiments import get_experiment
from record_overhead import python_threads_seconds, require_steps
from recorder.config import ConfigError, apply_overrides
from recorder.plan import make_plan

# (object, attribute, row name): the loop's thread, then the writer's
LOOP_FUNCTIONS = [(loop_module.TrainingLoop, "_run_block", "TrainingLoop._run_block (all of a block's dispatch)"),
                  (blocks.BlockStep, "__call__", "  BlockStep() (the jitted call)"),
                  (blocks.BlockStep, "plan", "  BlockStep.plan"),
                  (loop_module, "first_rows", "  blocks.first_rows (cut the frame buffers)"),
                  (recorder_module.Recorder, "write_block", "  Recorder.write_block"),
                  (async_writer.AsyncRunWriter, "submit", "    AsyncRunWriter.submit (the queue)"),
                  (loop_module.TrainingLoop, "_batch", "TrainingLoop._batch"),
                  (loop_module.TrainingLoop, "_next_event", "TrainingLoop._next_event"),
                  (loop_module.TrainingLoop, "_after_block", "TrainingLoop._after_block")]
WRITER_FUNCTIONS = [(device_writer, "to_host", "to_host (waits for the block: mostly not CPU)"),
                    (device_writer.DeviceWriter, "_block", "DeviceWriter._block"),
                    (writer_module.H5RunWriter, "write_train", "  H5RunWriter.write_train"),
                    (writer_module.H5RunWriter, "write_series", "  H5RunWriter.write_series"),
                    (writer_module.H5RunWriter, "write_frames", "  H5RunWriter.write_frames (staging)"),
                    (writer_module.H5RunWriter, "write_analysis", "  H5RunWriter.write_analysis (staging)"),
                    (writer_module.H5RunWriter, "_write_frames", "H5RunWriter._write_frames (encode, write)"),
                    (writer_module.H5RunWriter, "flush", "H5RunWriter.flush (once a second)")]


class Timed:
    """Wraps functions so that each call on the named thread adds its thread CPU time to a row."""

    def __init__(self) -> None:
        self.ns: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.on = False
        self._saved: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, label: str, thread: Callable[[], bool]) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not (self.on and thread()):
                return original(*args, **kwargs)
            t = time.thread_time_ns()
            try:
                return original(*args, **kwargs)
            finally:
                self.ns[label] += time.thread_time_ns() - t
                self.calls[label] += 1

        self._saved.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def measure(experiment: str, steps: int, block_steps: int, compression: str, sets: list[str], folder: Path) -> None:
    config = dataclasses.replace(get_experiment(experiment), compression=compression, block_steps=block_steps)
    config = apply_overrides(config, list(sets))
    plan = make_plan(config)
    timed = Timed()
    on_loop = lambda: threading.current_thread() is threading.main_thread()  # noqa: E731
    on_writer = lambda: threading.current_thread().name == "emergence-writer"  # noqa: E731
    for owner, name, label in LOOP_FUNCTIONS:
        timed.wrap(owner, name, label, on_loop)
    for owner, name, label in WRITER_FUNCTIONS:
        timed.wrap(owner, name, label, on_writer)
    rec = plan.recorder(folder / f"{experiment}.h5", overwrite=True)  # after the wrapping: its writer keeps to_host
    print(f"{experiment}: batch {config.batch_size}, K = {plan.block_steps} steps per block at most, compression "
          f"{compression}, {steps} steps measured; JAX {jax.__version__}, {jax.default_backend()}")
    print()
    print("| loop | thread | CPU µs per step | of which, function (calls per step) |")
    print("|---|---|---|---|")
    try:
        for name, rec_ in (("unrecorded", None), ("recorded", rec)):
            loop = loop_module.TrainingLoop(plan, rec_, evaluate=False)
            loop.compile()
            loop.start()
            warm = max(3 * plan.block_steps, 30, int(rec.analysis_steps[1]) + 1 if len(rec.analysis_steps) > 1 else 0)
            require_steps(plan, warm + steps)
            loop.run(warm)  # every step kind and the first cuts of the frame buffers compiled
            jax.block_until_ready(loop.state)
            if rec_ is not None:
                rec_.wait()
            writer = {t.native_id for t in threading.enumerate() if t.name == "emergence-writer"}
            timed.ns.clear()
            timed.calls.clear()
            before = python_threads_seconds()
            timed.on = True
            loop.run(loop.step + steps)
            jax.block_until_ready(loop.state)
            if rec_ is not None:
                rec_.wait()
            timed.on = False
            after = python_threads_seconds()
            spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
            main = spent.get(threading.main_thread().native_id, float("nan"))
            threads = [("loop", main, LOOP_FUNCTIONS)]
            if rec_ is not None:
                threads.append(("writer", sum(spent.get(t, 0.0) for t in writer), WRITER_FUNCTIONS))
            for thread, seconds, functions in threads:
                parts = [f"{label.strip()} {timed.ns[label] / 1e3 / steps:.1f} ({timed.calls[label] / steps:.2f})"
                         for _, _, label in functions if timed.calls[label]]
                print(f"| {name} | {thread} | {1e6 * seconds / steps:.1f} | {'; '.join(parts)} |", flush=True)
    finally:
        timed.restore()
        rec.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tiny")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--block-steps", type=int, default=0, help="K (0: the backend's default)")
    parser.add_argument("--compression", default="none")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. steps=100000 for a plan that outlasts the measured steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure(args.experiment, args.steps, args.block_steps, args.compression, args.set, Path(folder))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # an unknown experiment or config key: one line, no traceback
        raise SystemExit(f"error: {e}") from None
