import hashlib
import shutil
import tarfile

import numpy as np
import pytest

from recorder.data import DatasetNotFoundError, load_dataset
from recorder.data import sources
from recorder.data.formats import DataFormatError, read_cifar_batch, read_idx
from recorder.data.sources import RemoteFile, Source
from recorder.data.synthetic import make_synthetic
from recorder.probes import MNIST_REFERENCE_PROBES, choose_probes
from tests.conftest import write_cifar_batch, write_idx, write_mnist_like


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_gzipped_and_raw(tmp_path, gz):
    arr = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=gz)
    np.testing.assert_array_equal(read_idx(path), arr)


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    path = write_idx(tmp_path / "short", np.zeros((4, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="header says shape"):
        read_idx(path)


def test_cifar_binary_keeps_channel_order(tmp_path):
    images = np.zeros((3, 32, 32, 3), np.uint8)
    images[0, :, :, 0] = 255  # pure red
    images[1, :, :, 2] = 255  # pure blue
    images[2, 5, 7] = (1, 2, 3)
    path = write_cifar_batch(tmp_path / "b.bin", images, np.array([3, 9, 0]))
    got, labels = read_cifar_batch(path)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, [3, 9, 0])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataFormatError, match="record size"):
        read_cifar_batch(path)


def test_load_mnist_from_data_dir_in_both_forms(tmp_path, isolated_home):
    for gz in (True, False):
        folder = tmp_path / f"mnist_{gz}"
        arrays = write_mnist_like(folder, gz=gz)
        ds = load_dataset("mnist", data_dir=str(folder))
        assert ds.train_images.shape == (64, 28, 28, 1) and ds.train_images.dtype == np.uint8
        np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
        np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train-images-idx3-ubyte"])


def test_load_cifar10_from_extracted_folder(tmp_path, isolated_home):
    folder = tmp_path / "c" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), np.arange(4))
    ds = load_dataset("cifar10", data_dir=str(tmp_path / "c"))
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    assert ds.class_names[0] == "airplane"


def test_missing_dataset_is_a_clear_error(tmp_path, isolated_home):
    with pytest.raises(DatasetNotFoundError, match="downloads are off.*--data-dir"):
        load_dataset("mnist")
    with pytest.raises(DatasetNotFoundError, match=f"no mnist files in {tmp_path}"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="fashion_mnist, mnist, cifar10, synthetic"):
        load_dataset("imagenet")


def _served_source(tmp_path, sha_override=None):
    served = tmp_path / "mirror"
    write_mnist_like(served)
    files = tuple(
        RemoteFile(p.name, sha_override or hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in sorted(served.iterdir())
    )
    return Source("mnist", files, ("file:///nonexistent/", served.as_uri() + "/"), tuple(f.name for f in files), "get it")


def test_download_verifies_checksum_and_caches(tmp_path, isolated_home):
    source = _served_source(tmp_path)
    folder = sources.locate(source, download=True)  # first mirror fails, second serves the files
    assert folder == isolated_home / "cache" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in source.files)
    shutil.rmtree(tmp_path / "mirror")  # now cached: no mirror needed
    assert sources.locate(source, download=True) == folder


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, isolated_home):
    source = _served_source(tmp_path, sha_override="0" * 64)
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        sources.locate(source, download=True)
    assert not any((isolated_home / "cache" / "mnist").iterdir())


def test_download_unpacks_archives(tmp_path, isolated_home):
    payload = tmp_path / "payload" / "cifar-10-batches-bin"
    payload.mkdir(parents=True)
    (payload / "test_batch.bin").write_bytes(b"x")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "a.tar.gz", "w:gz") as tar:
        tar.add(payload, arcname="cifar-10-batches-bin")
    digest = hashlib.sha256((mirror / "a.tar.gz").read_bytes()).hexdigest()
    source = Source("cifar10", (RemoteFile("a.tar.gz", digest, 1),), (mirror.as_uri(),),
                    ("cifar-10-batches-bin/test_batch.bin",), "get it", unpack=True)
    folder = sources.locate(source, download=True)
    assert (folder / "cifar-10-batches-bin" / "test_batch.bin").read_bytes() == b"x"


def test_synthetic_is_deterministic_and_balanced():
    a, la = make_synthetic(100, seed=3)
    b, lb = make_synthetic(100, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(la).tolist() == [10] * 10
    # classes differ: the mean image of each class is distinct from every other
    means = np.stack([a[la == c].mean(0).ravel() for c in range(10)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dist[~np.eye(10, dtype=bool)].min() > 100


def test_probes_default_to_one_per_class_and_mnist_reference(tmp_path, isolated_home):
    ds = load_dataset("synthetic", synthetic_size=200)
    idx = choose_probes(ds)
    assert ds.test_labels[idx].tolist() == list(range(10))
    assert choose_probes(ds, (3, 1)).tolist() == [3, 1]
    with pytest.raises(ValueError, match="out of range"):
        choose_probes(ds, (10**6,))


@pytest.mark.parametrize("n_test", [10000, 9990])
def test_mnist_probes_are_the_reference_set_on_the_full_test_split(tmp_path, isolated_home, n_test):
    """On MNIST's 10,000-image test split the probes are the reference experiment's images (one per digit, in
    order); on any other split of that name, the first image of each class."""
    labels = (np.arange(n_test) * 7 + 3) % 10  # first of each class: not where the reference set is
    labels[list(MNIST_REFERENCE_PROBES)] = np.arange(10)
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, arr in {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
                      "train-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
                      "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                      "t10k-labels-idx1-ubyte": labels.astype(np.uint8)}.items():
        write_idx(folder / f"{name}.gz", arr)
    ds = load_dataset("mnist", data_dir=str(folder))
    idx = choose_probes(ds)
    assert ds.test_labels[idx].tolist() == list(range(10))
    first_of_class = [int(np.flatnonzero(labels == c)[0]) for c in range(10)]
    assert idx.tolist() == (list(MNIST_REFERENCE_PROBES) if n_test == 10000 else first_of_class)
    assert first_of_class != list(MNIST_REFERENCE_PROBES)
