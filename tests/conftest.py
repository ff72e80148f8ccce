"""Shared helpers: writers of the real on-disk dataset formats, and small recorded runs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Writes `array` in the IDX format (big-endian header: 0, 0, type, ndim, then the dims)."""
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_like(folder: Path, n_train: int = 64, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr, gz=gz)
    return arrays


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """CIFAR-10 binary: per record 1 label byte, then the R, G and B planes (32x32 each, row-major)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    path.write_bytes(np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes())
    return path


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """No standard dataset locations, no cache, no downloads: only what a test puts there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("EMERGENCE_CACHE", str(home / "cache"))
    monkeypatch.setenv("EMERGENCE_NO_DOWNLOAD", "1")
    monkeypatch.delenv("EMERGENCE_DATA_DIR", raising=False)
    return home


def tiny_config(**changes):
    from experiments import get_experiment
    from recorder.config import apply_overrides

    base = ["synthetic_size=256", "batch_size=32", "steps=6", "eval_every=3", "eval_size=40", "analysis_probes=32"]
    return apply_overrides(get_experiment("tiny"), base + [f"{k}={v}" for k, v in changes.items()])


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory):
    """Two recorded tiny runs (30 steps), tanh and relu, same seed and analysis images: {activation: path}."""
    from recorder.run import record

    folder = tmp_path_factory.mktemp("cmp")
    paths = {}
    for act in ("tanh", "relu"):
        paths[act] = folder / f"tiny-{act}.h5"
        record(tiny_config(activation=act, steps=30), paths[act], show_progress=False, log=lambda s: None)
    return paths


def write_run(path: Path, layers: dict, steps=None, activation="tanh", status="completed", close=True,
              train_steps=None, probe_images=None, config=None):
    """A run file holding exactly `layers` ({name: [T, P, H, W, C]}), written with the recorder's own writer.
    `config` adds to (or replaces keys of) the handmade run's config.

    With close=False the writer is returned still open (the file is then a run that is still recording).
    """
    import json

    from runfile.writer import H5RunWriter, LayerSpec, RunLayout

    first = next(iter(layers.values()))
    t, p = first.shape[:2]
    steps = list(range(t)) if steps is None else list(steps)
    if probe_images is None:
        probe_images = (np.arange(p * 16 * 16) % 256).astype(np.uint8).reshape(p, 16, 16, 1)
    config = {"model": "handmade", "activation": activation, "dataset": "synthetic", "optimizer": "adam",
              "learning_rate": 0.001, "batch_size": 8, "seed": 0, **(config or {})}
    layout = RunLayout(
        layers=tuple(LayerSpec(n, a.shape[2:], activation) for n, a in layers.items()),
        num_classes=10,
        probe_images=probe_images,
        probe_labels=np.arange(p) % 10,
        probe_indices=np.arange(p),
        probe_dataset="synthetic",
        attrs={"experiment": "handmade", "config_json": json.dumps(config), "versions_json": "{}",
               "summary_json": "{}", "class_names_json": json.dumps([f"class {i}" for i in range(10)]),
               "planned_steps": steps[-1], "record_schedule": "every"},
        dtype="float32",
        eval_count=100,
    )
    writer = H5RunWriter(path, layout)
    for i, s in enumerate(steps):
        frame = {n: a[i] for n, a in layers.items()}
        frame["logits"] = np.zeros((p, 10), np.float32)
        writer.write_frame(s, frame, float(i))
    train = np.arange(1, steps[-1] + 1) if train_steps is None else np.asarray(train_steps)
    if len(train):
        writer.write_train(train, 1.0 / train, np.minimum(train / 100.0, 1.0), train.astype(np.float64))
    writer.write_eval(steps[-1], 0.5, 0.75)
    if not close:
        writer.flush()
        return writer
    writer.set_status(status)
    writer.close()
    return None
