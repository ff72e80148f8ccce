"""A run's live progress in a small side file, for folders where the run file itself cannot be read live.

HDF5's single-writer/many-reader mode needs POSIX semantics that network filesystems (NFS, Lustre) do not
give. A sweep that records on a worker's local disk (experiments/launchers.py, `--stage`) publishes the run
file into the shared folder only as a whole; meanwhile it replaces `NAME.progress.json` beside the run's
place there every few seconds, and `emergence serve` lists that as a run recording elsewhere.

The file is one JSON object (at most MAX_BYTES; written to a hidden temporary name and renamed, so a reader
sees a whole file or the previous one):

    format         "emergence progress 1"
    name           the run's file name without .h5
    host           the worker recording it
    updated_unix   when this file was written (a writer silent for STALE_SECONDS is called stale)
    state          the staged file's state (runfile/schema.py STATES) or "starting"
    reason         why, for states that have one
    step, planned_steps, frames, experiment
    train, eval    the last row of each ({step, loss, accuracy}) or null
    config         the run's config as recorded (its JSON form)
    stage          the run file's path on the worker
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

FORMAT = "emergence progress 1"
SUFFIX = ".progress.json"
MAX_BYTES = 64 * 1024
STALE_SECONDS = 60.0
_NUMBERS = ("updated_unix", "step", "planned_steps", "frames")


def progress_path(run_path: Path) -> Path:
    """NAME.progress.json beside NAME.h5."""
    return run_path.with_name(run_path.stem + SUFFIX)


def write_progress(run_path: Path, fields: dict[str, Any]) -> Path:
    """Replaces the progress file of `run_path` whole (a temporary name, then a rename)."""
    body = {"format": FORMAT, "name": run_path.stem, "host": socket.gethostname(), "updated_unix": time.time(),
            **_finite(fields)}
    text = json.dumps(body, allow_nan=False)
    if len(text) > MAX_BYTES:  # the config is what can be long: the rest is a few hundred bytes
        text = json.dumps({**body, "config": {"note": "config too long for the progress file"}}, allow_nan=False)
    target = progress_path(run_path)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target


def read_progress(path: Path, now: float | None = None) -> dict[str, Any]:
    """The progress file at `path`, checked; `stale` is added when its writer has been silent too long. Raises
    ValueError with the reason for a file that is not one (too large, not JSON, another format, wrong types)."""
    with open(path, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes: not a progress file")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ValueError(f"not a progress file (format is not {FORMAT!r})")
    for key in _NUMBERS:
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{key} is not a number")
    for key in ("name", "host", "state", "reason", "experiment", "stage"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ValueError(f"{key} is not text")
    for key in ("train", "eval", "config"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise ValueError(f"{key} is not an object")
    age = (time.time() if now is None else now) - float(body.get("updated_unix") or 0)
    body["stale"] = body.get("state") in ("starting", "recording") and age > STALE_SECONDS
    body["age_seconds"] = age
    return body


def run_progress(run_path: Path) -> dict[str, Any]:
    """What a run file being recorded on this machine's disk says now: state, step, planned steps, the last
    training and evaluation rows. A file not yet readable gives state "starting" and why."""
    from runfile.reader import open_run

    try:
        with open_run(run_path, locking=False) as run:  # a recorder starting meanwhile must get its lock
            state, reason = run.state()
            train, ev = run.train_metrics(), run.eval_metrics()
            return {"state": state, "reason": reason, "step": run.last_step(), "planned_steps": run.planned_steps,
                    "frames": len(run.steps), "experiment": run.experiment,
                    "train": _last(train), "eval": _last(ev)}
    except Exception as e:  # noqa: BLE001 - a file being created, or gone: said as it is
        return {"state": "starting", "reason": f"{type(e).__name__}: {e}"[:200]}


def _last(m: Any) -> dict[str, Any] | None:
    if not len(m.step):
        return None
    return {"step": int(m.step[-1]), "loss": float(m.loss[-1]), "accuracy": float(m.accuracy[-1])}


def _finite(v: Any) -> Any:
    """JSON has no NaN: non-finite numbers as text."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v
