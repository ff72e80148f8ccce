"""Blocks of steps (recorder/blocks.py): one dispatch and one writer item for several steps, no device->host
transfer between blocks, and the crash guarantees kept: a kill mid-block, Ctrl-C between blocks and resume
all end in the uninterrupted run, bit for bit. On the CPU a block is one step by default; these tests ask
for 8 (`block_steps=8`), the looped executable a GPU runs."""

import signal
import threading

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from experiments import get_experiment
from recorder.config import apply_overrides
from recorder.blocks import ANALYSE, FRAME, TRAIN, Block, BlockStep, _leading_rows, block_size, first_rows, unpack
from recorder.loop import TrainingLoop
from recorder.plan import make_plan
from recorder.run import record
from runfile.identity import differences
from runfile.reader import open_run
from runfile.verify import verify
from test_reliability import cli, finish, frames_of, start, wait_until

BLOCKS = ["--set", "steps=120", "--set", "checkpoint_every=25", "--set", "eval_every=20", "--set", "block_steps=8",
          "--set", "dropout=0.2"]  # a dropout stream: its key is checkpointed and restored too


def test_block_size_from_bytes_and_backend():
    assert block_size(10_000, 0, "cpu") == 1  # XLA's CPU backend runs loop bodies slowly: one step a dispatch
    assert block_size(10_000, 0, "gpu") == 64 and block_size(600_000, 0, "gpu") == 55
    assert block_size(10_000, 5, "cpu") == 5 and block_size(10**9, 0, "gpu") == 1


def test_plan_rows_slots_and_unpacking():
    state = {"w": jnp.zeros(3)}
    update = lambda st, x, idx, step: (st, {"loss": jnp.sum(x[idx]) * step, "accuracy": 0.0, "finite": True})
    blocks = BlockStep(update, lambda *a: {}, 4, state, (jnp.arange(10.0),), 2)
    plan = blocks.plan([5, 6, 7], np.array([[0, 1], [2, 3], [4, 5]]), [TRAIN, FRAME, ANALYSE])
    assert plan.shape == (4, 6)
    assert plan[:3, 2].tolist() == [5, 6, 7] and plan[:3, 4].tolist() == [4, 0, 1]  # 4: the discarded slot
    assert plan[:3, 5].tolist() == [4, 4, 0]
    _, metrics, _, _ = blocks(state, (jnp.arange(10.0),), plan, 3)
    names = blocks.metric_names
    rows = np.asarray(metrics)
    assert rows[:3, names.index("loss")].tolist() == [5.0, 30.0, 63.0]  # (0+1)*5, (2+3)*6, (4+5)*7
    assert rows[3].tolist() == [0.0, 0.0, 0.0]  # the fourth step never ran
    layout = (("a", (2,), "float32"), ("b", (1, 2), "float32"), ("c", (), "float16"))
    buffers = {"float32": np.arange(8, dtype=np.float32).reshape(2, 4), "float16": np.ones((2, 1), np.float16)}
    out = unpack(buffers, layout)
    assert out["a"].tolist() == [[0, 1], [4, 5]] and out["b"].tolist() == [[[2, 3]], [[6, 7]]]
    assert out["c"].shape == (2,) and np.shares_memory(out["b"], buffers["float32"])


