"""Fletcher-32 computed on the device (recorder/fletcher.py): the very number HDF5's filter stores, for any
bytes; the device lays the rows out as finished chunks, which the writer writes as they are (no copy, no
checksum of its own) once the first has checked against its own, and ignores where the stored bytes are not
the bytes they hold."""

import dataclasses
import warnings

import h5py
import jax
import numpy as np
import pytest

from recorder.blocks import CHUNKS
from recorder.fletcher import fletcher32, on_device
from recorder.loop import TrainingLoop
from recorder.plan import make_plan
from runfile.checksum import fletcher32 as host_fletcher32
from runfile.reader import open_run
from runfile.verify import verify
from runfile.writer import H5RunWriter
from conftest import tiny_config
from test_checksum import CASES
from test_writer import _layout

device_fletcher32 = jax.jit(fletcher32)
rng = np.random.default_rng(1)


@pytest.mark.parametrize("data", CASES, ids=lambda d: f"{len(d)} bytes")
def test_the_devices_checksum_of_any_bytes_is_hdf5s(data):
    array = np.frombuffer(data, np.uint8)
    assert int(device_fletcher32(array)) == host_fletcher32(array)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int32])
def test_the_devices_checksum_of_an_array_covers_its_stored_bytes(dtype):
    for shape in [(10, 26, 26, 8), (3, 3, 1, 8), (7,), (0,), (70_001,)]:  # the last spans several word groups
        a = (rng.standard_normal(shape) * 100).astype(dtype)
        assert int(device_fletcher32(a)) == host_fletcher32(a), (shape, dtype)
    assert int(device_fletcher32(np.full(70_000, 0xFFFF, np.uint16))) == host_fletcher32(np.full(70_000, 0xFFFF, np.uint16))


def test_checksums_go_to_the_device_only_for_uncompressed_frames_beside_an_accelerator():
    assert on_device("auto", "none", "gpu") and not on_device("auto", "none", "cpu")
    assert on_device("device", "none", "cpu") and not on_device("host", "none", "gpu")
    assert not on_device("device", "gzip", "gpu")  # a deflated chunk's checksum covers the deflated bytes


VALUES = rng.standard_normal((3, 2, 4, 4, 2))


def _chunks(values, checksum=host_fletcher32):
    """The rows of `values` as a device lays them out (recorder/blocks.py `CHUNKS`): in one buffer, each row's
    bytes then `checksum` of it, little-endian, then 8 bytes of some other array."""
    rows = values.reshape(len(values), -1).view(np.uint8)
    buffer = np.full((len(rows), rows.shape[1] + 12), 0xAB, np.uint8)
    buffer[:, :-12] = rows
    buffer[:, -12:-8] = np.asarray([checksum(row) for row in rows], "<u4").reshape(-1, 1).view(np.uint8)
    return buffer[:, :-8]


def _write(path, checksum, dtype=np.float16, chunks_of=None):
    layout = dataclasses.replace(_layout(), compression="none", dtype="float16")
    values = VALUES.astype(dtype)
    chunks = None if checksum is None else (chunks_of or _chunks)(values, checksum)
    device_rows = chunks is not None and chunks_of is None and values.dtype == np.float16  # views of the chunks
    rows = chunks[:, :-4].view(dtype).reshape(values.shape) if device_rows else values
    writer = H5RunWriter(path, layout)
    column = writer._col["layers/conv1/activations"]
    column._checked = _counting(column._checked)
    writer.write_frames([0, 1, 2], {"conv1": rows, "logits": np.zeros((3, 2, 3), np.float32)},
                        chunks=None if chunks is None else {"conv1": chunks})
    writer.close()
    return values, column.trusted_checksums, column._checked.rows


def _counting(checked):
    """`_Column._checked`, counting the rows the writer copied and checksummed itself."""
    def call(rows):
        call.rows += len(rows)
        return checked(rows)
    call.rows = 0
    return call


def _stored(path):
    with h5py.File(path, "r") as f:
        ds = f["layers/conv1/activations"]
        return [ds.id.read_direct_chunk((i, 0, 0, 0, 0))[1] for i in range(ds.shape[0])], ds[...]


