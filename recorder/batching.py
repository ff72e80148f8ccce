"""Frames batched per device→host transfer.

A frame is a dozen arrays (each layer's activations, the logits, kernels, Grams); copied one by one, every
array is its own device→host transfer, and on a GPU stepping every millisecond their fixed costs add up. So
when frames come fast, `FrameBatcher` keeps the last `size` of them on the device and packs them with one
jitted concatenation into one flat buffer per dtype (`pack`): one transfer per dtype for `size` frames, and
one queue item, one wake-up of the writer thread. The writer unpacks the buffers into views of each frame
(`recorder.blocks.unpack`: each dtype's buffer is [frames, E], a frame's arrays raveled in key order), bit for
bit the arrays the step computed, and writes the batch in one staged call.

Frames are batched only while they come faster than one per `GAP_SECONDS` (a loop recording every step
quickly); a frame after a longer gap, one of host arrays or of arrays split over devices, or one of another
structure (the analysed frames
carry Grams) first sends the waiting ones, one by one, so a slow loop's frames go straight to the writer and a
live viewer sees them as soon as before. Only full batches are packed: one compilation per frame structure.
A batch reaches the host as one, so its frames share one wall time (docs/run_schema.md). Where the run stores
frames uncompressed beside a GPU, the packing also computes each array's Fletcher-32 (recorder/fletcher.py)
and lays the arrays out as the chunks the file stores (the `CHUNKS` buffer of recorder/blocks.py), which the
writer writes as they are.

Frames replicated over several devices (a device mesh, several processes) are packed from this process's own
replica on its first device: no collective, nothing the other processes must join.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from recorder.blocks import layout_nbytes, pack_frame

FRAMES_PER_TRANSFER = 8
METRICS_PER_TRANSFER = 32
GAP_SECONDS = 0.05  # frames (metrics) further apart than this go to the writer one by one


def _on_one_device(frame: Mapping[str, Any]) -> dict[str, jax.Array] | None:
    """`frame` with each replicated array replaced by this process's replica on its first device; None if
    the frame cannot be packed: a host array, an array split over devices, or arrays on different devices."""
    out = {}
    devices = set()
    for key, value in frame.items():
        if not isinstance(value, jax.Array):
            return None
        sharding = value.sharding
        if isinstance(sharding, SingleDeviceSharding):  # the common case, checked cheaply
            devices.add(value.device)
        elif not sharding.is_fully_replicated:
            return None
        else:
            value = value.addressable_data(0)
            devices.update(value.devices())
        out[key] = value
    return out if len(devices) == 1 else None


_DTYPE_NAMES: dict[Any, str] = {}  # str(dtype) costs microseconds; a frame asks it of every array, every step


def layout(frame: Mapping[str, Any]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(key, shape, dtype) of each array of `frame`, in key order: how `pack` lays a frame out."""
    out = []
    for key in sorted(frame):
        value = frame[key]
        dtype = value.dtype
        name = _DTYPE_NAMES.get(dtype) or _DTYPE_NAMES.setdefault(dtype, str(dtype))
        out.append((key, tuple(value.shape), name))
    return tuple(out)


@functools.partial(jax.jit, static_argnums=1)
def pack(frames: Sequence[Mapping[str, jax.Array]], checksums: bool = False) -> dict[str, jax.Array]:
    """The frames' arrays, raveled and concatenated frame after frame (keys in order), one buffer per dtype;
    with `checksums` the arrays but the analysis entries go instead into `CHUNKS` as checksummed chunks
    (`recorder.blocks.pack_frame`), frame after frame."""
    packed = [pack_frame(frame, layout(frame), checksums) for frame in frames]
    return {d: jnp.concatenate([p[d] for p in packed]) for d in packed[0]}


@jax.tree_util.register_pytree_node_class
class FrameBatch:
    """Packed frames: their steps, their `layout` and the buffers (a pytree whose only leaves are the buffers,
    so the writer's host copy maps over them alone)."""

    def __init__(self, steps: tuple[int, ...], buffers: dict[str, Any], frame_layout: tuple):
        self.steps, self.buffers, self.layout = steps, buffers, frame_layout

    def tree_flatten(self) -> tuple[tuple[Any], tuple]:
        return (self.buffers,), (self.steps, self.layout)

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: tuple) -> "FrameBatch":
        return cls(aux[0], children[0], aux[1])

    @property
    def nbytes(self) -> int:
        return len(self.steps) * layout_nbytes(self.layout)


