"""runfile/checksum.py against HDF5's own Fletcher-32 filter, byte for byte: HDF5's function through ctypes and
the numpy closed form alike."""

import h5py
import numpy as np
import pytest

from runfile.checksum import fletcher32, fletcher32_numpy, native, with_checksum

rng = np.random.default_rng(0)
CASES = [b"", b"\x00", b"\x01", b"\xff\xff", b"\xff\xff\xff", bytes(1000), b"\xff" * 600_000,
         b"\x00" * 719 + b"\x01"] + [rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                                    for n in (1, 3, 719, 720, 721, 1439, 4096, 100_001, 600_000)]


@pytest.mark.parametrize("data", CASES, ids=lambda d: f"{len(d)} bytes")
def test_the_chunk_is_what_hdf5s_filter_stores(tmp_path, data):
    if not data:
        assert fletcher32(data) == fletcher32_numpy(data) == 0
        return
    array = np.frombuffer(data, np.uint8)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("x", data=array, chunks=(len(array),), fletcher32=True)
        stored = f["x"].id.read_direct_chunk((0,))[1]
    assert with_checksum(array).tobytes() == stored == with_checksum(data).tobytes()
    assert int.from_bytes(stored[-4:], "little") == fletcher32_numpy(data) == fletcher32(array)


def test_the_writer_uses_hdf5s_own_function_here():
    assert native()  # h5py's libhdf5 exports it (Linux wheels, this machine); elsewhere the numpy form is used


def test_a_strided_or_multibyte_array_is_checksummed_as_its_contiguous_bytes():
    a = rng.standard_normal((7, 33)).astype(np.float32)
    view = a[:, ::2]
    assert fletcher32(view) == fletcher32_numpy(view) == fletcher32(np.ascontiguousarray(view).tobytes())


def test_a_flipped_byte_changes_the_checksum():
    data = bytearray(rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    before = fletcher32(data)
    for position in (0, 1, 4999, 9999):
        data[position] ^= 0x10
        assert fletcher32(data) != before and fletcher32_numpy(data) != before
        data[position] ^= 0x10


def test_without_hdf5s_function_the_numpy_form_gives_the_same_chunks(monkeypatch):
    import runfile.checksum as checksum

    data = rng.integers(0, 256, 100_001, dtype=np.uint8)
    expected = with_checksum(data).tobytes()
    monkeypatch.setattr(checksum, "_loaded_hdf5", lambda: [])  # a libhdf5 this module cannot find
    checksum._native.cache_clear()
    try:
        assert not checksum.native() and with_checksum(data).tobytes() == expected
    finally:
        monkeypatch.undo()
        checksum._native.cache_clear()
    assert checksum.native()
