"""Frames of one layer (or of its kernels) over the recorded steps, and their encoding into GIF/MP4 files.

The stamp on every frame is the recorded step itself (the number of updates applied before that frame's
forward pass: step 0 is the initialisation), followed by two accuracies that are honest about what they are:

* TRAIN ACC: the mean accuracy of the last (up to) 10 training batches at or before the step, each computed
  with the parameters before its update (as stored under /train);
* EVAL ACC: the latest evaluation on the held-out test subset at or before the step (/eval), '-' before the
  first one.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from replay.gif import GifWriter
from replay.grid import GridStyle, LayerGrid
from replay.palette import build_palette, probe_to_index, value_to_index
from runfile.reader import Run
from replay.scales import Scale, ScaleSpec, resolve_scale, step_scales
from replay.selection import thin
from replay.video import Mp4Writer

TRAIN_WINDOW = 10
READ_BLOCK = 32  # frames read from the file at a time
KERNEL_CELL = 24  # pixels per kernel tile side at zoom 1


def stamp_texts(run: Run, steps: Sequence[int], step_text: Callable[[int], str], metrics: bool = True) -> list[str]:
    """The stamp line of each step (see the module docstring)."""
    if not metrics:
        return [step_text(int(s)) for s in steps]
    train, ev = run.train_metrics(), run.eval_metrics()
    cum = np.concatenate([[0.0], np.cumsum(train.accuracy, dtype=np.float64)])
    out = []
    for s in steps:
        i = int(np.searchsorted(train.step, s, side="right"))
        j = int(np.searchsorted(ev.step, s, side="right"))
        lo = max(0, i - TRAIN_WINDOW)
        tr = f"{(cum[i] - cum[lo]) / (i - lo):.3f}" if i > lo else "  -  "
        e = f"{ev.accuracy[j - 1]:.3f}" if j else "  -  "
        out.append(f"{step_text(int(s))}  TRAIN ACC {tr}  EVAL ACC {e}")
    return out


class FrameSource(Protocol):
    """Anything that renders palette-index frames at frame positions, with one palette for all of them."""

    palette: np.ndarray  # [256, 3] uint8

    def __call__(self, positions: np.ndarray) -> Iterator[np.ndarray]: ...


class Frames:
    """Renders frames of one picture (a layer's activations or a layer's kernels) at frame positions."""

    grid: LayerGrid
    palette: np.ndarray
    scale: Scale

    def __init__(self, run: Run, metrics_stamp: bool):
        self.run = run
        self.nan_values = self.nan_frames = 0  # of the last frames rendered
        self._steps = run.steps
        self._metrics = metrics_stamp

    def values(self, positions: np.ndarray) -> np.ndarray:  # [len, P, H, W, C] float32
        raise NotImplementedError

    def __call__(self, positions: np.ndarray) -> Iterator[np.ndarray]:
        """The frames at `positions`; counts the NaN values drawn (`nan_values`, `nan_frames`) on the way."""
        stamps = stamp_texts(self.run, self._steps[positions], self.grid.stamp.step_text, self._metrics)
        self.nan_values = self.nan_frames = 0
        for b in range(0, len(positions), READ_BLOCK):
            block = positions[b : b + READ_BLOCK]
            values = self.values(block)
            nans = np.isnan(values).reshape(len(block), -1).sum(axis=1)
            self.nan_values += int(nans.sum())
            self.nan_frames += int(np.count_nonzero(nans))
            if self.grid.scale.per_step:  # each frame on its own [−S_t, S_t], its ticks drawn on it
                s = step_scales(values)
                index = value_to_index(values, -s[:, None, None, None, None], s[:, None, None, None, None])
                for k in range(len(block)):
                    own = dataclasses.replace(self.grid.scale, lo=-s[k], hi=s[k])
                    yield self.grid.render(index[k], stamps[b + k], own)
                continue
            index = self.grid.indices(values)  # [len, P, H, W, C] uint8
            for k in range(len(block)):
                yield self.grid.render(index[k], stamps[b + k])


def layer_scale(run: Run, layer: str, spec: ScaleSpec = ScaleSpec(None, "auto")) -> Scale:
    """The colour scale of `layer` under `spec` (replay/scales.py), reading the layer only if the rule needs it."""
    all_frames = np.arange(run.num_frames)
    chunks = (run.read_frames(layer, all_frames[i : i + READ_BLOCK]) for i in range(0, len(all_frames), READ_BLOCK))
    return resolve_scale(run.activation_label(layer), spec, chunks, run.layer_shape(layer), run.num_frames)


class LayerFrames(Frames):
    """Activations of `layer` on the chosen probes and channels."""

    def __init__(self, run: Run, layer: str, probes: Sequence[int] | None = None, channels: Sequence[int] | None = None,
                 scale_spec: ScaleSpec = ScaleSpec(None, "auto"), style: GridStyle = GridStyle(),
                 metrics_stamp: bool = True, title: str | None = None, scale: Scale | None = None):
        super().__init__(run, metrics_stamp)
        p, h, w, c = run.layer_shape(layer)
        self.layer = layer
        self.probes = list(range(p)) if probes is None else list(probes)
        self.channels = list(range(c)) if channels is None else list(channels)  # positions in the stored axis
        numbers = run.layer_channels(layer)  # the model's channel numbers (a subset when recorded with channels=)
        activation = run.activation_label(layer)
        if scale is None:
            scale = layer_scale(run, layer, scale_spec)
        self.scale = scale  # of all channels; the grid gets the shown ones
        if scale.per_channel:
            scale = dataclasses.replace(scale, lo=scale.lo[self.channels], hi=scale.hi[self.channels])
        images, labels, _ = run.probes()
        probe_index, colours = probe_to_index(images[self.probes])
        names = [run.class_names[int(labels[k])] if int(labels[k]) < len(run.class_names) else str(labels[k])
                 for k in self.probes]
        self.palette = build_palette(scale.kind, colours)
        self.grid = LayerGrid(title or f"{layer}  {activation}", names, (h, w), [numbers[c] for c in self.channels], scale,
                              int(self._steps[-1]) if len(self._steps) else 0, style, probe_index=probe_index)

    def values(self, positions: np.ndarray) -> np.ndarray:
        raw = self.run.read_frames(self.layer, positions)  # [len, P, H, W, C] as stored
        return raw[:, self.probes][..., self.channels].astype(np.float32)


class KernelFrames(Frames):
    """The kernels of `layer`: one row per input channel, one column per filter, fixed scale max |w|."""

    def __init__(self, run: Run, layer: str, style: GridStyle = GridStyle(), metrics_stamp: bool = True):
        super().__init__(run, metrics_stamp)
        self.layer = layer
        k = run.read_frames(layer, np.arange(run.num_frames), kernel=True)  # [T, kh, kw, Cin, Cout]
        self.scale = kernel_scale(float(np.nanmax(np.abs(k))) if k.size else 0.0, run.num_frames)
        _, kh, kw, cin, cout = k.shape
        self.palette = build_palette("diverging")
        style = dataclasses.replace(style, transpose=True)
        self.grid = LayerGrid(f"{layer} kernels", [f"in {i}" for i in range(cin)], (kh, kw), list(range(cout)),
                              self.scale, int(self._steps[-1]) if len(self._steps) else 0, style,
                              cell_size=(KERNEL_CELL, KERNEL_CELL), channel_prefix="F")

    def values(self, positions: np.ndarray) -> np.ndarray:
        k = self.run.read_frames(self.layer, positions, kernel=True)  # [len, kh, kw, Cin, Cout]
        return k.transpose(0, 3, 1, 2, 4).astype(np.float32)  # [len, Cin, kh, kw, Cout]


def kernel_scale(max_abs: float, num_frames: int) -> Scale:
    """Kernels' fixed scale [−m, m], m = max |w| over every recorded step (1 if all are zero)."""
    s = np.float32(max_abs) if max_abs > 0 else np.float32(1)
    return Scale(-s, s, "diverging", f"fixed: max |w| over all {num_frames} recorded steps", "fixed: max |w|, all steps")