def test_the_writer_writes_given_chunks_as_they_are_and_checks_the_first(tmp_path):
    values, trusted, copied = _write(tmp_path / "given.h5", host_fletcher32)
    _, host_trusted, host_copied = _write(tmp_path / "host.h5", None)
    assert trusted is True and host_trusted is None
    assert copied == 0 and host_copied == 3  # the given chunks went to the file from the caller's buffer
    chunks, stored = _stored(tmp_path / "given.h5")
    assert chunks == _stored(tmp_path / "host.h5")[0]  # byte for byte what the host writes alone
    np.testing.assert_array_equal(stored, values)
    with open_run(tmp_path / "given.h5") as run:
        assert not verify(run).damaged


def test_a_wrong_checksum_is_refused_with_a_warning_and_the_hosts_is_stored(tmp_path):
    with pytest.warns(RuntimeWarning, match="Fletcher-32 of a row is .* the host computes them from now on"):
        values, trusted, copied = _write(tmp_path / "wrong.h5", lambda row: host_fletcher32(row) ^ 1)
    assert trusted is False and copied == 3
    with open_run(tmp_path / "wrong.h5") as run:
        assert not verify(run).damaged
        np.testing.assert_array_equal(run.activations("conv1", [0, 1, 2]), values)


def test_chunks_holding_other_bytes_than_their_rows_are_refused(tmp_path):
    """The chunk's checksum is right for its bytes, but they are not the row's: the row is stored."""
    def shifted(values, checksum):
        return _chunks(values + np.asarray(1, values.dtype), checksum)

    with pytest.warns(RuntimeWarning, match="holds other bytes than the row"):
        values, trusted, copied = _write(tmp_path / "other.h5", host_fletcher32, chunks_of=shifted)
    assert trusted is False and copied == 3
    with open_run(tmp_path / "other.h5") as run:
        np.testing.assert_array_equal(run.activations("conv1", [0, 1, 2]), values)


def test_chunks_of_the_wrong_shape_are_one_clear_error(tmp_path):
    layout = dataclasses.replace(_layout(), compression="none", dtype="float16")
    values = VALUES.astype(np.float16)
    writer = H5RunWriter(tmp_path / "bad.h5", layout)
    with pytest.raises(ValueError, match=r"must be uint8 \[rows, bytes \+ 4\], got uint8 \[3, 128\]"):
        writer.write_frames([0, 1, 2], {"conv1": values}, chunks={"conv1": _chunks(values)[:, :-4]})
    assert writer._staged_bytes == 0 and all(not column.staged_bytes for column in writer._col.values())
    writer.close()


