"""Each layer's colour scale for the viewer: `replay`'s rules (replay/scales.py), kept up to date as a run grows.

A bounded activation's scale needs no values. The percentile rule needs every recorded value of the layer;
the book streams each frame into a `TopAbs` once, so a run that is still recording costs only its new frames
per update, and the percentile over the frames so far is exact (a `TopAbs` announced more values than it
gets keeps enough of them). For a completed run the result equals `replay`'s scale, value for value.

The page receives, per scale, the thresholds of `replay.palette.level_thresholds`: it colours a value by
counting thresholds, so the browser applies `value_to_index` without a copy of its rule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from replay.animate import READ_BLOCK, kernel_scale

from replay.palette import level_thresholds
from runfile.reader import Run
from replay.scales import ONE_SIDED, Scale, ScaleSpec, TopAbs, fixed_scale, percentile_scale, values_per_frame

AUTO = ScaleSpec(None, "auto")
READ_BYTES = 16 << 20  # read at a time while a scale streams a layer in


@dataclasses.dataclass
class _Stream:
    top: TopAbs | None  # None for kernels (a running max is enough)
    capacity: int  # frames the TopAbs was announced
    counted: int = 0  # frames streamed so far
    max_abs: float = 0.0
    scale: Scale | None = None


class ScaleBook:
    """Scales of every (run, layer) and (run, kernel) seen, keyed by the run's creation time as well, so a run
    recorded again under the same name starts afresh. Call under the catalog's lock."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, float, str, bool], _Stream] = {}

    def layer_scale(self, rid: str, run: Run, layer: str) -> Scale:
        fixed = fixed_scale(run.activation_label(layer), AUTO)
        if fixed is not None:
            return fixed
        total = run.num_frames
        per_frame = values_per_frame(run.layer_shape(layer), per_channel=False)
        key = (rid, run.created_unix, layer, False)
        stream = self._streams.get(key)
        if stream is None or total > stream.capacity or total < stream.counted:
            capacity = max(2 * total, run.planned_steps + 1, 1)
            stream = self._streams[key] = _Stream(TopAbs(False, capacity * per_frame), capacity)
        self._advance(stream, run, layer, total, kernel=False)
        if stream.scale is None:
            stream.scale = percentile_scale(stream.top, total, run.activation_label(layer) in ONE_SIDED) if total else Scale(
                np.float32(-1), np.float32(1), "diverging", "no frame recorded yet", "no frame yet")
        return stream.scale

    def kernel_scale(self, rid: str, run: Run, layer: str) -> Scale:
        total = run.num_frames
        key = (rid, run.created_unix, layer, True)
        stream = self._streams.get(key)
        if stream is None or total < stream.counted:
            stream = self._streams[key] = _Stream(None, 0)
        self._advance(stream, run, layer, total, kernel=True)
        if stream.scale is None:
            stream.scale = kernel_scale(stream.max_abs, total)
        return stream.scale

    @staticmethod
    def _advance(stream: _Stream, run: Run, layer: str, total: int, kernel: bool) -> None:
        """Streams frames [counted, total) of `layer` in, at most READ_BYTES at a time."""
        per_read = max(1, min(READ_BLOCK, READ_BYTES // max(1, frame_nbytes(run, layer, kernel))))
        for start in range(stream.counted, total, per_read):
            block = run.read_frames(layer, np.arange(start, min(start + per_read, total)), kernel=kernel)
            if kernel:
                if block.size:
                    m = float(np.nanmax(np.abs(block))) if not np.isnan(block).all() else 0.0
                    stream.max_abs = max(stream.max_abs, m)
            else:
                stream.top.add(block)
            stream.scale = None
        stream.counted = max(stream.counted, total)


def frame_nbytes(run: Run, layer: str, kernel: bool) -> int:
    """Bytes of one frame of `layer` (or of its kernel) as its file declares it, before anything is read."""
    shape = run.kernel_shape(layer) if kernel else run.layer_shape(layer)
    itemsize = 4 if kernel else run.layer_dtype(layer).itemsize  # kernels are stored float32
    return itemsize * math.prod(shape)


def scale_json(scale: Scale, provisional: bool = False, covers: int = 0) -> dict[str, Any]:
    """What the page needs to colour and label one scale. A `provisional` scale (a run still recording, a rule
    that depends on the values) covers the `covers` frames recorded so far and will change: the page says so."""
    if provisional:
        return {**scale_json(scale), "provisional": True, "covers": covers}
    return _cached_json(scale)


def _cached_json(scale: Scale) -> dict[str, Any]:
    key = (scale.lo.tobytes(), scale.hi.tobytes(), scale.kind, scale.rule, scale.short, scale.one_sided,
           scale.linthresh, scale.per_step)
    if key not in _JSON:
        if len(_JSON) > 4096:
            _JSON.clear()
        _JSON[key] = _scale_json(scale)
    return _JSON[key]


_JSON: dict[tuple, dict[str, Any]] = {}  # the thresholds take a few milliseconds per scale: kept


def _scale_json(scale: Scale) -> dict[str, Any]:
    return {
        "lo": _floats(scale.lo), "hi": _floats(scale.hi), "kind": scale.kind, "rule": scale.rule,
        "short": scale.short, "describe": scale.describe(), "per_channel": scale.per_channel,
        "one_sided": scale.one_sided, "linthresh": scale.linthresh, "ticks": list(scale.tick_values()),
        "per_step": scale.per_step,
        "thresholds": _floats(level_thresholds(scale.lo, scale.hi, scale.linthresh)),
    }


def _floats(a: np.ndarray) -> Any:
    """float32 values as JSON numbers that parse back to exactly the same value."""
    return np.asarray(a, np.float32).astype(np.float64).tolist()