@dataclasses.dataclass(frozen=True)
class Animation:
    path: Path
    frames: int  # frames written
    selected: int  # frames selected before --max-mb
    stride: int  # > 1 when --max-mb dropped frames
    bytes: int
    mp4: Path | None = None
    positions: tuple[int, ...] = ()  # the frames written: positions in the run's recorded steps

    @property
    def dropped(self) -> int:
        return self.selected - self.frames


def write_animation(frames: FrameSource, positions: np.ndarray, path: Path, duration_ms: int,
                    max_bytes: int | None = None, mp4: bool = False) -> Animation:
    """Writes the frames at `positions` as a GIF; with `max_bytes`, thins them until the GIF fits.

    Thinning keeps every k-th selected frame plus the last (the smallest k found that fits); it is reported
    in the result, never silent.
    """
    stride = 1
    while True:
        pos = thin(positions, stride)
        with GifWriter(path, frames.palette, duration_ms) as gif:
            over = False
            for n, frame in enumerate(frames(pos), start=1):
                gif.add(frame)
                written = gif.bytes_written
                if max_bytes is not None and written > max_bytes:
                    over = True
                    break
            if over:
                gif.abort()
        if not over:
            break
        if len(pos) <= 2:
            raise ValueError(
                f"{path.name}: even the first and last frames need more than --max-mb {max_bytes / 1e6:g}; "
                "lower --zoom or select fewer --channels/--probes"
            )
        per_frame = written / n
        fits = max(2.0, 0.9 * max_bytes / per_frame)
        stride = max(stride + 1, math.ceil(len(positions) / fits))
    mp4_path = None
    if mp4:
        mp4_path = path.with_suffix(".mp4")
        with Mp4Writer(mp4_path, frames.palette, 1000.0 / duration_ms) as video:
            for frame in frames(pos):
                video.add(frame)
    return Animation(path, len(pos), len(positions), stride, path.stat().st_size, mp4_path, tuple(map(int, pos)))
