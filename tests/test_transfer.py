"""Architectures (stride, padding, VGG-BN, ResNet), stored weights, init_from, freeze and the transfer experiment."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx, serialization

from recorder.config import ConfigError, RunConfig, apply_overrides
from recorder.models import build_model
from recorder.plan import make_plan
from recorder.run import record
from recorder.summary import format_summary, summarize
from recorder.transfer import frozen_paths, head_path, initialise
from recorder.weights import WeightsError, flat_weights
from runfile.reader import open_run

TINY = RunConfig(experiment="t", model="tiny_cnn", dataset="synthetic", synthetic_size=512, batch_size=64, steps=6,
                 eval_every=3, analysis_probes=16, checkpoint_every=0)
QUIET = dict(show_progress=False, log=lambda s: None)


def _taps(summary):
    return {t["name"]: (tuple(t["shape"]), t["module"]) for t in summary["taps"]}


def test_stride_and_padding_options_change_the_shapes_the_summary_reports():
    strided = summarize(build_model("learn_to_see_strided", (28, 28, 1), 10, "tanh", 0), (28, 28, 1))
    assert _taps(strided)["conv2"] == ((14, 14, 4), "convs/1")  # stride 2 instead of the pool
    assert _taps(strided)["conv4"] == ((7, 7, 8), "convs/3")
    same = summarize(build_model("keras_fashion", (28, 28, 1), 10, "relu", 0, {"padding": "same"}), (28, 28, 1))
    valid = summarize(build_model("keras_fashion", (28, 28, 1), 10, "relu", 0), (28, 28, 1))
    assert _taps(same)["conv2"][0] == (14, 14, 64) and _taps(valid)["conv2"][0] == (11, 11, 64)
    with pytest.raises(ValueError, match="shrinks to 0 pixels at conv6"):
        build_model("learn_to_see", (28, 28, 1), 10, "tanh", 0, {"padding": "valid"})
    with pytest.raises(ValueError, match="has no option downsample"):
        build_model("vgg_bn", (28, 28, 1), 10, "relu", 0, {"downsample": "stride"})
    with pytest.raises(ConfigError, match="unknown padding 'full'"):
        apply_overrides(TINY, ["padding=full"])


def test_vgg_bn_and_resnet_summaries_count_trainable_and_running_statistics():
    vgg = summarize(build_model("vgg_bn", (28, 28, 1), 10, "relu", 0), (28, 28, 1))
    # convs: 9 * (1*16 + 16*16 + 16*32 + 32*32 + 32*64 + 64*64); BN: 2 * (16+16+32+32+64+64) each for
    # scale/offset (trainable) and mean/var (running); dense 576*128+128; logits 128*10+10
    convs = 9 * (16 + 256 + 512 + 1024 + 2048 + 4096)
    bn = 2 * (16 + 16 + 32 + 32 + 64 + 64)
    assert vgg["total_params"] == convs + bn + 576 * 128 + 128 + 1290
    assert vgg["total_state"] == bn
    assert [t["name"] for t in vgg["taps"]] == [f"conv{i}" for i in range(1, 7)]
    res = summarize(build_model("resnet8", (32, 32, 3), 10, "relu", 0), (32, 32, 3))
    taps = _taps(res)
    assert taps == {"stem": ((32, 32, 16), "stem_conv"), "block1": ((32, 32, 16), "blocks/0"),
                    "block2": ((16, 16, 32), "blocks/1"), "block3": ((8, 8, 64), "blocks/2")}
    rows = [m["path"] for m in res["modules"]]
    assert rows.index("stem_conv") < rows.index("blocks/0") < rows.index("logits") < rows.index("(model)")  # call order
    text = format_summary(res)
    assert "non-trainable" in text and f"{res['total_state']:,} non-trainable running statistics" in text
    assert head_path(res) == "logits"


def test_a_batchnorm_dropout_run_stores_weights_whose_statistics_change(tmp_path):
    config = dataclasses.replace(TINY, model="vgg_bn", activation="relu")
    record(config, tmp_path / "vgg.h5", **QUIET)
    with open_run(tmp_path / "vgg.h5") as run:
        assert run.weight_steps.tolist() == [0, 6]
        kinds = {s["path"]: s["kind"] for s in run.weight_specs}
        assert kinds["layers/0/bn/mean"] == "BatchStat" and kinds["layers/0/conv/kernel"] == "Param"
        assert not any("rngs" in p or "dropout" in p for p in kinds)  # RNG streams are not weights
        first, last = run.weights(0), run.weights(6)
        assert np.all(first["layers/0/bn/mean"] == 0) and np.any(last["layers/0/bn/mean"] != 0)
        assert not np.array_equal(first["layers/0/conv/kernel"], last["layers/0/conv/kernel"])


def test_init_from_a_run_file_and_freeze_keep_the_frozen_layers_bitwise(tmp_path):
    source = dataclasses.replace(TINY, model="vgg_bn", activation="relu")
    record(source, tmp_path / "src.h5", **QUIET)
    tuned = dataclasses.replace(source, seed=5, init_from=str(tmp_path / "src.h5"), freeze=("conv1", "layers/1"))
    record(tuned, tmp_path / "tuned.h5", **QUIET)
    with open_run(tmp_path / "src.h5") as a, open_run(tmp_path / "tuned.h5") as b:
        src, start, end = a.weights(6), b.weights(0), b.weights(6)
        assert "initialised from" in b.initialised_from and "re-initialised" not in b.initialised_from
    for path in src:
        assert np.array_equal(src[path], start[path]), path  # started from the source's final weights
        frozen = path.startswith(("layers/0/", "layers/1/"))
        assert np.array_equal(start[path], end[path]) == frozen, path  # statistics of frozen layers too


def test_freeze_and_init_from_errors_are_one_clear_message(tmp_path):
    record(TINY, tmp_path / "tiny.h5", **QUIET)
    with pytest.raises(ConfigError, match=r"freeze: no layer 'conv9'; name a recorded layer \(conv1, conv2\)"):
        make_plan(dataclasses.replace(TINY, freeze=("conv9",)))
    other = dataclasses.replace(TINY, model="keras_fashion", init_from=str(tmp_path / "tiny.h5"))
    with pytest.raises(ConfigError, match="does not fit this model's architecture: missing from the source: dense/"):
        make_plan(other)
    with pytest.raises(ConfigError, match="stores weights at steps 0, 6, not at 3"):
        make_plan(dataclasses.replace(TINY, init_from=f"{tmp_path / 'tiny.h5'}@3"))
    cli = subprocess.run([sys.executable, "-m", "emergence", "record", "tiny", "--out", str(tmp_path), "--name", "x",
                          "--no-progress", "--set", "model=keras_fashion", "--set", f"init_from={tmp_path / 'tiny.h5'}"],
                         capture_output=True, text=True)
    assert cli.returncode != 0
    errors = [line for line in cli.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "does not fit this model's architecture" in errors[0], cli.stderr
    assert not (tmp_path / "x.h5").exists()


def test_init_from_numpy_and_msgpack_weight_trees_and_a_new_head(tmp_path):
    """A weight tree saved by other code (NumPy archive, Flax msgpack) loads; a head with another class count
    is re-initialised and said so; everything else comes from the file."""
    donor = build_model("learn_to_see", (28, 28, 1), 10, "tanh", 7)
    values = {p: np.asarray(v) for p, (v, _) in flat_weights(donor).items()}
    np.savez(tmp_path / "w.npz", **values)
    (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(nnx.to_pure_dict(nnx.state(donor))))
    for source in ("w.npz", "w.msgpack"):
        model = build_model("learn_to_see", (28, 28, 1), 5, "tanh", 0)
        fresh = {p: np.asarray(v) for p, (v, _) in flat_weights(model).items()}
        note = initialise(model, str(tmp_path / source), summarize(model, (28, 28, 1)))
        assert "head 'logits' re-initialised: 10 outputs in the source, 5 here" in note and "logits/kernel (32, 10) -> (32, 5)" in note
        loaded = {p: np.asarray(v) for p, (v, _) in flat_weights(model).items()}
        for path in loaded:
            expect = fresh[path] if path.startswith("logits/") else values[path]
            assert np.array_equal(loaded[path], expect), (source, path)
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in values.items() if k != "convs/0/kernel"})
    model = build_model("learn_to_see", (28, 28, 1), 10, "tanh", 0)
    with pytest.raises(WeightsError, match="missing from the source: convs/0/kernel"):
        initialise(model, str(tmp_path / "bad.npz"), summarize(model, (28, 28, 1)))


def test_frozen_paths_resolve_taps_and_module_paths():
    summary = summarize(build_model("resnet8", (28, 28, 1), 10, "relu", 0), (28, 28, 1))
    assert frozen_paths(("stem", "block1", "logits"), summary) == ("stem_conv", "blocks/0", "logits")


def test_transfer_experiment_reports_which_layers_moved(tmp_path):
    from experiments.transfer import run

    result = run(tmp_path, source="synthetic", target="synthetic", freeze=("conv1", "conv2"),
                 overrides=["batch_size=64", "steps=6", "analysis_probes=16", "eval_every=3", "synthetic_size=512",
                            "checkpoint_every=0"], target_overrides=["seed=1"], show_progress=False, log=lambda s: None)
    table = result.table
    for layer in ("conv1", "conv2"):
        assert table["frozen"][layer]["weight_change"] == 0.0
        assert table["all"][layer]["weight_change"] > 0
    assert table["frozen"]["conv3"]["weight_change"] > 0
    assert table["frozen"]["conv1"]["cka_to_start"] == pytest.approx(1.0, abs=1e-6)  # same weights, same images
    text = result.report.read_text()
    assert "| conv1 | 0 |" in text and (result.report.parent / "conv1_side_by_side.gif").exists()
    with open_run(result.runs["scratch"]) as scratch:
        assert scratch.initialised_from == "" and scratch.config["init_from"] is None


def test_a_damaged_weight_file_is_one_clear_error(tmp_path):
    model = build_model("tiny_cnn", (28, 28, 1), 10, "tanh", 0)
    for name in ("w.npz", "w.msgpack"):
        (tmp_path / name).write_bytes(b"not weights")
        with pytest.raises(WeightsError, match=rf"init_from: {tmp_path / name} is not a (NumPy \.npz archive|Flax msgpack)"):
            initialise(model, str(tmp_path / name), summarize(model, (28, 28, 1)))
