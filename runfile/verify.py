"""`emergence verify`: reads every metadata object and every chunk of a run file, and names what is damaged.

Since schema 7 every chunk carries HDF5's Fletcher-32 checksum (docs/run_schema.md), so a damaged chunk fails
to read instead of returning other numbers; before it, only damaged metadata and undecodable chunks are found.
Each damaged chunk is reported as the dataset and the steps its rows hold (frames, analysed steps, training
rows, stored weights), so a user knows which frames are lost. `quick=True` reads the metadata and every chunk
but those of the frames and Grams (the bulk of a file): what `emergence info` checks in well under a second.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py

from runfile.errors import first_line
from runfile.reader import Run

BULK = ("/activations", "/gram", "/kernel")  # the datasets quick=True skips: one big chunk per row


@dataclasses.dataclass
class Damage:
    dataset: str
    rows: list[int]  # damaged row positions
    steps: list[int]  # the steps those rows hold, where the file says (else empty)
    reason: str

    def describe(self) -> str:
        where = (f"steps {compact_ranges(self.steps)}" if self.steps else f"rows {compact_ranges(self.rows)}") if self.rows else "metadata"
        return f"/{self.dataset} ({where}): {self.reason}"


@dataclasses.dataclass
class Verdict:
    path: Path
    damaged: list[Damage]
    datasets: int
    chunks: int
    bytes_read: int
    quick: bool

    @property
    def ok(self) -> bool:
        return not self.damaged

    def describe(self) -> str:
        what = "metadata and every chunk but the frames'" if self.quick else "metadata and every chunk"
        if self.ok:
            return (f"{self.path}: ok: {what} read back ({self.datasets} datasets, {self.chunks} chunks, "
                    f"{self.bytes_read / 1e6:.1f} MB)")
        return f"{self.path}: damaged: " + "; ".join(d.describe() for d in self.damaged)


def verify(run: Run, quick: bool = False) -> Verdict:
    """Reads `run`'s file through (see the module doc) and lists what does not read back."""
    f = run._f
    damaged: list[Damage] = []
    datasets: list[tuple[str, h5py.Dataset]] = []

    def visit(name: str, obj: object) -> None:
        try:
            dict(obj.attrs)  # every attribute of every object
            if isinstance(obj, h5py.Dataset):
                datasets.append((name, obj))
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            damaged.append(Damage(name, [], [], first_line(e, 200)))

    try:
        f.visititems(visit)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        damaged.append(Damage("", [], [], f"the file's structure cannot be walked: {first_line(e, 200)}"))
    chunks = nbytes = 0
    for name, ds in datasets:
        if quick and name.endswith(BULK):
            continue
        bad: list[int] = []
        reason = ""
        for rows in _pieces(ds):
            chunks += 1
            try:
                nbytes += ds[rows].nbytes
            except (OSError, RuntimeError, ValueError) as e:
                bad += list(range(*rows[0].indices(ds.shape[0]))) if ds.shape else [0]
                reason = reason or first_line(e, 200)
        if bad:
            damaged.append(Damage(name, bad, _steps_of(f, name, bad), reason))
    return Verdict(run.path, damaged, len(datasets), chunks, nbytes, quick)


def _pieces(ds: h5py.Dataset) -> list[tuple[slice, ...]]:
    """The selections to read `ds` by: its chunks along the first axis (whole rows), or all of it."""
    if not ds.shape:
        return [()]
    if ds.chunks is None:
        return [(slice(0, ds.shape[0]),)]
    step = ds.chunks[0]
    return [(slice(i, min(i + step, ds.shape[0])),) for i in range(0, ds.shape[0], step)]


def _steps_of(f: h5py.File, name: str, rows: list[int]) -> list[int]:
    """The steps held by `rows` of dataset `name`, from its group's step column when that reads."""
    group = name.split("/")[0]
    column = {"layers": "frames/step", "frames": "frames/step", "analysis": "analysis/step", "train": "train/step",
              "eval": "eval/step", "weights": "weights/step", "scalars": "scalars/step"}.get(group)
    if column is None or name == column:
        return []
    try:
        steps = f[column][()]
    except (OSError, RuntimeError, KeyError, ValueError):
        return []
    return [int(steps[r]) for r in rows if r < len(steps)]


def compact_ranges(values: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, values = [], sorted(set(values))
    start = prev = values[0] if values else 0
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)

