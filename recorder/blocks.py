"""Blocks: up to K training steps in one dispatch, their frames and metrics staged on the device and handed
to the host as one `Block`.

On a GPU a step takes a millisecond or two, so any per-step host work (a dispatch, a transfer, a queue item,
a Python loop over metrics) costs a visible share of it. The built-in loop therefore runs `n <= K` steps per
call of one jitted function (`BlockStep`): a `lax.fori_loop` over the steps, with a trip count that is an
argument, so any `n` runs the same executable. Each step trains; at a step that records, it also computes the
probe frame (and at an analysed step the analysis Grams) and writes it into a slot of a device buffer. The
host receives per block:

- `metrics`: float32 [K, M], one row per step (loss, accuracy, the finiteness flag, the per-layer weight
  measures, the learning rate), one device→host transfer;
- `frames`: one buffer per dtype, [F', E] (row j: the j-th frame of the block, every array raveled in key
  order), one transfer per dtype; the same for the analysis entries. F' is the block's F frames rounded up
  to a power of two (`first_rows`): the buffer is cut on the device, so that a block of few frames does not
  send K rows, in one of log2(K) shapes, so that the cut compiles a handful of times in a run, not once per
  count of frames (each new count compiled for 25 ms on the CPU backend, in the loop's thread). Where the
  frames are stored uncompressed beside a GPU, the frame's arrays travel instead as `CHUNKS`, uint8 [F', E]:
  row j holds each array's stored bytes followed by its Fletcher-32 (recorder/fletcher.py), 4 bytes
  little-endian, which is exactly the chunk HDF5 stores for that array's row. The writer then neither
  computes a checksum nor copies a byte: each array's chunks are written straight from the block's buffer.

So a block is one dispatch, one transfer per buffer, one writer queue item and one HDF5 write per dataset,
whatever its length. Between blocks the loop makes no device→host transfer (tests/test_blocks.py checks it
with `jax.transfer_guard_device_to_host`).

K (`block_size`) is fixed for a run by the frame's bytes (the buffers stay within `BLOCK_BYTES`) and `MAX_BLOCK`
(on the CPU backend K = 1: see `block_size`), so every run of a config compiles the same executable; each step's arithmetic is the loop body's whatever n
and wherever the step falls in its block, so a resumed run stays bitwise equal to an uninterrupted one. The
number of steps per block, n, is chosen by the loop from the measured step time (about `BLOCK_SECONDS` of
training per block: the live viewer and a kill lose at most that much more than before).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from recorder.capture import ANALYSIS_ROWS, analysis_of
from recorder.fletcher import fletcher32_of_bytes, stored_bytes

BLOCK_BYTES = 32 << 20  # device bytes of one block's frame buffer
MAX_BLOCK = 64  # steps per block at most
BLOCK_SECONDS = 1.0  # training time per block the loop aims at (see TrainingLoop.block_length)
TRAIN, FRAME, ANALYSE = 0, 1, 2  # what a step does besides training: nothing, the probe frame, frame + analysis
CHUNKS = "chunks"  # the frame buffer of the checksummed arrays as HDF5 chunks: uint8, each array's bytes then its checksum

Layout = tuple[tuple[str, tuple[int, ...], str], ...]  # (key, shape, dtype) of each array, in key order


def block_size(frame_bytes: int, requested: int = 0, backend: str | None = None) -> int:
    """K, the most steps one block holds: `requested` if > 0; on the CPU backend 1 (XLA's CPU backend runs
    a loop body several times slower than the same operations outside a loop: 27 against 7 ms per step of
    the `tiny` model, measured; a CPU step is slow enough that one dispatch per step costs little); else as
    many frames as fit `BLOCK_BYTES`, 1 to `MAX_BLOCK`."""
    if requested > 0:
        return int(requested)
    if (backend or jax.default_backend()) == "cpu":
        return 1
    return int(max(1, min(MAX_BLOCK, BLOCK_BYTES // max(frame_bytes, 1))))


def layout_of(tree: Mapping[str, Any]) -> Layout:
    """(key, shape, dtype) of each array of `tree` (arrays or shape structs), in key order."""
    return tuple((key, tuple(tree[key].shape), str(np.dtype(tree[key].dtype))) for key in sorted(tree))


def checksummed(layout: Layout) -> Layout:
    """The entries of `layout` that travel as chunks in `CHUNKS`, with their Fletcher-32s: all but the analysis
    entries, which the writer stores transformed (a Gram's upper triangle), not as computed."""
    return tuple(entry for entry in layout if not entry[0].startswith("analysis/"))


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def layout_nbytes(layout: Layout) -> int:
    """Bytes of one frame of `layout`: its arrays', without checksums."""
    return sum(_nbytes(shape, dtype) for _, shape, dtype in layout)


def _chunked(layout: Layout, checksums: bool) -> tuple[Layout, Layout]:
    """(the entries in `CHUNKS`, the entries in the per-dtype buffers) of `layout`."""
    chunked = checksummed(layout) if checksums else ()
    return chunked, tuple(entry for entry in layout if entry not in chunked)


def pack_frame(values: Mapping[str, jax.Array], layout: Layout, checksums: bool = False) -> dict[str, jax.Array]:
    """One flat vector per dtype: the arrays of `values` raveled in `layout`'s order (traceable: a loop of
    one's own builds a `Block`'s frame buffers by stacking these, one row per frame). With `checksums` the
    `checksummed(layout)` entries go instead into `CHUNKS` (uint8): each array's bytes in the stored dtype,
    then its Fletcher-32, little-endian."""
    chunked, rest = _chunked(layout, checksums)
    parts: dict[str, list[jax.Array]] = {}
    for key, _, dtype in rest:
        parts.setdefault(dtype, []).append(jnp.ravel(values[key]).astype(dtype))
    for key, _, dtype in chunked:
        stored = stored_bytes(jnp.asarray(values[key]).astype(dtype))
        parts.setdefault(CHUNKS, []).extend([stored, stored_bytes(fletcher32_of_bytes(stored))])
    return {dtype: _concatenated(arrays) for dtype, arrays in parts.items()}


def _concatenated(parts: Sequence[jax.Array]) -> jax.Array:
    """The 1-D `parts` end to end. On the CPU backend each is written into one buffer at its offset: XLA's CPU
    backend runs that in 0.14 ms for keras_fashion's 587 kB frame, `jnp.concatenate` in 0.28 (the frame's
    forward pass: 0.83). Elsewhere `jnp.concatenate`, one fused copy, not a chain of updates in the block's loop."""
    if jax.default_backend() != "cpu":
        return jnp.concatenate(parts)
    out, at = jnp.zeros((sum(int(p.size) for p in parts),), parts[0].dtype), 0
    for part in parts:
        out = lax.dynamic_update_slice(out, part, (at,))
        at += int(part.size)
    return out


def _widths(layout: Layout, checksums: bool = False) -> dict[str, int]:
    """Each buffer's width: dtype -> elements per row (with `checksums`, `CHUNKS` -> bytes per row)."""
    chunked, rest = _chunked(layout, checksums)
    out: dict[str, int] = {}
    for _, shape, dtype in rest:
        out[dtype] = out.get(dtype, 0) + int(np.prod(shape))
    if chunked:
        out[CHUNKS] = sum(_nbytes(shape, dtype) + 4 for _, shape, dtype in chunked)
    return out


def _all_finite(arrays: Mapping[str, jax.Array]) -> jax.Array:
    """Whether every value of every array is finite (traceable)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in arrays.values()]))


def _dtype(buffer: str) -> Any:
    return jnp.uint8 if buffer == CHUNKS else buffer


def unpack(buffers: Mapping[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """Host buffers [n, E] per dtype (and `CHUNKS`, if there) -> {key: [n, *shape]}, each a view of its
    buffer (no copy)."""
    chunks = chunk_columns(buffers, layout)
    offsets = dict.fromkeys(buffers, 0)
    out = {}
    for key, shape, dtype in layout:
        if key in chunks:
            rows = chunks[key]
            out[key] = rows[:, :rows.shape[1] - 4].view(dtype).reshape(len(rows), *shape)
            continue
        size, buffer = int(np.prod(shape)), buffers[dtype]
        out[key] = buffer[:, offsets[dtype]:offsets[dtype] + size].reshape(len(buffer), *shape)
        offsets[dtype] += size
    return out


def chunk_columns(buffers: Mapping[str, Any], layout: Layout) -> dict[str, np.ndarray]:
    """(host buffers) Each checksummed array's rows of `CHUNKS` as key -> uint8 [n, its bytes + 4], views: the
    chunks HDF5 stores for its rows, ready to write ({} without `CHUNKS`)."""
    buffer = buffers.get(CHUNKS)
    if buffer is None:
        return {}
    buffer, out, at = np.asarray(buffer), {}, 0
    for key, shape, dtype in checksummed(layout):
        size = _nbytes(shape, dtype) + 4
        out[key] = buffer[:, at:at + size]
        at += size
    return out


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class Block:
    """The results of training steps `steps` (host ints, consecutive) as the host receives them. The leaves
    (metrics, frame and analysis buffers, host-known scalars) are what the writer copies to the host."""

    steps: tuple[int, ...]
    metrics: Any  # [K, M] float32, rows 0..len(steps)-1 valid
    metric_names: tuple[str, ...]
    frame_steps: tuple[int, ...] = ()
    frames: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # dtype -> [len(frame_steps), E]
    frame_layout: Layout = ()
    analysis_steps: tuple[int, ...] = ()
    analysis: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # dtype -> [len(analysis_steps), E]
    analysis_layout: Layout = ()
    scalars: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # host-known series: name -> [len(steps)]

    def tree_flatten(self) -> tuple[tuple, tuple]:
        return ((self.metrics, dict(self.frames), dict(self.analysis), dict(self.scalars)),
                (self.steps, self.metric_names, self.frame_steps, self.frame_layout, self.analysis_steps,
                 self.analysis_layout))

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: tuple) -> "Block":
        steps, names, frame_steps, frame_layout, analysis_steps, analysis_layout = aux
        metrics, frames, analysis, scalars = children
        return cls(steps, metrics, names, frame_steps, frames, frame_layout, analysis_steps, analysis,
                   analysis_layout, scalars)

    @property
    def frame_nbytes(self) -> int:
        """Bytes of the block's frames and analysis rows (their arrays' bytes, without checksums)."""
        return (len(self.frame_steps) * layout_nbytes(self.frame_layout)
                + len(self.analysis_steps) * layout_nbytes(self.analysis_layout))

    def frame_chunks(self) -> dict[str, np.ndarray]:
        """(on host values) Each frame array's rows as the chunks the device made of them (`chunk_columns`),
        key -> uint8 [len(frame_steps), bytes + 4]; {} if the device made none."""
        n = len(self.frame_steps)
        return chunk_columns({d: b[:n] for d, b in self.frames.items()}, self.frame_layout) if n else {}

    def columns(self) -> dict[str, np.ndarray]:
        """(on host values) Each metric over the block's steps: name -> [len(steps)]."""
        rows = np.asarray(self.metrics)[:len(self.steps)]
        return {name: rows[:, i] for i, name in enumerate(self.metric_names)}

    def frame_arrays(self) -> dict[str, np.ndarray]:
        """(on host values) The frames' arrays, key -> [len(frame_steps), *shape], with the analysis entries."""
        valid = lambda buffers, n: {d: b[:n] for d, b in buffers.items()}  # views: rows past n were never written
        out = unpack(valid(self.frames, len(self.frame_steps)), self.frame_layout) if self.frame_steps else {}
        if self.analysis_steps:
            out.update(unpack(valid(self.analysis, len(self.analysis_steps)), self.analysis_layout))
        return out


