"""The runs under one folder: found by the server's own scan, addressed by opaque ids, opened under one lock.

* Ids are the first 16 hex digits of the SHA-256 of the run's path relative to RUNS_DIR: stable across
  restarts (so links keep working) and never parsed. A request's id is looked up in the last scan; nothing a
  request carries is ever joined to a path.
* A file is listed only if its real path (symlinks resolved) lies inside RUNS_DIR; symlinked folders are not
  followed. Hidden names (the recorder's and replay's temporary files start with '.') are skipped.
* A run recorded on a worker's local disk (a sweep's `--stage`) is listed from its progress file
  (`NAME.progress.json`, runfile/progress.py) until its run file is published beside it: a row with its step,
  last metrics and config, not openable. A progress file newer than a published (stopped) run file of the same
  name says that a retry is recording it elsewhere.
* h5py serialises its calls and concurrent threaded reads have crashed it, so every HDF5 access in the server
  runs under `Catalog.lock`.
* Open handles are kept while a run is being looked at and closed after `idle_seconds` without use (a
  reader's handle can stop a recorder from reopening the file); a file replaced on disk (a new inode) gets a
  new handle. A handle whose file was written since its last use is refreshed (SWMR) before it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from runfile.progress import SUFFIX as PROGRESS_SUFFIX
from runfile.progress import read_progress
from runfile.reader import Metrics, Run, RunFileError

MAX_RUNS = 2000  # files listed at most; a folder with more is cut and says so
MAX_DEPTH = 6  # folder levels below RUNS_DIR that are scanned


class UnknownRun(KeyError):
    """No run with that id in the last scan of RUNS_DIR."""


@dataclasses.dataclass(frozen=True)
class RunFile:
    id: str
    name: str  # path relative to RUNS_DIR, without .h5 (display only)
    path: Path
    identity: tuple[int, int, int, int]  # (device, inode, mtime_ns, size): changes when the file does


@dataclasses.dataclass
class _Handle:
    run: Run
    inode: tuple[int, int]
    used: float
    stamp: tuple[int, int]  # (mtime_ns, size) of the file at the last refresh


def run_id(relative: str) -> str:
    return hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class Catalog:
    """The run files under a folder and the open handles the server reads them through. Runs are opened
    without HDF5's file lock (`Run(..., locking=False)`): the shared lock of a run the viewer shows made
    `emergence resume` of that run fail to open it for writing ("unable to lock file")."""

    def __init__(self, root: str | Path, idle_seconds: float = 3.0):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"no folder {root}: record a run first (emergence record learn_to_see writes "
                                    "runs/learn_to_see.h5) or pass the folder that holds your run files")
        self.idle_seconds = idle_seconds
        self.lock = threading.RLock()  # every HDF5 call of the server runs under it
        self._files: dict[str, RunFile] = {}
        self._progress: dict[str, RunFile] = {}  # run name -> its progress file (a run recorded elsewhere)
        self._handles: dict[str, _Handle] = {}
        self._rows: dict[str, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}  # id -> (identity, row)
        self.truncated = False

    # -- scanning -----------------------------------------------------------------------------------
    def scan(self) -> list[RunFile]:
        """The run files under the root now, sorted by name; also the table that ids are looked up in."""
        found: dict[str, RunFile] = {}
        progress: dict[str, RunFile] = {}
        self.truncated = False
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            depth = len(Path(folder).relative_to(self.root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < MAX_DEPTH)
            for name in sorted(files):
                if name.endswith(PROGRESS_SUFFIX) and not name.startswith(".") and len(progress) < MAX_RUNS:
                    entry = self._entry(Path(folder) / name, PROGRESS_SUFFIX)
                    if entry is not None:
                        progress[entry.name] = entry
                if name.startswith(".") or not name.endswith(".h5"):
                    continue
                entry = self._entry(Path(folder) / name)
                if entry is not None:
                    found[entry.id] = entry
                if len(found) >= MAX_RUNS:
                    self.truncated = True
                    break
            if self.truncated:
                break
        self._files = found
        self._progress = progress
        return sorted(found.values(), key=lambda f: f.name)

    def _entry(self, path: Path, suffix: str = ".h5") -> RunFile | None:
        try:
            real = path.resolve(strict=True)
            st = real.stat()
        except (OSError, RuntimeError):  # vanished, or a symlink loop
            return None
        if not real.is_relative_to(self.root) or not real.is_file():
            return None  # a symlink that leaves RUNS_DIR is not served
        relative = path.relative_to(self.root).as_posix()
        return RunFile(run_id(relative), relative[: -len(suffix)], real, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))

    def file(self, rid: str) -> RunFile:
        entry = self._files.get(rid)
        if entry is None:
            self.scan()
            entry = self._files.get(rid)
        if entry is None:
            raise UnknownRun(f"no run {rid!r} in {self.root} (it may have been deleted or renamed)")
        return entry

    def rows(self) -> list[dict[str, Any]]:
        """The run list: one row per file of a fresh scan. A file is read again only when it changed on disk
        or is still recording; it is opened just for that (an open handle is used if there is one), so the
        list never keeps a file open. An unreadable file gets a row with its reason."""
        rows = []
        for entry in self.scan():
            cached = self._rows.get(entry.id)
            if cached is not None and cached[0] == entry.identity and cached[1].get("state") != "recording":
                rows.append(cached[1])
                continue
            with self.lock:
                try:
                    if entry.id in self._handles:
                        with self.open(entry.id) as run:
                            row = summarise(entry, run)
                    else:
                        with Run(entry.path, locking=False) as run:
                            row = summarise(entry, run)
                except Exception as e:  # noqa: BLE001 - any unreadable file is listed with its reason
                    row = {"id": entry.id, "name": entry.name, "readable": False, "state": "unreadable",
                           "reason": read_error(e, entry), "bytes": entry.identity[3]}
            self._rows[entry.id] = (entry.identity, row)
            rows.append(row)
        for gone in set(self._rows) - set(self._files):
            del self._rows[gone]
        return self._with_progress(rows)

    def _with_progress(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows, with the runs that are recording elsewhere (progress files): a row of their own until their
        run file is published, or a `progress` note on the published file's row when a newer try records it."""
        by_name = {r["name"]: i for i, r in enumerate(rows)}
        extra = []
        for name, entry in sorted(self._progress.items()):
            try:
                p = read_progress(entry.path)
            except (OSError, ValueError) as e:
                extra.append({"id": entry.id, "name": name, "readable": False, "staged": True, "state": "unreadable",
                              "reason": f"{name}{PROGRESS_SUFFIX}: {e}", "bytes": entry.identity[3]})
                continue
            if name in by_name:
                row = rows[by_name[name]]
                newer = p["updated_unix"] * 1e9 > self._files[row["id"]].identity[2] if row["id"] in self._files else False
                if newer and p.get("state") in ("starting", "recording") and not p["stale"]:
                    rows[by_name[name]] = {**row, "progress": progress_note(p)}
                continue
            extra.append(progress_row(entry, p))
        return sorted(rows + extra, key=lambda r: r["name"]) if extra else rows

    # -- handles ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open(self, rid: str) -> Iterator[Run]:
        """The open run `rid`, under the lock, refreshed if its file was written since the last use."""
        entry = self.file(rid)
        with self.lock:
            now = time.monotonic()
            try:
                real = entry.path.resolve(strict=True)  # checked at every open, not only when listed
                st = real.stat()
            except (OSError, RuntimeError):
                self._close(rid)
                raise UnknownRun(f"run {entry.name} is gone from {self.root}") from None
            if real != entry.path or not real.is_relative_to(self.root):
                self._close(rid)
                raise UnknownRun(f"run {entry.name}: its file was replaced by a link since it was listed; not served")
            inode = (st.st_dev, st.st_ino)
            handle = self._handles.get(rid)
            if handle is not None and handle.inode != inode:  # the file was replaced: a new run
                self._close(rid)
                handle = None
            stamp = (st.st_mtime_ns, st.st_size)
            if handle is None:
                handle = _Handle(Run(entry.path, locking=False), inode, now, stamp)
                self._handles[rid] = handle
            elif handle.stamp != stamp:  # written since: see the new rows (SWMR)
                handle.run.refresh()  # a few dataset refreshes: well under a millisecond
                handle.stamp = stamp
            handle.used = now
            try:
                yield handle.run
            except (OSError, RuntimeError):  # the file changed under a handle: drop it, the next request reopens
                self._close(rid)
                raise
            handle.used = time.monotonic()

    def close_idle(self, now: float | None = None) -> int:
        """Closes the handles not used for `idle_seconds`; returns how many are still open."""
        now = time.monotonic() if now is None else now
        with self.lock:
            for rid in [r for r, h in self._handles.items() if now - h.used >= self.idle_seconds]:
                self._close(rid)
            return len(self._handles)

    def _close(self, rid: str) -> None:
        handle = self._handles.pop(rid, None)
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.run.close()

    def close(self) -> None:
        with self.lock:
            for rid in list(self._handles):
                self._close(rid)

    @property
    def open_count(self) -> int:
        return len(self._handles)


