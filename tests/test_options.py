"""Training options: weight decay, learning-rate schedules, dropout, global-average-pooling heads."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recorder.config import ConfigError, RunConfig, apply_overrides
from recorder.models import build_model
from recorder.run import record
from recorder.summary import summarize
from recorder.train import learning_rate_schedule, make_optimizer
from runfile.reader import open_run


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_weight_decay_shrinks_kernels_on_a_zero_gradient_problem(name):
    params = {"kernel": jnp.full((3, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    tx = make_optimizer(name, 0.1, 0.0, weight_decay=0.5)
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    if name == "sgd":  # W - lr * wd * W
        np.testing.assert_allclose(new["kernel"], 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)
    else:  # Adam normalises the decay gradient: a step of lr against the sign of W
        np.testing.assert_allclose(new["kernel"], 2.0 - 0.1, rtol=1e-5)
    np.testing.assert_array_equal(new["bias"], params["bias"])  # biases are not decayed
    untouched, _ = make_optimizer(name, 0.1, 0.0).update(zero, make_optimizer(name, 0.1, 0.0).init(params), params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(untouched))


def test_learning_rate_schedules():
    cos = learning_rate_schedule(1e-2, "cosine", 100)
    assert float(cos(0)) == pytest.approx(1e-2) and float(cos(50)) == pytest.approx(5e-3) and float(cos(100)) == 0
    step = learning_rate_schedule(1e-2, "step", 100)
    assert [float(step(k)) for k in (0, 49, 50, 74, 75, 99)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])
    assert float(learning_rate_schedule(1e-2, "constant", 100)(99)) == pytest.approx(1e-2)


def test_a_scheduled_run_logs_its_learning_rate(tmp_path):
    config = RunConfig(model="tiny_cnn", dataset="synthetic", synthetic_size=256, batch_size=64, steps=8,
                       lr_schedule="cosine", learning_rate=3e-3, analysis_probes=0, checkpoint_every=0)
    record(config, tmp_path / "cos.h5", show_progress=False, log=lambda s: None)
    with open_run(tmp_path / "cos.h5") as run:
        steps, values = run.scalars()["learning_rate"]
    assert steps.tolist() == list(range(1, 9))
    np.testing.assert_allclose(values, 3e-3 * 0.5 * (1 + np.cos(np.pi * np.arange(8) / 8)), rtol=1e-5)
    from recorder.run import resume

    with pytest.raises(ConfigError, match="uses lr_schedule=cosine, which spans its 8 planned steps"):
        resume(tmp_path / "cos.h5", ["steps=16"], show_progress=False, log=lambda s: None)


def test_dropout_is_off_at_evaluation_and_draws_new_masks_in_training():
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)), jnp.float32)
    with_dropout = build_model("learn_to_see", (28, 28, 1), 10, "relu", 0, {"dropout": 0.5})
    without = build_model("learn_to_see", (28, 28, 1), 10, "relu", 0)
    with_dropout.eval()
    np.testing.assert_array_equal(with_dropout(x), without(x))  # inference: no unit dropped, no rescaling
    with_dropout.train()
    a, b = with_dropout(x), with_dropout(x)
    assert not np.array_equal(a, b) and not np.array_equal(a, without(x))


def test_gap_head_averages_each_channel():
    gap = build_model("keras_fashion", (28, 28, 1), 10, "relu", 0, {"head": "gap"})
    summary = summarize(gap, (28, 28, 1))
    dense = next(m for m in summary["modules"] if m["path"] == "dense")
    assert dense["params"] == 64 * 64 + 64  # 64 channel means in, instead of 5·5·64
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 28, 28, 1)), jnp.float32)
    # the dense layer's input: conv2's pooled map, averaged over positions
    conv = jax.nn.relu(gap.conv_b(jax.nn.relu(gap.conv_a(x))[:, :26, :26].reshape(2, 13, 2, 13, 2, 32).max((2, 4))))
    pooled = conv[:, :10, :10].reshape(2, 5, 2, 5, 2, 64).max((2, 4)).mean((1, 2))
    np.testing.assert_allclose(gap(x), gap.logits(jax.nn.relu(gap.dense(pooled))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("weight_decay=-0.1", "weight_decay must be >= 0"),
    ("dropout=1.0", "dropout must be in [0, 1)"),
    ("lr_schedule=linear", "unknown lr_schedule 'linear'; expected one of: constant, cosine, step"),
    ("head=attention", "unknown head 'attention'; expected one of: default, flatten, gap"),
])
def test_bad_option_values_name_the_valid_ones(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(RunConfig(), [override])


def test_an_option_a_model_does_not_take_is_one_error():
    from recorder.plan import make_plan

    with pytest.raises(ConfigError, match=r"model 'vgg_bn' has no option downsample \(its options: dropout, head\)"):
        make_plan(dataclasses.replace(RunConfig(), model="vgg_bn", downsample="stride", dataset="synthetic"))


def _translate(image, dy, dx):
    """`image` [H, W, C] moved down by dy and right by dx pixels, zeros coming in."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                       max(-dx, 0):w - max(dx, 0)]
    return out


