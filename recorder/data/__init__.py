"""Datasets: `load_dataset(name)` returns uint8 images [N, H, W, C] and int64 labels, train and test.

Names: `fashion_mnist`, `mnist`, `cifar10` (the binary version; no pickle is ever loaded) and
`synthetic` (procedural, offline). See `sources.py` for where files are looked for and fetched from.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from recorder.data import formats, sources, synthetic
from recorder.data.formats import DataFormatError
from recorder.data.sources import DatasetNotFoundError, RemoteFile, Source


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    train_images: np.ndarray  # [N, H, W, C] uint8
    train_labels: np.ndarray  # [N] int64
    test_images: np.ndarray  # [M, H, W, C] uint8
    test_labels: np.ndarray  # [M] int64
    class_names: tuple[str, ...]
    origin: str  # where the files were read from

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# SHA-256 of the files as served by the mirrors (Debian's package recompresses them, so its copies hash
# differently; files found locally are checked by parsing, downloads by these hashes).
FASHION_MNIST = Source(
    name="fashion-mnist",
    files=(
        RemoteFile(_IDX_NAMES[0], "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        RemoteFile(_IDX_NAMES[1], "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        RemoteFile(_IDX_NAMES[2], "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        RemoteFile(_IDX_NAMES[3], "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
    needed=_IDX_NAMES,
    how_to_get=(
        "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
        "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into a folder and pass "
        "--data-dir FOLDER."
    ),
)

MNIST = Source(
    name="mnist",
    files=(
        RemoteFile(_IDX_NAMES[0], "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        RemoteFile(_IDX_NAMES[1], "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        RemoteFile(_IDX_NAMES[2], "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        RemoteFile(_IDX_NAMES[3], "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    needed=_IDX_NAMES,
    how_to_get=(
        "Connect to the internet once (the files are cached in ~/.cache/emergence/mnist), or put the four "
        "MNIST *-ubyte.gz files into a folder and pass --data-dir FOLDER."
    ),
)

CIFAR10 = Source(
    name="cifar10",
    files=(RemoteFile("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171),),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    needed=tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6))
    + ("cifar-10-batches-bin/test_batch.bin",),
    how_to_get=(
        "Connect to the internet once (cached in ~/.cache/emergence/cifar10), or extract "
        "cifar-10-binary.tar.gz (the *binary* version) from https://www.cs.toronto.edu/~kriz/cifar.html "
        "into a folder and pass --data-dir FOLDER."
    ),
    unpack=True,
)

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
KERAS_MNIST_NPZ = Path.home() / ".keras" / "datasets" / "mnist.npz"

DATASETS = ("fashion_mnist", "mnist", "cifar10", "synthetic")


def _load_idx(source: Source, data_dir: str | None, class_names: tuple[str, ...], name: str) -> Dataset:
    folder = sources.locate(source, data_dir)
    tri, trl, tei, tel = sources.resolve_names(folder, source.needed)
    ds = Dataset(
        name,
        formats.read_idx_images(tri),
        formats.read_idx_labels(trl),
        formats.read_idx_images(tei),
        formats.read_idx_labels(tel),
        class_names,
        str(folder),
    )
    _check_pairs(ds)
    return ds


def _load_mnist(data_dir: str | None) -> Dataset:
    names = tuple(str(i) for i in range(10))
    if data_dir is None and not os.environ.get("EMERGENCE_DATA_DIR") and KERAS_MNIST_NPZ.is_file():
        with np.load(KERAS_MNIST_NPZ, allow_pickle=False) as z:
            ds = Dataset(
                "mnist", z["x_train"][..., None], z["y_train"].astype(np.int64),
                z["x_test"][..., None], z["y_test"].astype(np.int64), names, str(KERAS_MNIST_NPZ),
            )
        _check_pairs(ds)
        return ds
    return _load_idx(MNIST, data_dir, names, "mnist")


def _load_cifar10(data_dir: str | None) -> Dataset:
    folder = sources.locate(CIFAR10, data_dir)
    paths = sources.resolve_names(folder, CIFAR10.needed)
    train = [formats.read_cifar_batch(p) for p in paths[:5]]
    test_images, test_labels = formats.read_cifar_batch(paths[5])
    ds = Dataset(
        "cifar10",
        np.concatenate([t[0] for t in train]),
        np.concatenate([t[1] for t in train]),
        test_images,
        test_labels,
        CIFAR_CLASSES,
        str(folder),
    )
    _check_pairs(ds)
    return ds


def _load_synthetic(size: int, seed: int = 0) -> Dataset:
    train_images, train_labels = synthetic.make_synthetic(size, seed=seed)
    test_images, test_labels = synthetic.make_synthetic(max(size // 4, 10), seed=seed + 1)
    return Dataset("synthetic", train_images, train_labels, test_images, test_labels, synthetic.CLASS_NAMES, "procedural")


def _check_pairs(ds: Dataset) -> None:
    for split, images, labels in (("train", ds.train_images, ds.train_labels), ("test", ds.test_images, ds.test_labels)):
        if len(images) != len(labels):
            raise DataFormatError(f"{ds.name} {split}: {len(images)} images but {len(labels)} labels ({ds.origin})")
        if labels.size and (labels.min() < 0 or labels.max() >= len(ds.class_names)):
            raise DataFormatError(
                f"{ds.name} {split}: labels span {labels.min()}..{labels.max()}, expected 0..{len(ds.class_names) - 1}"
            )


def load_dataset(name: str, data_dir: str | None = None, synthetic_size: int = 4096) -> Dataset:
    """Loads dataset `name`; raises ValueError listing the valid names for an unknown one."""
    if name == "fashion_mnist":
        return _load_idx(FASHION_MNIST, data_dir, FASHION_CLASSES, "fashion_mnist")
    if name == "mnist":
        return _load_mnist(data_dir)
    if name == "cifar10":
        return _load_cifar10(data_dir)
    if name == "synthetic":
        return _load_synthetic(synthetic_size)
    raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")


__all__ = ["Dataset", "DataFormatError", "DatasetNotFoundError", "DATASETS", "load_dataset"]