def test_checksums_of_other_bytes_than_the_stored_ones_are_ignored(tmp_path):
    """float32 rows stored as float16: the caller's checksum is of the float32 bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, trusted, copied = _write(tmp_path / "cast.h5", host_fletcher32, np.float32)
    assert trusted is None and copied == 3
    with open_run(tmp_path / "cast.h5") as run:
        assert not verify(run).damaged


def test_a_loop_with_device_checksums_writes_the_file_the_host_would(tmp_path):
    """Blocks of 8 on this CPU with the checksums computed by XLA, as beside a GPU: every chunk verifies
    and holds the bytes the host-checksummed run holds."""
    paths = {}
    for place in ("device", "host"):
        plan = make_plan(tiny_config(steps=20, block_steps=8, compression="none", checksums=place, eval_every=0,
                                     checkpoint_every=0, analysis_probes=0))
        rec = plan.recorder(tmp_path / f"{place}.h5")
        loop = TrainingLoop(plan, rec, evaluate=False)
        assert loop.blocks.checksums == (place == "device")
        assert (CHUNKS in loop.blocks.buffers()[0]) == (place == "device")
        with rec:
            loop.compile()
            loop.start()
            loop.run(20)
            rec.wait()
            column = rec._writer.writer._col[f"layers/{plan.capture.layers[0].name}/activations"]
            assert column.trusted_checksums is (True if place == "device" else None)  # used, and right
        paths[place] = rec.path
    with open_run(paths["device"]) as a, open_run(paths["host"]) as b:
        assert not verify(a).damaged and a.steps.tolist() == b.steps.tolist() == list(range(21))
        for layer in a.layers:  # the same program but for the checksums: the same frames
            np.testing.assert_array_equal(a.activations(layer, list(range(21))), b.activations(layer, list(range(21))))


def test_a_loop_of_ones_own_gets_device_checksums_with_its_packed_frames(tmp_path):
    """Frames handed over one by one and packed 8 per transfer (recorder/batching.py): with the checksums
    computed in the packing, as beside a GPU, the file verifies and holds the host-checksummed run's bytes."""
    from flax import nnx
    import jax.numpy as jnp

    from recorder import Capture, Recorder
    from test_recorder_api import Small, _probes

    model, probes = Small(nnx.Rngs(2)), _probes()
    x = jnp.asarray(probes.images, jnp.float32) / 255.0
    capture = Capture.nnx(model, x)
    frames = [capture(model, x * (1 + s / 10)) for s in range(17)]
    for place in ("device", "host"):
        with Recorder(tmp_path / f"{place}.h5", probes, capture, planned_steps=16, activation="tanh",
                      compression="none") as rec:
            assert rec._frames.checksums is False  # this CPU: the host computes them unless asked
            rec._frames.checksums, rec._frames.gap = place == "device", 60.0
            for s, frame in enumerate(frames):
                rec.write(s, frame, {"loss": 1.0, "accuracy": 0.5} if s else None)
            rec.wait()
            assert rec._writer.writer._col["layers/act/activations"].trusted_checksums is (
                True if place == "device" else None)
    with open_run(tmp_path / "device.h5") as a, open_run(tmp_path / "host.h5") as b:
        assert not verify(a).damaged and a.steps.tolist() == list(range(17))
        np.testing.assert_array_equal(a.activations("act"), b.activations("act"))
    assert _stored_all(tmp_path / "device.h5") == _stored_all(tmp_path / "host.h5")


def _stored_all(path):
    with h5py.File(path, "r") as f:
        ds = f["layers/act/activations"]
        return [ds.id.read_direct_chunk((i,) + (0,) * (ds.ndim - 1))[1] for i in range(ds.shape[0])]


def test_packed_frames_carry_the_checksums_of_their_frame_arrays_and_none_of_their_analysis_entries():
    """An analysed frame's Grams are stored as their upper triangle, not as computed: their checksums would be
    device work the writer never uses, so neither the own loop's packing nor a block computes them."""
    import jax.numpy as jnp

    from recorder.batching import layout, pack
    from recorder.blocks import chunk_columns, pack_frame, unpack

    frames = [{"conv1": jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float16),
               "logits": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32),
               "analysis/gram/conv1": jnp.asarray(rng.normal(size=(6, 6)), jnp.float32),
               "analysis/stats/conv1": jnp.asarray(rng.normal(size=(7,)), jnp.float32)} for _ in range(3)]
    frame_layout = layout(frames[0])
    packed = jax.device_get(pack(frames, True))
    stacked = jax.device_get({d: jnp.stack([pack_frame(f, frame_layout, True)[d] for f in frames]) for d in packed})
    packed = {d: b.reshape(len(frames), -1) for d, b in packed.items()}
    for buffers in (packed, stacked):
        chunks = chunk_columns(buffers, frame_layout)
        assert sorted(chunks) == ["conv1", "logits"] and sorted(buffers) == [CHUNKS, "float32"]
        arrays = unpack(buffers, frame_layout)
        for key, rows in chunks.items():  # each row: the array's bytes, then HDF5's checksum of them
            for f, row, array in zip(frames, rows, arrays[key]):
                value = np.asarray(f[key])
                assert row.tobytes() == value.tobytes() + host_fletcher32(value).to_bytes(4, "little")
                np.testing.assert_array_equal(array, value)
                assert np.shares_memory(array, buffers[CHUNKS])
        for key in ("analysis/gram/conv1", "analysis/stats/conv1"):  # not chunked: the per-dtype buffer
            np.testing.assert_array_equal(arrays[key], np.stack([np.asarray(f[key]) for f in frames]))
