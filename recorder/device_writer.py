"""The background writer as the recorder uses it: device arrays in, blocks and packed frames unpacked there.

`DeviceWriter` is runfile's `AsyncRunWriter` with what only a JAX loop needs: its worker copies the device
arrays of each queued call to the host (`to_host`; it waits for the step that computes them, which is not
the writer's time), and it knows the recorder's two packed shapes, a `Block` of steps (recorder/blocks.py)
and a `FrameBatch` (recorder/batching.py), each one host copy per buffer and one staged write per dataset.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from recorder.batching import FrameBatch
from recorder.blocks import Block, chunk_columns, unpack
from recorder.parallel import host
from runfile.async_writer import AsyncRunWriter
from runfile.writer import RunWriter


def to_host(tree: Any) -> Any:
    """Device arrays -> numpy (blocks until they are computed). Runs on the writer thread only: a replicated
    array of a multi-process run is read from this process's own replica, never through a collective. On
    the CPU backend numpy views the arrays' own buffers (read-only, no copy), so no transfer is started:
    `copy_to_host_async` would copy each buffer once more (a 2.3 MB block: 18 against 5 µs)."""
    leaves = jax.tree.leaves(tree)
    if jax.default_backend() != "cpu":
        for leaf in leaves:  # start every transfer of the item first: they overlap, then wait once
            if isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
                leaf.copy_to_host_async()
    return jax.tree.map(host, tree)


class DeviceWriter(AsyncRunWriter):
    """An `AsyncRunWriter` whose calls may carry device arrays, with `write_block` and `write_frames`.

    `seconds_per_step` is training's pace as the host sees it, measured between blocks' arrivals (the
    compile and the first block excluded); the loop sizes its blocks with it (recorder/run.py)."""

    def __init__(self, writer: RunWriter, **options: Any):
        super().__init__(writer, **options)
        self.to_host = to_host
        self.seconds_per_step: float | None = None
        self._arrived: float | None = None

    def write_frames(self, batch: FrameBatch) -> None:
        """Queues packed frames (recorder/batching.py): one host copy per buffer, then one staged write."""
        self.submit(self._frames, batch)

    def _frames(self, batch: FrameBatch) -> None:
        self.frame_bytes += batch.nbytes
        buffers = {d: b.reshape(len(batch.steps), -1) for d, b in batch.buffers.items()}
        arrays = unpack(buffers, batch.layout)
        if any(key.startswith("analysis/") for key, _, _ in batch.layout):
            self.writer.write_analysis(batch.steps, arrays)
        self.writer.write_frames(batch.steps, arrays, chunks=chunk_columns(buffers, batch.layout))

    def write_block(self, block: Block) -> None:
        """Queues a block of steps (recorder/blocks.py): one host copy per buffer, then one staged write per
        dataset for its training rows, series, frames and analysis rows."""
        self.submit(self._block, block)

    def _pace(self, steps: int) -> None:
        now = time.monotonic()
        if self._arrived is not None:
            per_step = (now - self._arrived) / steps
            self.seconds_per_step = per_step if self.seconds_per_step is None else (
                0.7 * self.seconds_per_step + 0.3 * per_step)
        self._arrived = now

    def _block(self, block: Block) -> None:
        self._pace(len(block.steps))
        steps = np.asarray(block.steps, np.int64)
        columns = block.columns()
        loss, accuracy, finite = columns.pop("loss"), columns.pop("accuracy"), columns.pop("finite", None)
        ok = np.isfinite(loss) & (True if finite is None else finite > 0)
        if self.nonfinite_step is None and not ok.all():
            self.nonfinite_step = int(steps[np.argmin(ok)])
        self.writer.write_train(steps, loss, accuracy)
        series = {**columns, **block.scalars}
        if series:
            self.writer.write_series(steps, series)
        arrays = block.frame_arrays()
        if block.analysis_steps:
            self.writer.write_analysis(block.analysis_steps, arrays)
        if block.frame_steps:
            self.frame_bytes += block.frame_nbytes
            self.writer.write_frames(block.frame_steps, arrays, chunks=block.frame_chunks())
        self.latest_train = {"step": int(steps[-1]), "loss": float(loss[-1]), "accuracy": float(accuracy[-1])}
