"""Reads a run file (docs/run_schema.md, every version in SUPPORTED_VERSIONS), also while it is still being written.

    run = open_run("runs/learn_to_see.h5")
    run.layers                      # ['conv1', ..., 'conv6'] in call order
    run.steps                       # [T] recorded steps
    run.activations("conv3", [0, 290])   # [2, P, H, W, C] float32
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from runfile.preflight import superblock_problem
from runfile.schema import AFTER_NONLINEARITY, SCHEMA, SUPPORTED_VERSIONS

try:  # registers the zstd/lz4/... HDF5 filters, for run files recorded with compression=zstd
    import hdf5plugin  # noqa: F401
except ImportError:
    pass

STALE_SECONDS = 60.0  # a `running` file with no flush (heartbeat) for this long was left by a recorder that is gone


class RunFileError(ValueError):
    """The file is not a run file this version can read."""


def foreign_layout(f: h5py.File) -> str | None:
    """What in `f` the recorder never writes and no reader should follow, or None: a link that is not a hard
    link (an external or soft link reaches data outside the file or elsewhere in it), a dataset stored outside
    the file (external storage) or assembled from others (virtual), or a frame dataset whose chunks are not
    one whole frame each. Checked when a run is opened, before any data is read."""
    found: list[str] = []

    def link(name: str, value: Any) -> None:
        if not found and not isinstance(value, h5py.HardLink):
            found.append(f"{'an external' if isinstance(value, h5py.ExternalLink) else 'a soft'} link at /{name}")

    f.visititems_links(link)
    if found:
        return found[0]

    def dataset(name: str, obj: Any) -> None:
        if found or not isinstance(obj, h5py.Dataset):
            return
        if obj.is_virtual:
            found.append(f"a virtual dataset at /{name}")
        elif obj.external:
            found.append(f"a dataset stored in other files at /{name}")
        elif name.startswith("layers/") and name.endswith("/activations") and obj.chunks != (1, *obj.shape[1:]):
            found.append(f"/{name} is not chunked one frame per chunk ({obj.chunks} for frames of {obj.shape[1:]})")

    f.visititems(dataset)
    return found[0] if found else None


@dataclasses.dataclass(frozen=True)
class Metrics:
    step: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray


class Run:
    """An open run file. Use as a context manager or call `close()`."""

    def __init__(self, path: str | Path, locking: bool = True):
        self.path = Path(path)
        self.lock = threading.RLock()  # threads reading one run (replay renders layers at once) take turns
        if not self.path.is_file():
            raise FileNotFoundError(f"no run file at {self.path}")
        problem = superblock_problem(self.path)
        if problem:
            raise RunFileError(f"{self.path} is not a readable HDF5 run file: {problem}")
        try:
            self._f = open_swmr(self.path, locking)
        except OSError as e:
            raise RunFileError(f"{self.path} is not a readable HDF5 run file ({e})") from e
        attrs = self._f.attrs
        if attrs.get("schema") != SCHEMA:
            self._f.close()
            raise RunFileError(f"{self.path} is an HDF5 file but not an emergence run (no schema attribute)")
        try:
            foreign = foreign_layout(self._f)
        except (RuntimeError, OSError, KeyError, ValueError) as e:  # damaged metadata met while walking the file
            self._f.close()
            raise RunFileError(f"{self.path} is not a readable HDF5 run file ({e})") from e
        if foreign:
            self._f.close()
            raise RunFileError(f"{self.path} is not laid out as emergence writes run files: {foreign}; refused, "
                               "nothing read from it")
        version = int(attrs["schema_version"])
        if version not in SUPPORTED_VERSIONS:
            self._f.close()
            raise RunFileError(
                f"{self.path} has run schema version {version}; this version of emergence reads {SUPPORTED_VERSIONS}. "
                "Upgrade emergence to read it."
            )
        self.config: dict[str, Any] = json.loads(attrs["config_json"])
        self.summary: dict[str, Any] = json.loads(attrs["summary_json"])
        self.versions: dict[str, str] = json.loads(attrs["versions_json"])
        self.class_names: list[str] = json.loads(attrs["class_names_json"])
        self.experiment: str = str(attrs["experiment"])
        self.planned_steps: int = int(attrs["planned_steps"])
        self.schedule: str = str(attrs["record_schedule"])
        self.created_unix: float = float(attrs.get("created_unix", 0.0))
        self.initialised_from: str = str(attrs.get("initialised_from", ""))  # what init_from did (schema 5)
        self.layers: list[str] = json.loads(self._f["layers"].attrs["order_json"])
        self.kernel_layers: list[str] = json.loads(self._f["layers"].attrs["kernels_json"])

    # -- live state ---------------------------------------------------------------------------------
    def _frame_datasets(self) -> list[h5py.Dataset]:
        f = self._f
        out = [f["frames/step"], f["frames/wall_time"], f["frames/logits"]]
        out += [f["layers"][n]["activations"] for n in self.layers]
        out += [f["layers"][n]["kernel"] for n in self.kernel_layers]
        return out

    def refresh(self) -> None:
        """Sees rows appended since the file was opened (SWMR)."""
        for ds in self._frame_datasets():
            ds.refresh()
        for group in ("train", "eval"):
            for ds in self._f[group].values():
                ds.refresh()
        if self.has_analysis:
            g = self._f["analysis"]
            for ds in [g["step"], *(g[n][k] for n in self.layers for k in ("gram", "stats"))]:
                ds.refresh()
        for name in ("status", "status_message", "updated_unix", "test/loss", "test/accuracy", "test/count"):
            self._f[name].refresh()

    @property
    def num_frames(self) -> int:
        """Complete frames: the shortest frame dataset (a writer killed mid-frame leaves a longer one)."""
        return min(ds.shape[0] for ds in self._frame_datasets())

    @property
    def steps(self) -> np.ndarray:  # [T]
        return self._f["frames/step"][: self.num_frames]

    @property
    def frame_wall_time(self) -> np.ndarray:  # [T]
        return self._f["frames/wall_time"][: self.num_frames]

    @property
    def status(self) -> str:
        return self._f["status"][()].decode()

    @property
    def status_message(self) -> str:
        return self._f["status_message"][()].decode("utf-8", errors="replace")

    @property
    def updated_unix(self) -> float:
        return float(self._f["updated_unix"][()])

    @property
    def recorded_by(self) -> str:
        """What wrote the file: `emergence record` or `emergence.Recorder` (empty before schema 3)."""
        return str(self._f.attrs.get("writer", ""))

    @property
    def writer_identity(self) -> dict[str, Any]:
        """pid, host and start time of the process that writes (or last wrote) the file; empty before schema 4."""
        a = self._f.attrs
        if "writer_pid" not in a:
            return {}
        return {"pid": int(a["writer_pid"]), "host": str(a["writer_host"]), "started_unix": float(a["writer_started_unix"])}

    def state(self, stale_seconds: float = STALE_SECONDS) -> tuple[str, str]:
        """(one of schema.py STATES, a reason or ""). A `running` file is `killed` when its writer process is gone (same
        host) or its heartbeat (`updated_unix`, refreshed every few seconds) is older than `stale_seconds`."""
        status = self.status
        if status == "running":
            who = self.writer_identity
            if who and who["host"] == socket.gethostname() and not _process_alive(who["pid"]):
                why = f"its writer (process {who['pid']}) is gone"
            elif (age := time.time() - self.updated_unix) > stale_seconds:
                why = f"no heartbeat for {age:.0f} s: the recorder was probably killed"
            else:
                return "recording", ""
            return "killed", f"{why}; the file holds everything up to step {self.last_step()}"
        return status, self.status_message

    def last_step(self) -> int:
        """The last step with a complete training row, else the last recorded frame step (-1: none)."""
        train, frames = self.train_metrics().step, self.steps
        return int(max(train[-1] if len(train) else -1, frames[-1] if len(frames) else -1))

    def describe_status(self, stale_seconds: float = STALE_SECONDS) -> str:
        state, reason = self.state(stale_seconds)
        return f"{state}: {reason}" if reason else state

    def facts(self) -> dict[str, str]:
        """model, activation, dataset, optimizer, learning_rate, batch_size, seed as text: from the config where it
        has them (any JSON object for runs recorded through the API), else from the file itself, else "?"."""
        c = self.config
        first = self.layers[0] if self.layers else None
        fallback = {"model": self.summary.get("framework", "?"), "activation": self.activation_label(first) if first else "?",
                    "dataset": str(self._f["probes/indices"].attrs.get("dataset", "")) or "?"}
        keys = ("model", "activation", "dataset", "optimizer", "learning_rate", "batch_size", "seed")
        return {k: str(c[k]) if k in c and c[k] is not None else fallback.get(k, "?") for k in keys}

    def describe_training(self) -> str:
        """One line: what was trained on what, how."""
        f = {k: v for k, v in self.facts().items() if v != "?"}  # what is not known is left out, never shown as ?
        model = " ".join(x for x in (f.get("model", ""), f"({f['activation']})" if "activation" in f else "") if x)
        parts = [" on ".join(x for x in (model, f.get("dataset", "")) if x),
                 " ".join(x for x in (f.get("optimizer", ""), f"lr {f['learning_rate']}" if "learning_rate" in f else "") if x),
                 f"batch {f['batch_size']}" if "batch_size" in f else "", f"seed {f['seed']}" if "seed" in f else ""]
        return ", ".join(p for p in parts if p) or "no training facts recorded"

    # -- data ---------------------------------------------------------------------------------------
    def layer_shape(self, layer: str) -> tuple[int, ...]:
        """(P, H, W, C) of one frame of `layer`."""
        return tuple(self._dataset(layer).shape[1:])

    def layer_channels(self, layer: str) -> list[int]:
        """The layer's channel numbers, in the order stored: a subset when recorded with `channels=` (schema 6)."""
        ds = self._dataset(layer)
        stored = ds.attrs.get("channels_json")
        return json.loads(stored) if stored is not None else list(range(ds.shape[-1]))

    def layer_dtype(self, layer: str) -> np.dtype:
        """The stored dtype of `layer`'s activations (float16 or float32)."""
        return self._dataset(layer).dtype

    def kernel_shape(self, layer: str) -> tuple[int, ...]:
        """(kh, kw, C_in, C_out) of one recorded kernel of `layer`."""
        if layer not in self.kernel_layers:
            raise KeyError(f"kernel of {layer!r} was not recorded; recorded kernels: {self.kernel_layers}")
        return tuple(self._f["layers"][layer]["kernel"].shape[1:])

    def layer_stage(self, layer: str) -> str:
        """What the values are: "after the nonlinearity", or "pre-activation" (a conv's own output)."""
        return str(self._dataset(layer).attrs.get("stage", AFTER_NONLINEARITY))

    def activation_label(self, layer: str) -> str:
        """The nonlinearity's name, or "pre-activation": what pictures of the layer are titled with."""
        stage = self.layer_stage(layer)
        return self.activation_name(layer) if stage == AFTER_NONLINEARITY else stage

    def scalars(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Extra scalar series (schema 3): name -> (steps [n], values [n] float64); empty for older files."""
        if "scalars" not in self._f:
            return {}
        g = self._f["scalars"]
        for name in ("step", "series", "value"):
            g[name].refresh()
        n = min(g[k].shape[0] for k in ("step", "series", "value"))
        steps, series, values = g["step"][:n], g["series"][:n], g["value"][:n]
        names = [b.decode() for b in g["names"][()] if b]
        return {name: (steps[series == i], values[series == i]) for i, name in enumerate(names)}

    def activation_name(self, layer: str) -> str:
        return str(self._dataset(layer).attrs["activation"])

    def _dataset(self, layer: str) -> h5py.Dataset:
        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in {self.path}; layers: {', '.join(self.layers)}")
        return self._f["layers"][layer]["activations"]

    def _frame_indices(self, steps: Sequence[int] | None) -> np.ndarray:
        all_steps = self.steps
        if steps is None:
            return np.arange(len(all_steps))
        pos = np.searchsorted(all_steps, steps)
        bad = [s for s, p in zip(steps, pos) if p >= len(all_steps) or all_steps[p] != s]
        if bad:
            raise KeyError(f"steps {bad[:5]} were not recorded; recorded: {step_summary(all_steps)}")
        return pos

    def activations(self, layer: str, steps: Sequence[int] | None = None) -> np.ndarray:
        """[len(steps), P, H, W, C] float32 of `layer` at the recorded `steps` (all if None)."""
        idx = self._frame_indices(steps)
        return self._dataset(layer)[np.asarray(idx)].astype(np.float32) if len(idx) else np.zeros((0, *self.layer_shape(layer)), np.float32)

    def read_frames(self, layer: str, positions: np.ndarray, kernel: bool = False) -> np.ndarray:
        """Frames at increasing `positions` (indices into `steps`), as stored: [len, P, H, W, C] activations,
        or [len, kh, kw, C_in, C_out] kernels. Nearby positions are read as one slice."""
        with self.lock:
            return _read_rows(self._f["layers"][layer]["kernel"] if kernel else self._dataset(layer), positions)

    def kernels(self, layer: str, steps: Sequence[int] | None = None) -> np.ndarray:
        """[len(steps), kh, kw, C_in, C_out] of `layer` (only for layers in `kernel_layers`)."""
        if layer not in self.kernel_layers:
            raise KeyError(f"kernel of {layer!r} was not recorded; recorded kernels: {self.kernel_layers}")
        return self._f["layers"][layer]["kernel"][np.asarray(self._frame_indices(steps))]

    def logits(self, steps: Sequence[int] | None = None) -> np.ndarray:  # [len(steps), P, K]
        return self._f["frames/logits"][np.asarray(self._frame_indices(steps))]

    def probes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8 [P, H, W, C], labels [P], test-split indices [P])."""
        g = self._f["probes"]
        return g["images"][()], g["labels"][()], g["indices"][()]

    def _metrics(self, group: str) -> Metrics:
        g = self._f[group]
        n = min(ds.shape[0] for ds in (g["step"], g["loss"], g["accuracy"]))
        return Metrics(g["step"][:n], g["loss"][:n], g["accuracy"][:n])

    def train_metrics(self) -> Metrics:
        """Per update: loss/accuracy of the training batch, with the parameters before that update."""
        return self._metrics("train")

    def train_wall_time(self) -> np.ndarray:
        """[S] seconds since the run started at which each training row reached the host (rows of one block share it)."""
        n = len(self.train_metrics().step)
        return self._f["train/wall_time"][:n]

    def eval_metrics(self) -> Metrics:
        """On the held-out subset (`eval_count` test images), with the parameters after each step."""
        return self._metrics("eval")

    @property
    def train_count(self) -> int:
        """Training rows written so far."""
        return int(self._f["train/step"].shape[0])

    @property
    def eval_count_written(self) -> int:
        """Evaluations written so far."""
        return int(self._f["eval/step"].shape[0])

    @property
    def eval_count(self) -> int:
        return int(self._f["eval"].attrs["count"])

    def test_metrics(self) -> tuple[float, float, int]:
        """(loss, accuracy, images) on the full test split; NaN, NaN, 0 until the run completes."""
        t = self._f["test"]
        return float(t["loss"][()]), float(t["accuracy"][()]), int(t["count"][()])

    # -- analysis (schema 2) ----------------------------------------------------------------------
    @property
    def has_analysis(self) -> bool:
        return "analysis" in self._f

    @property
    def probe_dataset(self) -> str:
        """The data set the probe images come from, as the recording loop named it."""
        return str(self._f["probes/indices"].attrs.get("dataset", "")) or "an unnamed data set"

    def missing_analysis(self) -> str:
        """Why the run holds no analysis probe set, and how a run gets one (for messages)."""
        if self.recorded_by == "emergence.Recorder":
            return (f"{self.path.name} holds no analysis probe set: its loop's Recorder had none. Make the probes with "
                    "Probes.from_dataset(data, ...) (an NNX model is then analysed by default), or pass "
                    "Recorder(analysis=Probes(...)) and call capture(model, probe_x, analysis_x) where "
                    "rec.should_analyse(step)")
        if "analysis_probes" in self.config:
            return (f"{self.path.name} holds no analysis probe set: it was recorded with analysis_probes=0; record it "
                    "again without that setting")
        return f"{self.path.name} holds no analysis probe set (written before schema 2); record it again"

    def _analysis(self) -> h5py.Group:
        if not self.has_analysis:
            raise RunFileError(self.missing_analysis())
        return self._f["analysis"]

    @property
    def analysis_steps(self) -> np.ndarray:  # [A] steps with Grams, complete rows only
        g = self._analysis()
        n = min([g["step"].shape[0], *(g[n][k].shape[0] for n in self.layers for k in ("gram", "stats"))])
        return g["step"][:n]

    def analysis_probe_set(self) -> dict[str, Any]:
        """dataset, split, indices [n], labels [n] and sha256 of the analysis images."""
        g = self._analysis()
        return {"dataset": str(g.attrs["dataset"]), "split": str(g.attrs["split"]), "sha256": str(g.attrs["sha256"]),
                "indices": g["indices"][()], "labels": g["labels"][()], "rule": str(g.attrs["rule"])}

    def grams(self, layer: str, positions: Sequence[int] | None = None) -> np.ndarray:
        """Centred Gram matrices [len, n, n] float64 of `layer` at analysis positions (all if None)."""
        g = self._analysis()
        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in {self.path}; layers: {', '.join(self.layers)}")
        count = len(self.analysis_steps)
        idx = np.arange(count) if positions is None else np.asarray(positions)
        packed = _read_rows(g[layer]["gram"], idx)
        n = int(g.attrs["count"])
        out = np.zeros((len(idx), n, n), np.float64)
        iu = np.triu_indices(n)
        out[:, iu[0], iu[1]] = packed
        out[:, iu[1], iu[0]] = packed
        return out

    def activity(self, layer: str) -> dict[str, np.ndarray]:
        """Per analysis step: name -> [A] (see the file's analysis/stat_docs_json)."""
        g = self._analysis()
        names = json.loads(g.attrs["stats_json"])
        stats = g[layer]["stats"][: len(self.analysis_steps)]
        return {name: stats[:, i].astype(np.float64) for i, name in enumerate(names)}

    # -- weights (schema 5) -----------------------------------------------------------------------
    @property
    def weight_specs(self) -> list[dict[str, Any]]:
        """[{"path", "shape", "kind"}] of the stored weights (empty when the file stores none)."""
        return json.loads(self._f["weights"].attrs["specs_json"]) if "weights" in self._f else []

    @property
    def weight_steps(self) -> np.ndarray:  # [W] steps with stored weights, complete rows only
        if "weights" not in self._f:
            return np.zeros(0, np.int64)
        g = self._f["weights"]
        n = min([g["step"].shape[0], *(g[f"values/{s['path']}"].shape[0] for s in self.weight_specs)])
        return g["step"][:n]

    def weights(self, step: int, paths: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{path: float32 array} of the weights stored at `step` (see `weight_steps`): all, or those at `paths`."""
        stored = self.weight_steps.tolist()
        if step not in stored:
            raise KeyError(f"{self.path} stores weights at steps {stored}, not at {step}")
        row = stored.index(step)
        wanted = [s["path"] for s in self.weight_specs] if paths is None else paths
        return {p: self._f[f"weights/values/{p}"][row] for p in wanted}

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


METADATA_READ_ATTEMPTS = 12  # HDF5's SWMR default is 100, with doubling waits: minutes on a damaged file


@functools.cache
def _hdf5_library() -> Any:
    """The HDF5 library h5py runs on (already loaded in this process), through ctypes; None if not found."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libhdf5" in line and "libhdf5_hl" not in line}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            if hasattr(lib, "H5Pset_metadata_read_attempts"):
                return lib
    except OSError:
        pass
    return None


def open_swmr(path: Path, locking: bool = True) -> h5py.File:
    """Opens a run file for SWMR reading, with HDF5's metadata read retries bounded (METADATA_READ_ATTEMPTS):
    a live writer's torn metadata is re-read a few times, a damaged file fails within a second.

    `locking=False` takes no HDF5 file lock: a reader's shared lock makes a recorder that opens the file for
    writing meanwhile fail ("unable to lock file", errno 11), as a sweep's resume did while its progress line
    read the file, and as `emergence resume` did beside the viewer. HDF5 refuses to open one file in one
    process with both settings ("file locking flag values don't match"), so where this process holds it open
    with the other setting already, it is opened with that one."""
    try:
        return _open_swmr(path, locking)
    except OSError as e:
        if "locking flag" not in str(e):
            raise
        return _open_swmr(path, not locking)


def _open_swmr(path: Path, locking: bool) -> h5py.File:
    lib = _hdf5_library()
    if lib is None:  # an HDF5 build we cannot reach: its default retries
        return h5py.File(path, "r", libver="latest", swmr=True, locking=locking)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_WEAK)  # as h5py.File's own: the same process may hold the file open too
    fapl.set_file_locking(locking, True)
    if lib.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(METADATA_READ_ATTEMPTS)) < 0:
        return h5py.File(path, "r", libver="latest", swmr=True, locking=locking)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:  # a zombie (dead, not yet reaped: e.g. orphaned under a subreaper that does not reap) is not a writer
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): existing is all we know


def open_run(path: str | Path, locking: bool = True) -> Run:
    """Opens a run file for reading (works while the recorder is still writing it); `locking=False`: without
    HDF5's file lock, so a process opening it for writing meanwhile is not refused (see `open_swmr`)."""
    return Run(path, locking)


def _read_rows(ds: h5py.Dataset, positions: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows at increasing `positions` of a dataset; nearby positions are read as one slice, far ones one by one."""
    positions = np.asarray(positions, np.int64)
    if len(positions) == 0:
        return np.zeros((0, *ds.shape[1:]), ds.dtype)
    first, last = int(positions[0]), int(positions[-1])
    if last - first + 1 <= 4 * len(positions):
        return ds[first : last + 1][positions - first]
    return np.stack([ds[int(p)] for p in positions])


def step_summary(steps: np.ndarray) -> str:
    if len(steps) == 0:
        return "none"
    if len(steps) <= 6:
        return ", ".join(str(s) for s in steps)
    return f"{steps[0]}, {steps[1]}, ..., {steps[-1]} ({len(steps)} frames)"
