"""Whether two run files hold the same recording: every dataset bitwise, but what records when and by whom.

What may differ between two recordings of the same config: wall-clock columns (`frames/wall_time`,
`train/wall_time`), the heartbeat (`updated_unix`), the status message, and the root attributes that name the
writer process, the creation time and the software versions. Everything else (activations, kernels, logits,
Grams, statistics, metrics, probes, config) must be equal bit for bit for a resumed run to count as identical
to an uninterrupted one (on the same machine and backend).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from runfile.reader import open_run

TIMING = ("frames/wall_time", "train/wall_time", "updated_unix", "status_message")
VOLATILE_ATTRS = ("created_unix", "writer_pid", "writer_host", "writer_started_unix", "versions_json")


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    out: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def differences(path_a: str | Path, path_b: str | Path, limit: int = 10) -> list[str]:
    """What differs between the recordings in two run files (at most `limit` lines; empty: identical)."""
    out: list[str] = []
    with open_run(path_a) as a, open_run(path_b) as b:
        fa, fb = a._f, b._f
        for key in sorted(set(fa.attrs) | set(fb.attrs)):
            if key not in VOLATILE_ATTRS and (key not in fa.attrs or key not in fb.attrs
                                              or not np.array_equal(fa.attrs[key], fb.attrs[key])):
                out.append(f"root attribute {key}")
        da, db = _datasets(fa), _datasets(fb)
        for name in sorted(set(da) | set(db)):
            if name in TIMING:
                continue
            if name not in da or name not in db:
                out.append(f"{name}: only in {'A' if name in da else 'B'}")
                continue
            x, y = da[name][()], db[name][()]
            if x.shape != y.shape or x.dtype != y.dtype:
                out.append(f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            elif x.tobytes() != y.tobytes():  # bitwise (NaNs included)
                rows = np.flatnonzero([r.tobytes() != s.tobytes() for r, s in zip(x, y)]) if x.ndim else []
                out.append(f"{name}: differs" + (f" in {len(rows)} rows, first {rows[0]}" if len(rows) else ""))
    return out[:limit]