def read_error(exc: BaseException, entry: RunFile) -> str:
    """One line saying why a run file could not be read, naming it by its place under the folder."""
    text = str(exc) if isinstance(exc, (RunFileError, OSError)) else f"{type(exc).__name__}: {exc}"
    return text.replace(str(entry.path), f"{entry.name}.h5")


def summarise(entry: RunFile, run: Run) -> dict[str, Any]:
    """The run list's row for one readable run."""
    c = run.facts()
    state, reason = run.state()
    steps = run.steps
    ev, train = run.eval_metrics(), run.train_metrics()
    last_acc: dict[str, Any] | None = None
    if len(ev.step):
        last_acc = {"kind": "eval", "step": int(ev.step[-1]), "value": float(ev.accuracy[-1])}
    elif len(train.step):
        last_acc = {"kind": "train", "step": int(train.step[-1]), "value": float(train.accuracy[-1])}
    _, test_acc, count = run.test_metrics()
    final, best = final_and_best(train, ev)
    return {
        "id": entry.id, "name": entry.name, "readable": True, "experiment": run.experiment,
        "model": c["model"], "activation": c["activation"], "dataset": c["dataset"], "state": state, "reason": reason,
        "frames": int(len(steps)), "last_step": int(steps[-1]) if len(steps) else None,
        "planned_steps": run.planned_steps, "last_accuracy": last_acc,
        "test_accuracy": float(test_acc) if count else None, "has_analysis": run.has_analysis,
        "bytes": entry.identity[3], "config": table_config(run.config), "final": final, "best": best,
    }


