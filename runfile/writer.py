"""Synchronous HDF5 writer of the run file described in `docs/run_schema.md` (`SCHEMA_VERSION`).

`RunWriter` is the interface: typed methods for a frame, a training row, an evaluation, the test result,
extra scalar series and the status. `H5RunWriter` implements it; `AsyncRunWriter` (async_writer.py) wraps any
`RunWriter` and runs its calls on one background thread.

All datasets are created up front, then the file switches to SWMR mode, so another process can read it
while it grows and a killed run leaves a readable file. This class does no threading and accepts host
arrays only.

Cost per frame matters (it runs beside training on the same cores), so:
- a dataset stored one row per chunk (activations, Grams, logits, kernels) has its chunks encoded here,
  in the format its filter pipeline stores (for `gzip`: byte shuffle, then a zlib stream; unfiltered:
  the raw bytes), so every HDF5 reader decodes them as usual, and written with H5Dwrite_chunk,
  bypassing HDF5's filter pipeline (`_encoder` reads the pipeline from the dataset itself). The deflate encoder is ISA-L's
  at level 1 (runfile/deflate.py): 4× faster than zlib's level 1 on activations, for a 2% larger file; it
  runs without holding Python's GIL, so the training loop keeps dispatching meanwhile;
- a thread that runs Python beside the writer makes every GIL hand-over cost up to a switch interval, so the
  writer hands it over as few times as it can: a batch's rows are shuffled in one copy, each chunk is
  deflated in one call (runfile/deflate.py), and the checksums, their copies and the chunk writes keep the
  GIL (runfile/checksum.py, runfile/chunks.py);
- every row is staged and written at `flush()`, which `AsyncRunWriter` calls at least once a second and
  `close()` calls last, or earlier for frames once `STAGE_BYTES` of them wait. So one HDF5 write (one
  extent change, one call per dataset or per chunk) takes every frame of that second: a fast loop's
  frames are batched, a slow loop's go one by one. The chunks of a batch are encoded on `encode_threads`
  threads at once (ISA-L lets the GIL go), in tasks of about `TASK_BYTES` of rows, by default a quarter of the CPUs, at most 4, one on a small
  machine. Each group's `step` column is written after the rows it indexes, so its length always counts
  complete rows; a killed run loses at most the staged second.

A full disk must not cost what is already written: HDF5 is not consistent after a write that fails half
way. So before rows are staged, the writer checks that they fit, with `ROOM_MARGIN` to spare, in what the
disk and the process's file size limit leave (`room`, measured at each flush); when they might not, it
writes what is staged first and measures again, and if they still do not fit it raises `OSError` (ENOSPC or
EFBIG) before writing any of them: the file keeps every row before them and closes whole. A write that
fails anyway marks the writer broken: it then writes nothing more but the status, and `close` closes the
file as its last complete flush left it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import h5py
import numpy as np

from runfile import deflate, encoders
from runfile.checksum import fletcher32, rows_with_checksums, with_checksum
from runfile.chunks import write_chunks, write_row_chunks
from runfile.schema import (AFTER_NONLINEARITY, COMPRESSIONS, LIBVER, MAX_SCALARS, MESSAGE_BYTES, SCALAR_NAME_BYTES,
                            SCHEMA, SCHEMA_VERSION, STATUS_BYTES, STATUSES)
STAGE_BYTES = 32 << 20  # frames staged beyond this many bytes are written before the next flush
ROOM_MARGIN = 1 << 20  # bytes kept free beyond the rows themselves: the metadata HDF5 allocates with them


def room(path: Path, file_end: int) -> tuple[int, int, str]:
    """How many more bytes the file at `path` can take (`file_end`: HDF5's end of file), the errno a write
    past that fails with, and what limits it: free disk space or the process's file size limit."""
    st = os.statvfs(path.parent)
    free = (st.f_bavail * st.f_frsize, errno.ENOSPC, "the free disk space")
    try:
        import resource
    except ImportError:  # not a Unix
        return free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit - file_end < free[0]:
        return limit - file_end, errno.EFBIG, "the process's file size limit"
    return free


def default_encode_threads(accelerated: bool = False) -> int:
    """Threads encoding a batch's chunks: a quarter of the CPUs (the rest train), 1 to 4; beside a GPU or TPU,
    which leaves the host's cores idle, half of them, 1 to 8 (a GPU loop recording 1,000 frames of 0.6 MB a
    second needs ~600 MB/s of deflate, about 2 ms of one core per frame)."""
    cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2)) if accelerated else max(1, min(4, cpus // 4))


class RunWriter(Protocol):
    """What the training side writes. Steps are those of docs/run_schema.md; a `wall_time` of None means
    "seconds since the writer started, now" (the async writer stamps it when the values reach the host)."""

    path: Path

    def write_frame(self, step: int, frame: Mapping[str, Any], wall_time: float | None = None) -> None: ...
    def write_frames(self, steps: Any, frames: Mapping[str, Any], wall_time: float | None = None,
                     chunks: Mapping[str, Any] | None = None) -> None: ...
    def write_analysis(self, steps: Any, arrays: Mapping[str, Any]) -> None: ...
    def write_train(self, step: Any, loss: Any, accuracy: Any, wall_time: Any = None) -> None: ...
    def write_eval(self, step: int, loss: Any, accuracy: Any) -> None: ...
    def write_test(self, loss: Any, accuracy: Any, count: int) -> None: ...
    def write_scalars(self, step: int, values: Mapping[str, Any]) -> None: ...
    def write_series(self, steps: Any, values: Mapping[str, Any]) -> None: ...
    def write_weights(self, step: int, values: Mapping[str, Any]) -> None: ...
    def set_status(self, status: str, message: str = "") -> None: ...
    def last_steps(self) -> dict[str, int]: ...
    def flush(self) -> None: ...
    def close(self, failed: bool = False) -> None: ...


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    name: str
    shape: tuple[int, int, int]  # (H, W, C) of one probe's activation
    activation: str
    kernel_shape: tuple[int, ...] | None = None  # (kh, kw, C_in, C_out) when the kernel is recorded
    stage: str = AFTER_NONLINEARITY  # or PRE_ACTIVATION: a conv's own output (runfile/schema.py)
    channels: tuple[int, ...] | None = None  # the layer's channel numbers that are recorded; None: all of them


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One stored weight: its path in the model (recorder/weights.py), shape and kind (Param | BatchStat)."""

    path: str
    shape: tuple[int, ...]
    kind: str


@dataclasses.dataclass(frozen=True)
class AnalysisLayout:
    """The analysis probe set (recorder/analysis.py) and when it is analysed."""

    indices: np.ndarray  # [n] test-split indices
    labels: np.ndarray  # [n]
    sha256: str  # probe_set_hash(dataset, indices, images)
    steps: np.ndarray  # the frame steps that carry analysis
    rule: str  # the schedule rule, in words
    stat_names: tuple[str, ...]
    stat_docs: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Everything needed to create the file before the first frame arrives."""

    layers: tuple[LayerSpec, ...]  # in call order
    num_classes: int
    probe_images: np.ndarray  # [P, H, W, C] uint8
    probe_labels: np.ndarray  # [P]
    probe_indices: np.ndarray  # [P]
    probe_dataset: str
    attrs: Mapping[str, Any]  # root attributes (experiment, config_json, ... see the schema)
    dtype: str = "float16"
    compression: str = "gzip"
    eval_split: str = "test"
    eval_count: int = 0
    analysis: AnalysisLayout | None = None
    weights: tuple[WeightSpec, ...] = ()  # the model's weights (recorder/weights.py), stored at some steps


def _shuffle_deflate(row: np.ndarray) -> bytes:
    """One chunk as HDF5's shuffle filter followed by its deflate filter store it (deflate level 1)."""
    return deflate.compress(deflate.shuffle(np.asarray(row)[None])[0])


def _raw(row: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(row)  # H5Dwrite_chunk reads the buffer itself: no copy to bytes


def _raw_checked(row: np.ndarray) -> bytes:
    return with_checksum(np.ascontiguousarray(row))


def _shuffle_deflate_checked(row: np.ndarray) -> bytes:
    return with_checksum(_shuffle_deflate(row))


# filter pipeline of a dataset -> the encoder that stores a whole chunk as that pipeline would (the deflate
# level is not part of the format); datasets with other pipelines (lzf, zstd) go through HDF5's filters.
# Schema 7 ends every pipeline with Fletcher-32 (runfile/checksum.py); files of older schemas, resumed, keep theirs
_SHUFFLE, _DEFLATE, _FLETCHER32 = h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_FLETCHER32
_ENCODERS = {(): _raw, (_SHUFFLE, _DEFLATE): _shuffle_deflate,
             (_FLETCHER32,): _raw_checked, (_SHUFFLE, _DEFLATE, _FLETCHER32): _shuffle_deflate_checked}
CHECKED = {"fletcher32": True, "chunks": True}  # the datasets written once: checksummed chunks too
_DEFLATING = (_shuffle_deflate, _shuffle_deflate_checked)  # the encoders worth a thread
TASK_BYTES = 4 << 20  # rows encoded by one task of the encoding threads
SCRATCH_BYTES = 512 << 10  # uncompressed checksummed rows become chunks this many bytes at a time (in the caches)


def _tasks(parts: list[np.ndarray]) -> list[np.ndarray]:
    """The rows of `parts` (arrays of rows) in groups of about `TASK_BYTES`, in order."""
    out = []
    for part in parts:
        per = max(1, TASK_BYTES // max(1, part[0].nbytes)) if len(part) else 1
        out.extend(part[i:i + per] for i in range(0, len(part), per))
    return out


def _encode_here(rows: np.ndarray, checked: bool) -> list[Any]:
    """Deflated chunks of `rows`, encoded on this thread (where the encoding processes failed)."""
    return _encode_rows(_shuffle_deflate_checked if checked else _shuffle_deflate, rows)


def _encode_rows(encode: Any, rows: np.ndarray) -> list[Any]:
    """The chunks `encode` makes of each row of `rows`; deflated rows are shuffled all at once first."""
    if encode not in _DEFLATING:
        return [encode(row) for row in rows]
    chunks = [deflate.compress(row) for row in deflate.shuffle(rows)]
    return [with_checksum(c) for c in chunks] if encode is _shuffle_deflate_checked else chunks


def _encoder(ds: h5py.Dataset) -> Any:
    """The encoder for `ds`'s chunks when each row is one chunk and its filter pipeline is one we encode."""
    if ds.chunks != (1, *ds.shape[1:]):
        return None
    plist = ds.id.get_create_plist()
    return _ENCODERS.get(tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters())))


class _Column:
    """One growing dataset (rows along axis 0), with its length tracked here.

    `append` writes now, in one extent change; where `_encoder` has one, each row (one whole chunk) is
    encoded here (or by the caller: `chunks`) and written directly. `stage` keeps rows until `commit`.
    Uncompressed checksummed rows are copied into one scratch buffer of chunks (each row's bytes, then its
    checksum; up to SCRATCH_BYTES at a time) and written from it. Where the caller has the rows as finished
    chunks already (`stage(rows, chunks)`: a device computed the checksums and laid them out so, see
    recorder/fletcher.py), they are written from the caller's buffer, with no copy and no checksum here. The
    first such chunk is checked against the row's bytes and this host's own checksum of them; if either
    differs, the column makes its own chunks from then on (`trusted_checksums`).
    """

    def __init__(self, ds: h5py.Dataset):
        self.ds, self.n, self.row, self.dtype = ds, ds.shape[0], ds.shape[1:], ds.dtype
        self.encode = _encoder(ds)
        self._staged: list[tuple[np.ndarray, np.ndarray | None]] = []  # (rows, their chunks or None)
        self.staged_bytes = 0
        self._scratch: np.ndarray | None = None
        self.trusted_checksums: bool | None = None  # None: none given yet

    def _rows(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, self.dtype)
        if rows.shape[1:] != self.row:
            raise ValueError(f"{self.ds.name}: expected rows of shape {self.row}, got {rows.shape[1:]}")
        return rows

    def append(self, rows: Any, chunks: Any = None) -> None:
        """Writes `rows` (an array, or what `take` returned); `chunks`, if given, are their encoded chunks (an
        iterable, one per row, in order)."""
        parts = rows if isinstance(rows, list) else [(self._rows(rows), None)]
        k = sum(len(p) for p, _ in parts)
        self.ds.id.set_extent((self.n + k, *self.row))
        if self.encode is _raw_checked and chunks is None:
            at = self.n
            for p, ready in parts:
                if ready is not None and self._trusts(p, ready):
                    write_row_chunks(self.ds, at, ready)
                else:
                    per = max(1, SCRATCH_BYTES // max(1, p[0].nbytes if len(p) else 1))  # rows per scratch fill
                    for i in range(0, len(p), per):
                        write_row_chunks(self.ds, at + i, self._checked(p[i:i + per]))
                at += len(p)
        elif self.encode is not None:  # row by row: the staged arrays are never concatenated
            chunks = (c for p, _ in parts for c in _encode_rows(self.encode, p)) if chunks is None else chunks
            write_chunks(self.ds, self.n, chunks)
        else:
            self.ds[self.n:] = parts[0][0] if len(parts) == 1 else np.concatenate([p for p, _ in parts])
        self.n += k

    def _checked(self, rows: np.ndarray) -> np.ndarray:
        """The scratch buffer holding `rows` as chunks, each row's bytes then its checksum, valid until the
        next call."""
        rows = np.ascontiguousarray(rows)
        n, size = len(rows), rows[0].nbytes
        if self._scratch is None or self._scratch.shape[1] != size + 4 or len(self._scratch) < n:
            self._scratch = np.empty((n, size + 4), np.uint8)
        return rows_with_checksums(rows, self._scratch[:n])

    def _trusts(self, rows: np.ndarray, chunks: np.ndarray) -> bool:
        """Whether the caller's `chunks` of `rows` are written as they are: decided on the first ones given, by
        their first row's bytes and checksum against `rows[0]` and this host's checksum of it."""
        if self.trusted_checksums is None and len(rows):
            row = np.ascontiguousarray(rows[0]).reshape(-1).view(np.uint8)
            given, own = int(chunks[0, -4:].view("<u4")[0]), fletcher32(row)
            same = np.array_equal(chunks[0, :-4], row)
            self.trusted_checksums = same and given == own
            if not self.trusted_checksums:
                what = (f"Fletcher-32 of a row is {given:#010x}, this host's {own:#010x}" if same
                        else "chunk of a row holds other bytes than the row")
                warnings.warn(f"{self.ds.name}: the device's {what}; the host computes them from now on",
                              RuntimeWarning)
        return bool(self.trusted_checksums)

    def rows_and_chunks(self, rows: Any, chunks: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(`rows` in the stored dtype, `chunks` if usable, else None) for `stage`; raises ValueError for rows or
        chunks of the wrong shape. `chunks` (uint8 [n, row bytes + 4]), if the caller has them: the rows as the
        chunks the file stores, each row's bytes then its Fletcher-32 little-endian (usable where the rows reach
        the file unchanged: uncompressed, same dtype)."""
        given = np.asarray(rows)
        rows = self._rows(given)
        if chunks is None or self.encode is not _raw_checked or given.dtype != self.dtype:
            return rows, None
        chunks, size = np.asarray(chunks), rows[0].nbytes if len(rows) else 0
        if chunks.dtype != np.uint8 or chunks.shape != (len(rows), size + 4):
            raise ValueError(f"{self.ds.name}: chunks of {len(rows)} rows of {size} bytes must be uint8 [rows, bytes "
                             f"+ 4], got {chunks.dtype} {list(chunks.shape)}")
        return rows, chunks

    def stage(self, rows: Any, chunks: Any = None) -> None:
        """Keeps `rows` until `commit` (or `take`), with their `chunks` (see `rows_and_chunks`)."""
        self.keep(*self.rows_and_chunks(rows, chunks))

    def keep(self, rows: np.ndarray, chunks: np.ndarray | None) -> None:
        """`stage` of what `rows_and_chunks` returned."""
        self._staged.append((rows, chunks))
        self.staged_bytes += rows.nbytes

    def take(self) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
        """The staged (rows, chunks or None) pairs, in order (None if there are none), no longer staged."""
        if not self._staged:
            return None
        rows, self._staged, self.staged_bytes = self._staged, [], 0
        return rows

    def commit(self) -> None:
        rows = self.take()
        if rows is not None:
            self.append(rows)


def _compression_kwargs(name: str) -> dict[str, Any]:
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}  # level 1: 3% larger than 4, faster
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "zstd":  # 2x faster to write than gzip 1 at the same size; every reader then needs hdf5plugin
        try:
            import hdf5plugin
        except ImportError:
            raise ValueError("compression zstd needs the hdf5plugin package (pip install hdf5plugin), in the "
                             "recorder and in every program that reads the file; or use gzip") from None
        return {**hdf5plugin.Zstd(clevel=3), "shuffle": True}
    raise ValueError(f"unknown compression {name!r}; expected one of: {', '.join(COMPRESSIONS)}")


def _stamp_writer(f: h5py.File) -> None:
    """Who writes the file from now on: readers tell a live writer from a killed one by these (and the heartbeat)."""
    f.attrs["writer_pid"] = os.getpid()
    f.attrs["writer_host"] = socket.gethostname()
    f.attrs["writer_started_unix"] = time.time()
    f["updated_unix"][()] = time.time()


def row_groups(f: h5py.File) -> dict[str, list[h5py.Dataset]]:
    """Each group of growing datasets that share rows, its `step` column first."""
    layers = json.loads(f["layers"].attrs["order_json"])
    kernels = json.loads(f["layers"].attrs["kernels_json"])
    groups = {
        "frames": [f["frames/step"], f["frames/wall_time"], f["frames/logits"]]
        + [f[f"layers/{n}/activations"] for n in layers] + [f[f"layers/{n}/kernel"] for n in kernels],
        "train": [f["train/step"], f["train/loss"], f["train/accuracy"], f["train/wall_time"]],
        "eval": [f["eval/step"], f["eval/loss"], f["eval/accuracy"]],
    }
    if "analysis" in f:
        groups["analysis"] = [f["analysis/step"]] + [f[f"analysis/{n}/{k}"] for n in layers for k in ("gram", "stats")]
    if "scalars" in f:
        groups["scalars"] = [f["scalars/step"], f["scalars/series"], f["scalars/value"]]
    if "weights" in f:
        groups["weights"] = [f["weights/step"]] + [f[f"weights/values/{p}"] for p in weight_paths(f)]
    return groups


def weight_paths(f: h5py.File) -> list[str]:
    return [s["path"] for s in json.loads(f["weights"].attrs["specs_json"])] if "weights" in f else []


def _create_weights(f: h5py.File, specs: tuple[WeightSpec, ...], growing: Any) -> None:
    w = f.create_group("weights")
    w.attrs["specs_json"] = json.dumps([{"path": s.path, "shape": list(s.shape), "kind": s.kind} for s in specs])
    growing(w, "step", (), "i8")
    for s in specs:
        growing(w, f"values/{s.path}", tuple(s.shape), "f4")
        w[f"values/{s.path}"].attrs["kind"] = s.kind


def trim_rows(f: h5py.File, through_step: int | None = None) -> dict[str, int]:
    """Cuts every growing dataset to its group's complete rows (a kill mid-flush leaves some longer), and with
    `through_step` also drops the rows of later steps. Needs the file open for writing, not in SWMR mode.
    Returns the rows kept per group."""
    kept = {}
    for name, columns in row_groups(f).items():
        n = min(ds.shape[0] for ds in columns)
        if through_step is not None:
            n = int(np.searchsorted(columns[0][:n], through_step, side="right"))
        for ds in columns:
            if ds.shape[0] != n:
                ds.resize(n, axis=0)
        kept[name] = n
    return kept


class DiscardingWriter(RunWriter):
    """A `RunWriter` that keeps nothing: what the processes other than 0 of a multi-process run write through,
    so that every process runs the very same loop (the same steps, copies and checks) and only process 0
    touches the run file. Every write method is the protocol's own, which does nothing."""

    def __init__(self, path: Path):
        self.path = path

    def last_steps(self) -> dict[str, int]:
        return {k: -1 for k in ("frame", "train", "eval", "scalars", "weights")}


def layout_mismatch(f: h5py.File, layout: RunLayout) -> list[str]:
    """How an existing run file differs from `layout` in what its rows mean (layers, shapes, probes)."""
    out = []
    names = [s.name for s in layout.layers]
    if json.loads(f["layers"].attrs["order_json"]) != names:
        return [f"layers {json.loads(f['layers'].attrs['order_json'])} in the file, {names} now"]
    p = len(layout.probe_labels)
    for spec in layout.layers:
        ds = f[f"layers/{spec.name}/activations"]
        if ds.shape[1:] != (p, *spec.shape) or ds.dtype != np.dtype(layout.dtype):
            out.append(f"{spec.name}: {ds.dtype}{list(ds.shape[1:])} in the file, {layout.dtype}{[p, *spec.shape]} now")
        elif json.loads(ds.attrs.get("channels_json", "null")) != (list(spec.channels) if spec.channels else None):
            out.append(f"{spec.name}: other recorded channels")
    if not np.array_equal(f["probes/images"][()], layout.probe_images):
        out.append("the probe images differ")
    if layout.weights and "weights" in f and json.loads(f["weights"].attrs["specs_json"]) != [
            {"path": s.path, "shape": list(s.shape), "kind": s.kind} for s in layout.weights]:
        out.append("the model's weights differ (paths, shapes or kinds)")
    if ("analysis" in f) != (layout.analysis is not None) or (
            layout.analysis is not None and f["analysis"].attrs["sha256"] != layout.analysis.sha256):
        out.append("the analysis images differ")
    return out


class H5RunWriter:
    """Creates a run file and appends to it. Not thread-safe: one thread owns it."""

    def __init__(self, path: str | Path, layout: RunLayout, *, resume_after: int | None = None,
                 encode_threads: int | None = None, encode_processes: bool | None = None):
        """Creates the run file of `layout`; or, with `resume_after=S`, reopens an existing run file of the same
        layout to continue it after step S: rows of later steps are dropped (`trim_rows`), the test result is
        cleared, the planned steps and config become `layout`'s (an extended run) and the status is `running`
        again. The file must not be open for writing elsewhere (`runfile/repair.py` clears a killed writer's
        flag). `encode_threads` encode a batch of frames' chunks at once (default: `default_encode_threads`);
        where there are more than one, deflated chunks are encoded by as many processes of their own
        (runfile/encoders.py) unless `encode_processes` is False (None: where the system has them)."""
        self.path = Path(path)
        self._encode_threads = default_encode_threads() if encode_threads is None else max(1, int(encode_threads))
        self._pool: ThreadPoolExecutor | None = None  # started on the writing thread, at its first batch
        self._use_processes = encoders.available() if encode_processes is None else bool(encode_processes)
        self._processes: encoders.EncoderProcesses | None = None  # started at the first batch that uses them
        self._broken = False  # a write failed: nothing more is written but the status
        self._clock = time.perf_counter()
        f = self._file = h5py.File(self.path, "w" if resume_after is None else "r+", libver=LIBVER)
        try:
            if resume_after is None:
                self._create(f, layout)
            else:
                problems = layout_mismatch(f, layout)
                if problems:
                    raise ValueError(f"{self.path} was recorded with another layout: {'; '.join(problems)}")
                trim_rows(f, resume_after)
                if layout.weights and "weights" not in f:  # a file of an older schema gains the group
                    _create_weights(f, layout.weights, self._growing)
                    f.attrs["schema_version"] = max(int(f.attrs["schema_version"]), 5)  # /weights came in 5; not
                    # more: the file's older datasets keep their filters (no checksums before 7)
                self._clock -= float(f["frames/wall_time"][-1]) if f["frames/wall_time"].shape[0] else 0.0
                for name in ("planned_steps", "config_json"):
                    f.attrs[name] = layout.attrs[name]
                if layout.analysis is not None:
                    f["analysis"].attrs["planned_steps_json"] = json.dumps([int(x) for x in layout.analysis.steps])
                f["test/loss"][()], f["test/accuracy"][()], f["test/count"][()] = np.nan, np.nan, 0
                f["status"][()], f["status_message"][()] = np.bytes_(b"running"), np.bytes_(b"")
            _stamp_writer(f)
            f.swmr_mode = True  # from here on: append rows and overwrite scalars only
        except BaseException:
            f.close()
            raise
        self._layers = json.loads(f["layers"].attrs["order_json"])
        self._kernels = json.loads(f["layers"].attrs["kernels_json"])
        analysed = "analysis" in f
        self._triu = np.triu_indices(int(f["analysis"].attrs["count"]) if analysed else 0)
        self._scalar_names = [b.decode() for b in f["scalars/names"][()] if b]
        self._weights = weight_paths(f)
        self._col: dict[str, _Column] = {}

        def add_growing(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,):
                self._col[name] = _Column(obj)

        f.visititems(add_growing)
        self._frame_columns = [self._col[f"layers/{name}/activations"] for name in self._layers]
        self._frame_columns += [self._col[f"analysis/{name}/gram"] for name in self._layers if analysed]
        # commit order at flush: every group's step column after the rows it indexes
        small = [f"layers/{name}/kernel" for name in self._kernels] + ["frames/logits", "frames/wall_time"]
        small += [f"analysis/{name}/stats" for name in self._layers if analysed]
        small += ["analysis/step"] if analysed else []
        small += ["frames/step", "train/loss", "train/accuracy", "train/wall_time", "train/step",
                  "eval/loss", "eval/accuracy", "eval/step", "scalars/series", "scalars/value", "scalars/step"]
        small += [f"weights/values/{p}" for p in self._weights] + (["weights/step"] if self._weights else [])
        self._commit_order = [self._col[name] for name in small]
        self._staged_bytes = 0  # rows staged (or written) since `_room` was measured
        self._room = room(self.path, self._file.id.get_filesize())[0]

    def last_steps(self) -> dict[str, int]:
        """The last step of each group's rows (-1 for none): frame, train, eval, scalars."""
        out = {}
        for key, column in (("frame", "frames/step"), ("train", "train/step"), ("eval", "eval/step"),
                            ("scalars", "scalars/step"), ("weights", "weights/step")):
            ds = self._file.get(column)
            out[key] = int(ds[-1]) if ds is not None and ds.shape[0] else -1
        return out

    @staticmethod
    def _growing(group: h5py.Group, name: str, row: tuple[int, ...], dtype: str, **kw: Any) -> None:
        # a zero-width axis (logits of a model without them) is left unlimited: chunks must be >= 1 wide
        group.create_dataset(name, shape=(0, *row), maxshape=(None, *(d or None for d in row)), dtype=dtype,
                             chunks=(1, *(d or 1 for d in row)) if row else (1024,), fletcher32=True, **kw)

    @classmethod
    def _create(cls, f: h5py.File, layout: RunLayout) -> None:
        f.attrs["schema"] = SCHEMA
        f.attrs["schema_version"] = SCHEMA_VERSION
        for key, value in layout.attrs.items():
            f.attrs[key] = value
        f.attrs["created_unix"] = time.time()
        f.create_dataset("status", data=np.bytes_(b"running"), dtype=f"S{STATUS_BYTES}")
        f.create_dataset("status_message", data=np.bytes_(b""), dtype=f"S{MESSAGE_BYTES}")
        f.create_dataset("updated_unix", data=time.time(), dtype="f8")

        probes = f.create_group("probes")
        probes.create_dataset("images", data=np.asarray(layout.probe_images, np.uint8), **CHECKED)
        probes.create_dataset("labels", data=np.asarray(layout.probe_labels, np.int64), **CHECKED)
        probes.create_dataset("indices", data=np.asarray(layout.probe_indices, np.int64), **CHECKED)
        probes["indices"].attrs["dataset"] = layout.probe_dataset
        probes["indices"].attrs["split"] = "test"
        p = len(layout.probe_labels)

        growing = cls._growing
        frames = f.create_group("frames")
        growing(frames, "step", (), "i8")
        growing(frames, "wall_time", (), "f8")
        growing(frames, "logits", (p, layout.num_classes), "f4")
        layers = f.create_group("layers")
        layers.attrs["order_json"] = json.dumps([s.name for s in layout.layers])
        layers.attrs["kernels_json"] = json.dumps([s.name for s in layout.layers if s.kernel_shape is not None])
        comp = _compression_kwargs(layout.compression)
        for order, spec in enumerate(layout.layers):
            g = layers.create_group(spec.name)
            growing(g, "activations", (p, *spec.shape), layout.dtype, **comp)
            g["activations"].attrs["activation"] = spec.activation
            g["activations"].attrs["stage"] = spec.stage
            g["activations"].attrs["order"] = order
            if spec.channels is not None:
                g["activations"].attrs["channels_json"] = json.dumps([int(c) for c in spec.channels])
            if spec.kernel_shape is not None:
                growing(g, "kernel", tuple(spec.kernel_shape), "f4")

        if layout.analysis is not None:
            a = layout.analysis
            n = len(a.indices)
            group = f.create_group("analysis")
            group.attrs.update(dataset=layout.probe_dataset, split="test", sha256=a.sha256, count=n, rule=a.rule,
                               stats_json=json.dumps(list(a.stat_names)), stat_docs_json=json.dumps(dict(a.stat_docs)),
                               planned_steps_json=json.dumps([int(x) for x in a.steps]))
            group.create_dataset("indices", data=np.asarray(a.indices, np.int64), **CHECKED)
            group.create_dataset("labels", data=np.asarray(a.labels, np.int64), **CHECKED)
            growing(group, "step", (), "i8")
            for spec in layout.layers:
                g = group.create_group(spec.name)
                growing(g, "gram", (n * (n + 1) // 2,), "f4", **comp)
                growing(g, "stats", (len(a.stat_names),), "f4")

        train = f.create_group("train")
        for name, dtype in (("step", "i8"), ("loss", "f4"), ("accuracy", "f4"), ("wall_time", "f8")):
            growing(train, name, (), dtype)
        ev = f.create_group("eval")
        ev.attrs["split"] = layout.eval_split
        ev.attrs["count"] = layout.eval_count
        for name, dtype in (("step", "i8"), ("loss", "f4"), ("accuracy", "f4")):
            growing(ev, name, (), dtype)
        scalars = f.create_group("scalars")
        scalars.create_dataset("names", data=np.zeros(MAX_SCALARS, f"S{SCALAR_NAME_BYTES}"), **CHECKED)
        for name, dtype in (("step", "i8"), ("series", "i2"), ("value", "f8")):
            growing(scalars, name, (), dtype)
        if layout.weights:
            _create_weights(f, layout.weights, growing)
        test = f.create_group("test")
        test.create_dataset("loss", data=np.nan, dtype="f8")
        test.create_dataset("accuracy", data=np.nan, dtype="f8")
        test.create_dataset("count", data=0, dtype="i8")

    def _now(self, wall_time: float | None) -> float:
        return time.perf_counter() - self._clock if wall_time is None else wall_time

    def write_frame(self, step: int, frame: Mapping[str, np.ndarray], wall_time: float | None = None) -> None:
        """Appends one frame. `frame` maps layer names to [P, H, W, C], `logits` to [P, K] (zeros of width 0
        when the model has no logits) and `kernel/<layer>` to the kernel of each layer whose kernel is
        recorded; at an analysed step also `analysis/gram/<layer>` [n, n] and `analysis/stats/<layer>`.
        Everything is staged and written at the next `flush()` (the activations and Grams earlier once
        `STAGE_BYTES` of them wait), the step that makes the frame count last."""
        rows = {key: np.asarray(value)[None] for key, value in frame.items()}
        if f"analysis/gram/{self._layers[0]}" in frame:
            self.write_analysis([step], rows)
        self.write_frames([step], rows, wall_time)

    def write_frames(self, steps: Any, frames: Mapping[str, np.ndarray], wall_time: float | None = None,
                     chunks: Mapping[str, Any] | None = None) -> None:
        """Appends the frames of `steps` ([n]): `frames` maps each key of `write_frame` to its n rows
        ([n, P, H, W, C], ...); analysis entries are ignored here (`write_analysis`). One wall time for all.
        `chunks` (optional, key -> uint8 [n, row bytes + 4]): the rows as finished chunks, each row's bytes then
        its Fletcher-32 as computed elsewhere (a device's, recorder/fletcher.py), written as they are to
        uncompressed datasets instead of copied and checksummed here."""
        steps = np.reshape(steps, -1)
        n, c, ready = len(steps), self._col, chunks or {}
        logits = frames["logits"] if "logits" in frames else np.zeros((n, *c["frames/logits"].row), np.float32)
        columns = [*((c[f"layers/{name}/activations"], frames[name], ready.get(name)) for name in self._layers),
                   *((c[f"layers/{name}/kernel"], frames[f"kernel/{name}"], ready.get(f"kernel/{name}"))
                     for name in self._kernels),
                   (c["frames/logits"], logits, ready.get("logits"))]
        staged = [(column, *column.rows_and_chunks(rows, given)) for column, rows, given in columns]  # may raise
        self._reserve(sum(rows.nbytes for _, rows, _ in staged))
        for column, rows, given in staged:
            column.keep(rows, given)
        c["frames/wall_time"].stage(np.full(n, self._now(wall_time)))
        c["frames/step"].stage(steps)
        self._write_if_staged_enough()

    def write_analysis(self, steps: Any, arrays: Mapping[str, np.ndarray]) -> None:
        """Appends the analysis rows of `steps` ([n], frame steps): `analysis/gram/<layer>` [n, N, N] (the upper
        triangle is stored) and `analysis/stats/<layer>` [n, S] for every layer."""
        steps = np.reshape(steps, -1)
        grams = {name: np.asarray(arrays[f"analysis/gram/{name}"])[:, self._triu[0], self._triu[1]] for name in self._layers}
        self._reserve(sum(g.nbytes for g in grams.values()))
        c = self._col
        for name in self._layers:
            c[f"analysis/{name}/gram"].stage(grams[name])
            c[f"analysis/{name}/stats"].stage(arrays[f"analysis/stats/{name}"])
        c["analysis/step"].stage(steps)
        self._write_if_staged_enough()

    def _write_if_staged_enough(self) -> None:
        if sum(column.staged_bytes for column in self._frame_columns) >= STAGE_BYTES:
            with self._writing():
                self._write_frames()

    def _reserve(self, nbytes: int) -> None:
        """Makes room for `nbytes` more rows (see the module doc): writes what is staged first if they might
        not fit beside it; raises OSError, before any of them is staged, if they still do not fit."""
        if self._staged_bytes + nbytes + ROOM_MARGIN > self._room:
            self.flush()
            if nbytes + ROOM_MARGIN > self._room:
                free, code, what = room(self.path, self._file.id.get_filesize())
                raise OSError(code, f"{what} leaves room for {max(free, 0) / 1e6:.2f} MB and the next rows need up to "
                                    f"{nbytes / 1e6:.2f} MB + {ROOM_MARGIN / 1e6:.2f} MB for HDF5's metadata; they "
                                    "were not written, so the file stays whole")
        self._staged_bytes += nbytes

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Marks the writer broken if the writes inside fail (see the module doc)."""
        try:
            yield
        except BaseException:
            self._broken = True
            raise

    def _write_frames(self) -> None:
        """Writes the staged activation and Gram rows, one extent change per dataset. With more than one
        encoding thread, the deflated chunks of the batch are encoded at once first, in tasks of about
        `TASK_BYTES` of rows, by processes of their own (runfile/encoders.py) or else on threads (two GIL
        hand-overs a task: see runfile/chunks.py); uncompressed chunks are checksummed here, keeping the GIL."""
        batch = [(column, rows) for column in self._frame_columns if (rows := column.take()) is not None]
        chunks: dict[int, Any] = {}
        if self._encode_threads > 1 and sum(len(part) for _, rows in batch for part, _ in rows) > 1:
            deflating = [(i, _tasks([p for p, _ in rows])) for i, (column, rows) in enumerate(batch)
                         if column.encode in _DEFLATING]
            done = self._encode_in_processes([(task, batch[i][0].encode is _shuffle_deflate_checked)
                                              for i, tasks in deflating for task in tasks]) if deflating else None
            if done is not None:  # each column's chunks fetched as it writes them, the workers ahead of it
                results = iter(done)
                chunks = {i: (c for get in [next(results) for _ in tasks] for c in get()) for i, tasks in deflating}
            else:
                if self._pool is None:  # its threads inherit the writing thread's low priority
                    self._pool = ThreadPoolExecutor(self._encode_threads, thread_name_prefix="emergence-encode")
                for i, tasks in deflating:
                    futures = [self._pool.submit(_encode_rows, batch[i][0].encode, task) for task in tasks]
                    chunks[i] = (c for f in futures for c in f.result())
        for i, (column, rows) in enumerate(batch):  # each column encodes its own rows where nothing else did
            column.append(rows, chunks.get(i))

    def _encode_in_processes(self, tasks: list[tuple[np.ndarray, bool]]) -> list[Any] | None:
        """One callable per task returning its chunks, from the encoding processes (started at the first
        call); None where there are none or they failed (then never again: the threads take over)."""
        if self._use_processes and self._processes is not None and self._processes.failed:
            self._use_processes = False  # a worker failed during the last batch, which the threads finished
        if not self._use_processes:
            return None
        try:
            if self._processes is None:
                self._processes = encoders.EncoderProcesses(self._encode_threads)
            done = self._processes.encode(tasks, _encode_here)
        except OSError:
            done = None
        if done is None:
            self._use_processes = False
            if self._processes is not None:
                self._processes.close()
        return done

    def write_train(self, step: Any, loss: Any, accuracy: Any, wall_time: Any = None) -> None:
        """Appends the training metrics of one step, or of several (equal-length arrays); written at the next
        `flush()`."""
        c = self._col
        steps = np.reshape(step, -1)
        c["train/loss"].stage(np.reshape(loss, -1))
        c["train/accuracy"].stage(np.reshape(accuracy, -1))
        c["train/wall_time"].stage(np.full(len(steps), self._now(None)) if wall_time is None else np.reshape(wall_time, -1))
        c["train/step"].stage(steps)

    def write_eval(self, step: int, loss: Any, accuracy: Any) -> None:
        c = self._col
        c["eval/loss"].stage(np.reshape(loss, 1))
        c["eval/accuracy"].stage(np.reshape(accuracy, 1))
        c["eval/step"].stage([step])

    def write_test(self, loss: Any, accuracy: Any, count: int) -> None:
        f = self._file
        f["test/loss"][()] = float(loss)
        f["test/accuracy"][()] = float(accuracy)
        f["test/count"][()] = int(count)

    def write_scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Appends one value of each named series at `step` (a name is registered when it first appears)."""
        self.write_series([step], {name: np.reshape(value, 1) for name, value in values.items()})

    def write_series(self, steps: Any, values: Mapping[str, Any]) -> None:
        """Appends the values of named series at `steps` ([n]; each value [n]), step by step."""
        steps = np.reshape(steps, -1)
        ids = [self._series_id(name) for name in values]
        if not ids:
            return
        c = self._col
        c["scalars/series"].stage(np.tile(np.asarray(ids, np.int16), len(steps)))
        c["scalars/value"].stage(np.stack([np.reshape(np.asarray(v, np.float64), -1) for v in values.values()], 1).ravel())
        c["scalars/step"].stage(np.repeat(steps, len(ids)))

    def _series_id(self, name: str) -> int:
        """The index of series `name`, registered when it first appears."""
        if name not in self._scalar_names:
            if len(self._scalar_names) >= MAX_SCALARS or not 0 < len(name.encode()) <= SCALAR_NAME_BYTES:
                raise ValueError(f"scalar series {name!r}: at most {MAX_SCALARS} series, names of 1 to "
                                 f"{SCALAR_NAME_BYTES} bytes")
            self._file["scalars/names"][len(self._scalar_names)] = np.bytes_(name.encode())
            self._scalar_names.append(name)
        return self._scalar_names.index(name)

    def write_weights(self, step: int, values: Mapping[str, np.ndarray]) -> None:
        """Appends the weights at `step` (`{path: array}` for every path of the layout); written at the next
        `flush()`, `/weights/step` last."""
        self._reserve(sum(np.asarray(values[path]).nbytes for path in self._weights))
        c = self._col
        for path in self._weights:
            c[f"weights/values/{path}"].stage(np.asarray(values[path], np.float32)[None])
        c["weights/step"].stage([step])

    def set_status(self, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        self._file["status"][()] = np.bytes_(status.encode())
        self._file["status_message"][()] = np.bytes_(message.encode()[:MESSAGE_BYTES])

    def flush(self) -> None:
        """Writes the staged rows (the frames first, each step column last) and flushes the file to disk;
        does nothing once the writer is broken."""
        if self._broken:
            return
        with self._writing():
            self._write_frames()
            for column in self._commit_order:
                column.commit()
            self._file["updated_unix"][()] = time.time()
            self._file.flush()
        self._staged_bytes = 0
        self._room = room(self.path, self._file.id.get_filesize())[0]

    def close(self, failed: bool = False) -> None:
        """Writes what is staged (unless the writer is broken) and closes the file. `failed`: a write failed
        before (a full disk): the space HDF5 reserved for it and could not fill is given back (repair.py)."""
        try:
            if self._file.id.valid:
                try:
                    self.flush()
                finally:
                    self._file.close()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            if self._processes is not None:
                self._processes.close()
        if failed:
            from runfile.repair import fit_end_of_file

            fit_end_of_file(self.path)
