"""Where dataset files come from: explicit folder, standard locations, a verified download, or an error.

Lookup order for a dataset called NAME:
1. `--data-dir DIR` (or the `EMERGENCE_DATA_DIR` environment variable): the files in DIR or DIR/NAME;
   if given and the files are not there, that is an error (no silent fallback).
2. Standard locations: `/usr/share/datasets/NAME` (Debian's dataset packages), `~/.keras/datasets/NAME`,
   and our own cache, `$EMERGENCE_CACHE` or `~/.cache/emergence/NAME`.
3. A download from the canonical mirrors into the cache, verified with SHA-256 before it is kept.
4. An error that says how to get the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str  # file name on the mirror and in the cache
    sha256: str
    size: int  # bytes, for the progress message only


@dataclasses.dataclass(frozen=True)
class Source:
    """The files of one dataset and how to fetch them."""

    name: str
    files: tuple[RemoteFile, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order
    needed: tuple[str, ...]  # paths (relative to the dataset folder) that must exist once fetched
    how_to_get: str  # human instructions for the error message
    unpack: bool = False  # the files are .tar.gz archives to extract into the folder


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are nowhere and could not be downloaded."""


def cache_root() -> Path:
    return Path(os.environ.get("EMERGENCE_CACHE", Path.home() / ".cache" / "emergence"))


def standard_dirs(name: str) -> list[Path]:
    return [Path("/usr/share/datasets") / name, Path.home() / ".keras" / "datasets" / name, cache_root() / name]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _has_all(folder: Path, needed: tuple[str, ...]) -> bool:
    return all((folder / n).is_file() for n in needed)


def _find_needed(folder: Path, needed: tuple[str, ...]) -> Path | None:
    """The folder holding `needed` files: `folder` itself, or, failing that, a variant without `.gz`."""
    if _has_all(folder, needed):
        return folder
    ungz = tuple(n.removesuffix(".gz") for n in needed)
    if ungz != needed and _has_all(folder, ungz):
        return folder
    return None


def resolve_names(folder: Path, needed: tuple[str, ...]) -> list[Path]:
    """Paths of the needed files in `folder`, preferring the name as listed, else without `.gz`."""
    return [folder / n if (folder / n).is_file() else folder / n.removesuffix(".gz") for n in needed]


def _download(url: str, dest: Path, expected: RemoteFile) -> None:
    """Downloads `url` to `dest`, verifying SHA-256; nothing is left at `dest` unless it verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        got = sha256_of(tmp)
        if got != expected.sha256:
            raise ValueError(f"checksum mismatch for {url}: expected sha256 {expected.sha256}, got {got}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(source: Source, folder: Path) -> list[str]:
    """Downloads every file of `source` into `folder`; returns why a file failed on every mirror
    (empty on success)."""
    for f in source.files:
        dest = folder / f.name
        if dest.is_file() and sha256_of(dest) == f.sha256:
            continue
        attempts: list[str] = []
        for base in source.mirrors:
            url = base.rstrip("/") + "/" + f.name
            print(f"downloading {url} ({f.size / 1e6:.1f} MB) -> {dest}", file=sys.stderr)
            try:
                _download(url, dest, f)
                break
            except (OSError, ValueError) as e:
                attempts.append(f"{url}: {e}")
        else:
            return attempts
        if source.unpack:
            with tarfile.open(dest, "r:gz") as tar:
                tar.extractall(folder, filter="data")
    return []


def locate(source: Source, data_dir: str | Path | None = None, download: bool | None = None) -> Path:
    """Returns the folder that holds all of `source.needed`, fetching them if allowed.

    `download` defaults to true unless the environment variable `EMERGENCE_NO_DOWNLOAD` is set.
    """
    explicit = data_dir if data_dir is not None else os.environ.get("EMERGENCE_DATA_DIR")
    if explicit:
        for folder in (Path(explicit), Path(explicit) / source.name):
            if (found := _find_needed(folder, source.needed)) is not None:
                return found
        raise DatasetNotFoundError(
            f"no {source.name} files in {explicit} (looked for {', '.join(source.needed)} there and in "
            f"{Path(explicit) / source.name}). {source.how_to_get}"
        )
    for folder in standard_dirs(source.name):
        if (found := _find_needed(folder, source.needed)) is not None:
            return found
    if download is None:
        download = not os.environ.get("EMERGENCE_NO_DOWNLOAD")
    looked = ", ".join(str(d) for d in standard_dirs(source.name))
    if not download:
        raise DatasetNotFoundError(
            f"{source.name} not found (looked in {looked}; downloads are off). {source.how_to_get}"
        )
    folder = cache_root() / source.name
    problems = _fetch(source, folder)
    if not problems and _has_all(folder, source.needed):
        return folder
    raise DatasetNotFoundError(
        f"{source.name} not found (looked in {looked}) and the download failed:\n  "
        + "\n  ".join(problems or ["files missing after download"])
        + f"\n{source.how_to_get}"
    )