@functools.partial(jax.jit, static_argnums=1)
def _leading_rows(buffers: Mapping[str, jax.Array], rows: int) -> dict[str, jax.Array]:
    return {d: b[:rows] for d, b in buffers.items()}


def _cut(n: int, total: int) -> int:
    """The rows `first_rows` keeps of `total` for n filled ones: n rounded up to a power of two, at most total."""
    return min(1 << (n - 1).bit_length(), total)


def first_rows(buffers: Mapping[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """The buffers (device, [R, E] each) cut to their first n rows rounded up to a power of two (at most R),
    in one dispatch; {} when n = 0. A `Block` reads only its first n rows."""
    if not n:
        return {}
    total = min(b.shape[0] for b in buffers.values())
    rows = _cut(n, total)
    return dict(buffers) if all(b.shape[0] == rows for b in buffers.values()) else _leading_rows(buffers, rows)


def compile_cuts(buffers: Mapping[str, jax.ShapeDtypeStruct]) -> list[Callable[[], Any]]:
    """Jobs that compile every cut `first_rows` makes of buffers of these shapes, ahead of training."""
    total = min(b.shape[0] for b in buffers.values())
    cuts = sorted({_cut(n, total) for n in range(1, total + 1)} - {total})
    return [lambda rows=rows: _leading_rows.lower(buffers, rows).compile() for rows in cuts]


class BlockStep:
    """The jitted block of a run's training step (`update`) and frame (`frame_of`, see recorder/train.py).

    `update(state, *data, idx, step) -> (state, metrics)` trains one step on the batch rows `idx` [B];
    `frame_of(params, model_state, probe_x[, analysis_x]) -> frame` computes a frame. With `probe_x` None the
    block only trains. Call it with the state (donated), the data arguments, the probe and analysis inputs
    and a host plan made by `plan` (one array, copied in at dispatch). With `checksums` each frame's arrays
    travel as checksummed chunks (`CHUNKS`; recorder/fletcher.py).

    With K = 1 (the CPU backend's) an analysed step is two dispatches: the step returns the analysis images'
    activations and a second program computes their Grams and statistics (and clears the step's finiteness
    flag if those are not finite). XLA's CPU backend ran both in one program at half the speed: keras_fashion's
    analysed frame 32–36 ms in one, 18 ms in two (6.7 + 10.8; learn_to_see 9.1 and 9.4, vgg_bn 48.9 and
    47.6: no loss elsewhere)."""

    def __init__(self, update: Callable, frame_of: Callable, size: int, state: Any, data: Sequence[Any],
                 batch: int, probe_x: Any = None, analysis_x: Any = None, checksums: bool = False):
        self.size, self.batch, self.checksums = size, batch, checksums
        self._update, self._frame_of = update, frame_of
        self.traces = 0
        idx, step = jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)
        metrics = jax.eval_shape(update, state, *data, idx, step)[1]
        self.metric_names = tuple(sorted(metrics))
        self.frame_layout: Layout = ()
        self.analysis_layout: Layout = ()
        self.kinds = [TRAIN]
        if probe_x is not None:
            frame = jax.eval_shape(frame_of, state.params, state.model_state, probe_x)
            self.frame_layout = layout_of(frame)
            self.kinds.append(FRAME)
            if analysis_x is not None:
                full = jax.eval_shape(frame_of, state.params, state.model_state, probe_x, analysis_x)
                self.analysis_layout = layout_of({k: v for k, v in full.items() if k not in frame})
                self.kinds.append(ANALYSE)
        self._jitted = jax.jit(self._block, donate_argnums=0, static_argnums=6)
        self._split = size == 1 and ANALYSE in self.kinds  # an analysed step as two dispatches (see the class doc)
        self._analyse = jax.jit(self._analysis)

    def plan(self, steps: Sequence[int], batches: np.ndarray, kinds: Sequence[int]) -> np.ndarray:
        """The host plan of one block: int32 [K, B + 4], row k = (batch rows of step k, step, kind, frame
        slot, analysis slot); rows past len(steps) are never run. `batches`: [len(steps), B] int32."""
        n = len(steps)
        if not 1 <= n <= self.size:
            raise ValueError(f"a block holds 1 to {self.size} steps, got {n}")
        out = np.zeros((self.size, self.batch + 4), np.int32)
        kinds = np.asarray(kinds, np.int32)
        out[:n, :self.batch] = batches
        out[:n, self.batch] = steps
        out[:n, self.batch + 1] = kinds
        out[:n, self.batch + 2] = np.where(kinds >= FRAME, np.cumsum(kinds >= FRAME) - 1, self.size)  # K: discarded
        out[:n, self.batch + 3] = np.where(kinds == ANALYSE, np.cumsum(kinds == ANALYSE) - 1, self.size)
        return out

    def variants(self, kinds: Sequence[int]) -> list[int | None]:
        """The executables that blocks of steps of these `kinds` run: one (None: the kind is read per step on
        the device) when K > 1; with K = 1, one per kind, each straight-line (XLA's CPU backend also runs
        conditional branches slowly)."""
        return [None] if self.size > 1 else sorted(set(kinds))

    def compile(self, state: Any, data: Sequence[Any], plan: Any, probe_x: Any = None, analysis_x: Any = None,
                variant: int | None = None) -> None:
        """Compiles one variant (see `variants`) ahead of its first call, which then reuses it."""
        self._jitted.lower(state, tuple(data), plan, np.int32(1), probe_x, analysis_x, variant).compile()
        if self._split and variant == ANALYSE:
            full = jax.eval_shape(lambda p, r, x, a: self._frame_of(p, r, x, a, ANALYSIS_ROWS), state.params,
                                  state.model_state, probe_x, analysis_x)
            metrics = jax.ShapeDtypeStruct((1, len(self.metric_names)), jnp.float32)
            self._analyse.lower(metrics, {k: v for k, v in full.items() if k.startswith("analysis/rows/")}).compile()

    def __call__(self, state: Any, data: Sequence[Any], plan: Any, n: int, probe_x: Any = None,
                 analysis_x: Any = None, kind: int = TRAIN) -> tuple[Any, Any, dict[str, jax.Array], dict[str, jax.Array]]:
        """Runs the first `n` steps of `plan` (with K = 1: the one step, of `kind`): (state, metrics [K, M],
        frame buffers [K + 1, E] per dtype, analysis buffers [K + 1, E] per dtype; [1, E] when K = 1).
        Nothing waits for the device."""
        variant = None if self.size > 1 else int(kind)
        out = self._jitted(state, tuple(data), plan, np.int32(n), probe_x, analysis_x, variant)
        if self._split and variant == ANALYSE:  # the step returned the analysis rows
            state, metrics, frames, rows = out
            metrics, analysis = self._analyse(metrics, rows)
            return state, metrics, frames, analysis
        return out

    def buffers(self) -> list[dict[str, jax.ShapeDtypeStruct]]:
        """The shapes of the frame and analysis buffers a block returns ([K + 1, E] per dtype; K > 1)."""
        return [{d: jax.ShapeDtypeStruct((self.size + 1, w), _dtype(d)) for d, w in _widths(layout, sums).items()}
                for layout, sums in ((self.frame_layout, self.checksums), (self.analysis_layout, False)) if layout]

    def _zeros(self, layout: Layout, rows: int | None = None, checksums: bool = False) -> dict[str, jax.Array]:
        shape = (lambda w: (w,)) if rows is None else (lambda w: (rows, w))
        return {d: jnp.zeros(shape(w), _dtype(d)) for d, w in _widths(layout, checksums).items()}

    def _analysis(self, metrics: jax.Array, rows: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The second dispatch of a split analysed step: (its metrics [1, M] with the finiteness flag cleared if
        a Gram or statistic is not finite, the analysis buffers [1, E] per dtype)."""
        out = analysis_of(rows)
        finite = _all_finite(out)
        i = self.metric_names.index("finite")
        metrics = metrics.at[0, i].set(jnp.where(finite, metrics[0, i], 0.0))
        return metrics, {d: v[None] for d, v in pack_frame(out, self.analysis_layout).items()}

    def _block(self, state: Any, data: tuple, plan: jax.Array, n: jax.Array, probe_x: Any, analysis_x: Any,
               variant: int | None):
        self.traces += 1  # runs only while tracing
        k, b = self.size, self.batch
        names = self.metric_names

        def row(metrics: Mapping[str, jax.Array]) -> jax.Array:
            return jnp.stack([jnp.asarray(metrics[name], jnp.float32) for name in names])

        # what a step records besides training, on the updated state: (finite, frame vectors, analysis vectors)
        sums = self.checksums

        def nothing(state):
            return jnp.bool_(True), self._zeros(self.frame_layout, checksums=sums), self._zeros(self.analysis_layout)

        def frame_only(state):
            frame = self._frame_of(state.params, state.model_state, probe_x)
            return _all_finite(frame), pack_frame(frame, self.frame_layout, sums), self._zeros(self.analysis_layout)

        def frame_and_analysis(state):
            full = self._frame_of(state.params, state.model_state, probe_x, analysis_x)
            frame = {key: full[key] for key, _, _ in self.frame_layout}
            rest = {key: full[key] for key, _, _ in self.analysis_layout}
            return _all_finite(full), pack_frame(frame, self.frame_layout, sums), pack_frame(rest, self.analysis_layout)

        branches = [nothing, frame_only, frame_and_analysis][:len(self.kinds)]

        def body(i, carry):
            state, rows, frames, analysis = carry
            p = plan[i]
            idx, step, kind, fslot, aslot = p[:b], p[b], p[b + 1], p[b + 2], p[b + 3]
            state, metrics = self._update(state, *data, idx, step)  # the training step: outside any branch
            if variant is not None or len(branches) == 1:
                finite, f, a = branches[variant or 0](state)
            else:  # only the frame's forward pass is conditional
                finite, f, a = lax.switch(jnp.clip(kind, 0, len(branches) - 1), branches, state)
            m = row({**metrics, "finite": metrics["finite"] & finite})
            rows = lax.dynamic_update_slice(rows, m[None], (i, 0))
            frames = {d: lax.dynamic_update_slice(frames[d], f[d][None], (fslot, 0)) for d in frames}
            analysis = {d: lax.dynamic_update_slice(analysis[d], a[d][None], (aslot, 0)) for d in analysis}
            return state, rows, frames, analysis

        if self._split and variant == ANALYSE:  # K = 1: the analysis rows leave unreduced (see the class doc)
            p = plan[0]
            state, metrics = self._update(state, *data, p[:b], p[b])
            full = self._frame_of(state.params, state.model_state, probe_x, analysis_x, ANALYSIS_ROWS)
            frame = {key: full[key] for key, _, _ in self.frame_layout}
            rows = {key: v for key, v in full.items() if key.startswith("analysis/rows/")}
            m = row({**metrics, "finite": metrics["finite"] & _all_finite(full)})
            return state, m[None], {d: v[None] for d, v in pack_frame(frame, self.frame_layout, sums).items()}, rows

        slots = k if k == 1 else k + 1  # the last slot takes the frames of steps that record none
        carry = (state, jnp.zeros((k, len(names)), jnp.float32), self._zeros(self.frame_layout, slots, sums),
                 self._zeros(self.analysis_layout, slots))
        if k == 1:  # one step, straight-line: no loop (a slot index past the end is clamped to the only one)
            return body(0, carry)
        return lax.fori_loop(0, n, body, carry)