def progress_note(p: dict[str, Any]) -> str:
    """One line on a run recorded elsewhere, from its progress file."""
    step = f"step {int(p['step'])} of {int(p['planned_steps'])}" if p.get("step") is not None and p.get(
        "planned_steps") is not None else "starting"
    if p["stale"]:
        return (f"no progress from {p.get('host', '?')} for {p['age_seconds']:.0f} s ({step}): its task was probably "
                "killed; a retry resumes it")
    return (f"{step} on {p.get('host', '?')}'s own disk; here when it completes or stops "
            f"(updated {max(p['age_seconds'], 0):.0f} s ago)")


def progress_row(entry: RunFile, p: dict[str, Any]) -> dict[str, Any]:
    """The runs table's row of a run known only by its progress file (not openable: no frames here yet)."""
    config = p.get("config") or {}
    last = p.get("eval") or p.get("train")
    final = None
    if last:
        final = {"kind": "eval" if p.get("eval") else "train", "step": last.get("step"),
                 "loss": _number(last.get("loss")), "accuracy": _number(last.get("accuracy"))}
    state = "stale" if p["stale"] else p.get("state") or "?"
    return {
        "id": entry.id, "name": entry.name, "readable": False, "staged": True,
        "state": f"{state} elsewhere" if state in ("starting", "recording") else state,
        "reason": progress_note(p) if state in ("starting", "recording", "stale") else p.get("reason") or "",
        "experiment": p.get("experiment"), "model": str(config.get("model", "?")),
        "activation": str(config.get("activation", "?")), "dataset": str(config.get("dataset", "?")),
        "frames": p.get("frames"), "last_step": p.get("step"), "planned_steps": p.get("planned_steps"),
        "final": final, "best": None, "test_accuracy": None, "config": table_config(config),
        "bytes": entry.identity[3],
    }


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def table_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config as the runs table's cells: numbers, text and booleans as they are; anything else (lists,
    objects) as compact JSON text, cut at 80 characters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            value = str(value)  # JSON has no NaN
        if value is None or isinstance(value, (str, int, float, bool)):
            out[str(key)] = value
        else:
            text = json.dumps(value, separators=(",", ":"), default=str)
            out[str(key)] = text if len(text) <= 80 else text[:79] + "…"
    return out


def final_and_best(train: Metrics, ev: Metrics) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last row's loss and accuracy, and the best accuracy with its step: on the held-out evaluations when the
    run has any (what a table of runs should rank by), else on the training batches. Non-finite values are None."""
    m, kind = (ev, "eval") if len(ev.step) else (train, "train")
    if not len(m.step):
        return None, None
    num = lambda v: float(v) if math.isfinite(v) else None  # noqa: E731
    final = {"kind": kind, "step": int(m.step[-1]), "loss": num(m.loss[-1]), "accuracy": num(m.accuracy[-1])}
    acc = np.where(np.isfinite(m.accuracy), m.accuracy, -np.inf)
    i = int(np.argmax(acc))
    best = {"kind": kind, "step": int(m.step[i]), "accuracy": num(m.accuracy[i])} if np.isfinite(acc[i]) else None
    return final, best