def test_a_blocks_frames_leave_the_device_in_a_few_shapes_and_only_their_rows_are_read():
    """The frame buffers [K + 1, E] are cut on the device to the frames' count rounded up to a power of
    two: a few compiled shapes however the count varies (each new count compiled before), and the Block
    reads only its own rows."""
    layout = (("a", (2,), "float32"),)
    buffer = jnp.arange(9 * 2, dtype=jnp.float32).reshape(9, 2)  # K = 8
    before = _leading_rows._cache_size()
    cut = {n: first_rows({"float32": buffer}, n) for n in range(10)}
    assert cut[0] == {} and {n: c["float32"].shape[0] for n, c in cut.items() if n} == {
        1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8, 9: 9}
    assert cut[9]["float32"] is buffer  # nothing to cut: no dispatch
    assert _leading_rows._cache_size() - before == 4  # rows 1, 2, 4, 8: one executable each
    block = Block((1, 2, 3), np.zeros((8, 1), np.float32), ("loss",), (1, 2, 3),
                  {"float32": np.asarray(cut[3]["float32"])}, layout)
    assert block.frame_arrays()["a"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert block.frame_nbytes == 3 * 2 * 4


@pytest.mark.parametrize("k", [8, 1])
def test_a_recorded_loop_compiles_nothing_once_training_has_started(tmp_path, k):
    """Every executable of a recorded run with blocks, the cuts of its frame buffers included, is compiled
    before training: a log schedule gives the blocks 1 to 8 frames, and no count compiles during training
    (an eager slice per count did, 25 ms each on the loop's thread). With K = 1, the analysed steps' second
    dispatch (their Grams and statistics) is compiled before training too."""
    from jax import monitoring

    config = apply_overrides(get_experiment("tiny"), [f"block_steps={k}", "steps=120", "schedule=log:40"])
    plan = make_plan(config)
    rec = plan.recorder(tmp_path / "run.h5", overwrite=True)
    loop = TrainingLoop(plan, rec, evaluate=False)
    loop.compile()
    loop.start()
    compiled, counting = [], [True]
    monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiled.append(name) if counting[0] and name.endswith("backend_compile_duration") else None)
    try:
        loop.run(120)
        jax.block_until_ready(loop.state)
    finally:
        counting[0] = False
    rec.close()
    with open_run(tmp_path / "run.h5") as run:
        per_block = np.bincount((run.steps[1:] - 1) // 8)
        assert len(set(per_block.tolist())) >= 3  # frames per block vary
        assert len(run.analysis_steps) > 5 and not verify(run).damaged
    assert compiled == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("blocks")
    proc = start(out, "run", sets=BLOCKS)
    assert finish(proc, 300) == 0, proc.stderr_text
    return out / "run.h5"


def test_blocks_record_what_single_steps_record(reference, tmp_path):
    config = apply_overrides(get_experiment("tiny"), [s for s in BLOCKS if s != "--set"] + ["block_steps=1"])
    single = record(config, tmp_path / "one.h5", show_progress=False, log=lambda s: None)
    assert single.traces["block_step"] == 2  # K = 1: one straight-line executable per kind used (frame, analysis)
    with open_run(reference) as a, open_run(single.path) as b:
        assert a.steps.tolist() == b.steps.tolist() == list(range(121))
        assert a.analysis_steps.tolist() == b.analysis_steps.tolist()
        assert a.train_metrics().step.tolist() == list(range(1, 121))
        assert a.eval_metrics().step.tolist() == b.eval_metrics().step.tolist() == [20, 40, 60, 80, 100, 120]
        # two XLA programs: float32 last bits, which training then amplifies slowly
        np.testing.assert_allclose(a.train_metrics().loss[:20], b.train_metrics().loss[:20], rtol=1e-6)
        np.testing.assert_allclose(a.train_metrics().loss, b.train_metrics().loss, rtol=1e-3)
        for layer in a.layers:  # a float16 unit or two in the last place early on
            x, y = (r.activations(layer, [0, 1, 10]).astype(np.float32) for r in (a, b))
            np.testing.assert_allclose(x, y, rtol=2 ** -9, atol=1e-6)
            np.testing.assert_allclose(a.activations(layer, [120]), b.activations(layer, [120]), rtol=0.02, atol=2e-3)
        np.testing.assert_allclose(a.grams("conv2", [1]), b.grams("conv2", [1]), rtol=1e-4, atol=1e-5)
        assert sorted(a.scalars()) == sorted(b.scalars()) and "conv1/grad_norm" in a.scalars()
        steps, values = a.scalars()["conv1/grad_norm"]
        assert steps.tolist() == list(range(1, 121)) and np.all(values > 0)


@pytest.fixture
def host_reads(monkeypatch):
    """Counts every read of a device array's value (np.asarray, float(), .item(), jax.device_get), every
    host copy started and every block_until_ready made on the main thread. (JAX's transfer guard does the
    same on a GPU; on the CPU backend a device array already lives in host memory, so the guard never fires.)"""
    from jax._src.array import ArrayImpl

    reads = []
    value = ArrayImpl._value

    def noted(name, original):
        def wrapper(self, *args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                reads.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(ArrayImpl, "_value", property(noted("value", value.fget)))
    monkeypatch.setattr(ArrayImpl, "copy_to_host_async", noted("copy", ArrayImpl.copy_to_host_async))
    monkeypatch.setattr(ArrayImpl, "block_until_ready", noted("wait", ArrayImpl.block_until_ready))
    return reads


def test_no_device_to_host_transfer_between_blocks(tmp_path, host_reads):
    """The loop's main thread makes none and waits for nothing (the writer thread copies everything)."""
    plan = make_plan(tiny_config(steps=40, block_steps=8, eval_every=10, checkpoint_every=0))
    rec = plan.recorder(tmp_path / "g.h5")
    loop = TrainingLoop(plan, rec)
    with rec:
        loop.start()
        rec.wait()
        with jax.transfer_guard_device_to_host("disallow"):
            loop.run(40)
        assert host_reads == []
        rec.wait()
        assert rec.seconds_per_step is not None and rec.latest_train["step"] == 40
    with open_run(tmp_path / "g.h5") as run:
        assert run.steps.tolist() == list(range(41)) and run.train_metrics().step.tolist() == list(range(1, 41))
        assert run.eval_metrics().step.tolist() == [10, 20, 30, 40]
    float(loop.state.params["conv_a"]["kernel"][...].sum())  # what a loop that reads its loss every step does
    assert host_reads == ["value"]


def test_a_kill_mid_block_repairs_and_resumes_to_the_same_file(reference, tmp_path, capsys):
    path = tmp_path / "run.h5"
    proc = start(tmp_path, "run", sets=BLOCKS)
    wait_until(proc, lambda: frames_of(path) >= 50)
    proc.send_signal(signal.SIGKILL)
    finish(proc, 30)
    with open_run(path) as run:
        assert run.state()[0] == "killed"
    code, _, err = cli(capsys, "resume", str(path), "--no-progress")
    assert code == 0, err
    assert differences(reference, path) == []


def test_ctrl_c_stops_between_blocks_and_resumes_to_the_same_file(reference, tmp_path, capsys):
    path = tmp_path / "run.h5"
    proc = start(tmp_path, "run", sets=BLOCKS)
    wait_until(proc, lambda: frames_of(path) >= 30)
    proc.send_signal(signal.SIGINT)
    assert finish(proc, 60) == 130, proc.stderr_text[-3000:]
    with h5py.File(path, "r") as f:
        stopped = int(f["train/step"][-1])
        assert f["status"][()] == b"interrupted" and f["frames/step"][-1] == stopped  # the whole block is written
        assert f["train/step"][()].tolist() == list(range(1, stopped + 1))
    code, _, err = cli(capsys, "resume", str(path), "--no-progress")
    assert code == 0 and f"at step {stopped} of 120 from its checkpoint" in err
    assert differences(reference, path) == []


def test_a_block_is_one_writer_item_and_one_row_group(tmp_path):
    """What a loop of one's own hands over: Block rows land as the per-step path would write them."""
    plan = make_plan(tiny_config(steps=8, block_steps=8, eval_every=0, analysis_probes=0))
    rec = plan.recorder(tmp_path / "b.h5")
    loop = TrainingLoop(plan, rec, evaluate=False)
    submitted = []
    original = rec._writer.submit
    rec._writer.submit = lambda call, *args: (submitted.append(call.__name__), original(call, *args))[1]
    with rec:
        loop.start()
        loop._run_block(1, 8)
        loop.step = 8
    assert submitted.count("_block") == 1
    with open_run(tmp_path / "b.h5") as run:
        assert run.steps.tolist() == list(range(9))
        assert len(set(run.frame_wall_time[1:].tolist())) == 1  # the block's frames reached the host together
    with pytest.raises(ValueError, match="1 to 8 steps"):
        loop.blocks.plan(range(9), np.zeros((9, 32), np.int32), [TRAIN] * 9)
    assert isinstance(Block((1,), np.zeros((1, 3), np.float32), ("accuracy", "finite", "loss")), Block)


def test_a_blocks_batches_are_the_steps_own_within_and_across_epochs():
    plan = make_plan(tiny_config(steps=40))  # 256 images in batches of 32: 8 steps an epoch
    loop = TrainingLoop(plan, None)
    assert plan.per_epoch == 8
    for first, last in [(1, 8), (5, 12), (3, 3), (7, 25), (9, 16)]:
        np.testing.assert_array_equal(loop._batches(first, last), np.stack([loop._batch(s) for s in range(first, last + 1)]))
    assert not np.array_equal(loop._batches(1, 1), loop._batches(9, 9))  # each epoch its own shuffle