def test_augmentation_is_a_shift_or_flip_of_each_image_and_a_function_of_seed_and_step():
    from recorder.augment import MAX_SHIFT, augment, step_key

    x = np.random.default_rng(2).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    shifted = np.asarray(augment(jnp.asarray(x), step_key(0, 5), ("shift",)))
    moves = set()
    for image, out in zip(x, shifted):
        found = [(dy, dx) for dy in range(-MAX_SHIFT, MAX_SHIFT + 1) for dx in range(-MAX_SHIFT, MAX_SHIFT + 1)
                 if np.array_equal(out, _translate(image, dy, dx))]
        assert len(found) == 1
        moves.add(found[0])
    assert len(moves) > 3  # independent per image
    flipped = np.asarray(augment(jnp.asarray(x), step_key(0, 5), ("flip",)))
    mirrored = [np.array_equal(o, i[:, ::-1]) for i, o in zip(x, flipped)]
    assert all(m or np.array_equal(o, i) for m, i, o in zip(mirrored, x, flipped)) and 0 < sum(mirrored) < 16
    again = np.asarray(augment(jnp.asarray(x), step_key(0, 5), ("shift", "flip")))
    np.testing.assert_array_equal(again, np.asarray(augment(jnp.asarray(x), step_key(0, 5), ("shift", "flip"))))
    assert not np.array_equal(again, np.asarray(augment(jnp.asarray(x), step_key(0, 6), ("shift", "flip"))))
    assert not np.array_equal(again, np.asarray(augment(jnp.asarray(x), step_key(1, 5), ("shift", "flip"))))


def test_an_augmented_run_repeats_for_its_seed_and_differs_from_an_unaugmented_one(tmp_path):
    config = RunConfig(model="tiny_cnn", dataset="synthetic", synthetic_size=256, batch_size=64, steps=4,
                       augment=("shift", "flip"), analysis_probes=0, checkpoint_every=0)
    losses = []
    for name, c in (("a", config), ("b", config), ("plain", dataclasses.replace(config, augment=()))):
        record(c, tmp_path / f"{name}.h5", show_progress=False, log=lambda s: None)
        with open_run(tmp_path / f"{name}.h5") as run:
            losses.append(run.train_metrics().loss)
    np.testing.assert_array_equal(losses[0], losses[1])
    assert losses[0][0] != losses[2][0]  # the first batch was already augmented
    with pytest.raises(ConfigError, match="unknown augmentation 'rotate'; expected any of: shift, flip"):
        apply_overrides(config, ["augment=shift,rotate"])


def test_training_subset_is_class_balanced_and_leaves_the_test_split():
    from recorder.data import load_dataset
    from recorder.plan import training_subset

    full = load_dataset("synthetic", synthetic_size=512)
    sub = training_subset(full, 100)
    assert len(sub.train_labels) == 100 and np.bincount(sub.train_labels).tolist() == [10] * 10
    assert sub.test_images is full.test_images
    with pytest.raises(ConfigError, match="train_size=600 but synthetic has 512 training images"):
        training_subset(full, 600)


@pytest.mark.parametrize("name, files", [("optimizers", ("optimizers-adam", "optimizers-sgd")),
                                         ("overfitting", ("overfitting-plain", "overfitting-regularised"))])
def test_pair_experiments_record_and_compare(tmp_path, name, files):
    import importlib

    module = importlib.import_module(f"experiments.{name}")
    sets = ["dataset=synthetic", "synthetic_size=1024", "batch_size=32", "steps=4", "eval_every=2", "eval_size=40",
            "analysis_probes=16", "checkpoint_every=0"]
    argv = ["--out", str(tmp_path), "--no-progress"] + [x for s in sets for x in ("--set", s)]
    assert module.main(argv) == 0
    text = (tmp_path / name / "report.md").read_text()
    assert all(f in text for f in files) and (tmp_path / name / "conv1_side_by_side.gif").exists()
    configs = []
    for f in files:
        with open_run(tmp_path / f"{f}.h5") as run:
            configs.append(run.config)
    varied = {k for k in configs[0] if configs[0][k] != configs[1][k]}
    assert varied and varied <= set(module.PAIR.varied)  # only what the experiment varies differs
    assert module.main(argv + ["--set", f"{module.PAIR.varied[0]}=1"]) == 2


def test_cifar10_vgg_records_on_format_exact_cifar_files(tmp_path, isolated_home):
    """The experiment's config on small files in CIFAR-10's binary format (32x32 RGB, GAP head, augmented)."""
    from conftest import write_cifar_batch
    from experiments.configs import get_experiment

    folder = tmp_path / "c" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10)
    config = apply_overrides(get_experiment("cifar10_vgg"), [f"data_dir={tmp_path / 'c'}", "batch_size=25", "steps=3",
                                                            "analysis_probes=10", "eval_every=0", "checkpoint_every=0"])
    record(config, tmp_path / "cifar.h5", show_progress=False, log=lambda s: None)
    with open_run(tmp_path / "cifar.h5") as run:
        assert run.status == "completed" and run.layer_shape("conv6") == (10, 8, 8, 16)  # channels 0:16 of 64
        assert run.layer_channels("conv6") == list(range(16)) and run.layer_shape("conv1") == (10, 32, 32, 16)
        assert run.probes()[0].shape == (10, 32, 32, 3) and run.config["head"] == "gap"
        dense = next(m for m in run.summary["modules"] if m["path"] == "dense")
        assert dense["params"] == 64 * 128 + 128