class _Batcher:
    """What both batchers share: the pace of arrivals, a batch of `size` items with one structure (`key`),
    and `drain()`, which sends the waiting items one by one through `send(step, item)`."""

    def __init__(self, send: Callable[[int, dict], None], size: int, gap_seconds: float):
        self.send, self.size, self.gap = send, size, gap_seconds
        self._waiting: list[tuple[int, dict]] = []
        self._key: Any = None
        self._last = -np.inf  # when the previous item came

    def _fast(self) -> bool:
        """Whether this item comes within `gap` of the previous one (and batches are on at all)."""
        now = time.monotonic()
        fast, self._last = now - self._last <= self.gap, now
        return fast and self.size > 1

    def _straight_on(self, step: int, item: dict) -> None:
        self.drain()
        self.send(step, item)

    def _hold(self, step: int, item: dict, key: Any) -> list[tuple[int, dict]] | None:
        """Keeps (step, item), after sending the waiting ones if their structure differs; returns the batch,
        no longer waiting, once `size` items are held."""
        if key != self._key:
            self.drain()
        self._key = key
        self._waiting.append((step, item))
        if len(self._waiting) < self.size:
            return None
        full, self._waiting = self._waiting, []
        return full

    def drain(self) -> None:
        """Sends the waiting items, one by one."""
        waiting, self._waiting = self._waiting, []
        for step, item in waiting:
            self.send(step, item)


class FrameBatcher(_Batcher):
    """Collects frames and hands them on: `send(step, frame)` one by one, or `send_batch(FrameBatch)` for
    `size` frames that came fast (see the module doc). `drain()` sends the waiting ones."""

    def __init__(self, send: Callable[[int, dict], None], send_batch: Callable[[FrameBatch], None],
                 size: int = FRAMES_PER_TRANSFER, gap_seconds: float = GAP_SECONDS, checksums: bool = False):
        super().__init__(send, size, gap_seconds)
        self.send_batch, self.checksums = send_batch, checksums

    def add(self, step: int, frame: dict) -> None:
        local = _on_one_device(frame) if self._fast() else None
        if local is None:  # a slow loop's frame, or one that cannot be packed: straight on
            self._straight_on(step, frame)
            return
        frame_layout = layout(local)
        full = self._hold(step, local, frame_layout)
        if full:
            self.send_batch(FrameBatch(tuple(s for s, _ in full), pack([f for _, f in full], self.checksums),
                                       frame_layout))


@jax.jit
def stack_rows(rows: Sequence[Mapping[str, Any]]) -> jax.Array:
    """The steps' metrics as one float32 buffer [len(rows), M], names in sorted order."""
    names = sorted(rows[0])
    return jnp.stack([jnp.stack([jnp.asarray(r[k]).astype(jnp.float32) for k in names]) for r in rows])


class MetricsBatcher(_Batcher):
    """Collects the metrics of steps that come fast and hands them on `size` at a time as one `Block`
    (recorder/blocks.py, without frames): one jitted stack into a [size, M] float32 buffer, so one transfer
    and one writer item for `size` steps instead of a few of each per step. Metrics need `loss` and
    `accuracy` and scalar values to be batched; others, a step after a longer gap than `gap_seconds`, or a
    change of names first send the waiting ones, one by one (`send(step, metrics)`). `drain()` does too."""

    def __init__(self, send: Callable[[int, dict], None], send_block: Callable[[Any], None],
                 size: int = METRICS_PER_TRANSFER, gap_seconds: float = GAP_SECONDS):
        super().__init__(send, size, gap_seconds)
        self.send_block = send_block

    def add(self, step: int, metrics: dict) -> None:
        from recorder.blocks import Block

        if (not self._fast() or "loss" not in metrics or "accuracy" not in metrics
                or any(np.shape(v) != () for v in metrics.values())):
            self._straight_on(step, metrics)
            return
        names = tuple(sorted(metrics))
        full = self._hold(step, metrics, names)
        if full:
            self.send_block(Block(tuple(s for s, _ in full), stack_rows([m for _, m in full]), names))
