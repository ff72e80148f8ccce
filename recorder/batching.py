"""Frames batched per device→host transfer.

A frame is a dozen arrays (each layer's activations, the logits, kernels, Grams); copied one by one, every
array is its own device→host transfer, and on a GPU stepping every millisecond their fixed costs add up. So
when frames come fast, `FrameBatcher` keeps the last `size` of them on the device and packs them with one
jitted concatenation into one flat buffer per dtype (`pack`): one transfer per dtype for `size` frames, and
one queue item, one wake-up of the writer thread. The writer unpacks the buffers into views of each frame
(`FrameBatch.frames`), bit for bit the arrays the step computed.

Frames are batched only while they come faster than one per `GAP_SECONDS` (a loop recording every step
quickly); a frame after a longer gap, one of host arrays or of arrays split over devices, or one of another
structure (the analysed frames
carry Grams) first sends the waiting ones, one by one, so a slow loop's frames go straight to the writer and a
live viewer sees them as soon as before. Only full batches are packed: one compilation per frame structure.
A batch reaches the host as one, so its frames share one wall time (docs/run_schema.md).

Frames replicated over several devices (a device mesh, several processes) are packed from this process's own
replica on its first device: no collective, nothing the other processes must join.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FRAMES_PER_TRANSFER = 8
GAP_SECONDS = 0.05  # frames further apart than this go to the writer one by one


def _on_one_device(frame: Mapping[str, Any]) -> dict[str, jax.Array] | None:
    """`frame` with each replicated array replaced by this process's replica on its first device; None if
    the frame cannot be packed: a host array, an array split over devices, or arrays on different devices."""
    out = {}
    for key, value in frame.items():
        if not isinstance(value, jax.Array):
            return None
        if len(value.sharding.device_set) > 1:
            if not value.sharding.is_fully_replicated:
                return None
            value = value.addressable_data(0)
        out[key] = value
    return out if len(set().union(*(v.devices() for v in out.values()))) == 1 else None


def layout(frame: Mapping[str, Any]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(key, shape, dtype) of each array of `frame`, in key order: how `pack` lays a frame out."""
    return tuple((key, tuple(frame[key].shape), str(frame[key].dtype)) for key in sorted(frame))


@jax.jit
def pack(frames: Sequence[Mapping[str, jax.Array]]) -> dict[str, jax.Array]:
    """The frames' arrays, raveled and concatenated frame after frame (keys in order), one buffer per dtype."""
    parts: dict[str, list[jax.Array]] = {}
    for frame in frames:
        for key in sorted(frame):
            parts.setdefault(str(frame[key].dtype), []).append(jnp.ravel(frame[key]))
    return {dtype: jnp.concatenate(arrays) for dtype, arrays in parts.items()}


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
        return sum(buffer.nbytes for buffer in self.buffers.values())

    def frames(self) -> list[tuple[int, dict[str, np.ndarray]]]:
        """(step, frame) of each frame, its arrays views of the (host) buffers."""
        offsets = dict.fromkeys(self.buffers, 0)
        out = []
        for step in self.steps:
            frame = {}
            for key, shape, dtype in self.layout:
                size = int(np.prod(shape))
                frame[key] = self.buffers[dtype][offsets[dtype]:offsets[dtype] + size].reshape(shape)
                offsets[dtype] += size
            out.append((step, frame))
        return out


class FrameBatcher:
    """Collects frames and hands them on: `send(step, frame)` one by one, or `send_batch(FrameBatch)` for
    `size` frames that came fast (see the module doc). `drain()` sends the waiting ones."""

    def __init__(self, send: Callable[[int, dict], None], send_batch: Callable[[FrameBatch], None],
                 size: int = FRAMES_PER_TRANSFER, gap_seconds: float = GAP_SECONDS):
        self.send, self.send_batch, self.size, self.gap = send, send_batch, size, gap_seconds
        self._waiting: list[tuple[int, dict]] = []
        self._layout: tuple = ()
        self._last = -np.inf  # when the previous frame came

    def add(self, step: int, frame: dict) -> None:
        now = time.monotonic()
        fast, self._last = now - self._last <= self.gap, now
        local = _on_one_device(frame) if fast and self.size > 1 else None
        if local is None:  # a slow loop's frame, or one that cannot be packed: straight on
            self.drain()
            self.send(step, frame)
            return
        frame_layout = layout(local)
        if frame_layout != self._layout:
            self.drain()
        self._layout = frame_layout
        self._waiting.append((step, local))
        if len(self._waiting) == self.size:
            steps = tuple(s for s, _ in self._waiting)
            buffers = pack([f for _, f in self._waiting])
            self._waiting = []
            self.send_batch(FrameBatch(steps, buffers, frame_layout))

    def drain(self) -> None:
        """Sends the waiting frames, one by one."""
        waiting, self._waiting = self._waiting, []
        for step, frame in waiting:
            self.send(step, frame)
