"""Your own Flax NNX training loop, recorded through the public API (`recorder.Capture` + `recorder.Recorder`).

A CNN and an Optax loop written the way the Flax examples write them, with what the built-in loop does not
have: on-device data augmentation (random shifts and flips, reproducible from the seed) and a warm-up +
cosine learning-rate schedule, logged as an extra scalar series. The frame is captured inside the same
jitted step that trains.

    .venv/bin/python -m experiments.own_loop_nnx --out runs --steps 300    # about 2 minutes on 2 CPU cores
    .venv/bin/emergence serve runs                                          # watch it while it records

Writes OUT/own_loop_nnx.h5, which `emergence info | replay | compare | serve` read like any run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import own_loop_args
from recorder import Capture, Probes, Recorder, keep_freed_memory, load_dataset, tap


class CNN(nnx.Module):
    """Conv16-pool-Conv32-pool-Dense128-Dense10, relu; the conv outputs are tapped after the nonlinearity."""

    def __init__(self, channels: int, num_classes: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, 16, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.linear1 = nnx.Linear(7 * 7 * 32, 128, rngs=rngs)
        self.linear2 = nnx.Linear(128, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = tap(self, "relu1", nnx.relu(self.conv1(x)), kernel=self.conv1.kernel)
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = tap(self, "relu2", nnx.relu(self.conv2(x)))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return self.linear2(x)


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """Random shifts of up to 2 pixels and random horizontal flips, per image, on the device."""
    b, h, w, c = images.shape
    k_shift, k_flip = jax.random.split(key)
    shifts = jax.random.randint(k_shift, (b, 2), 0, 5)
    padded = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    crop = jax.vmap(lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1], 0), (h, w, c)))(padded, shifts)
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    return jnp.where(flip, crop[:, :, ::-1], crop)


def loss_fn(model: CNN, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()


@partial(nnx.jit, static_argnames="capture")
def train_step(model: CNN, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array, key: jax.Array,
               probe_x: jax.Array, analysis_x: jax.Array | None, capture: Capture | None):
    """One update on an augmented batch; returns the metrics and, with a `capture`, the frame."""
    x = augment(key, images.astype(jnp.float32) / 255.0)
    (loss, acc), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, labels)
    optimizer.update(model, grads)
    frame = None if capture is None else capture(model, probe_x, analysis_x)  # after the update: this step's frame
    return {"loss": loss, "accuracy": acc}, frame


@nnx.jit
def eval_step(model: CNN, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    return loss_fn(model, images.astype(jnp.float32) / 255.0, labels)


def main(argv: list[str] | None = None) -> Path:
    args = own_loop_args.parse(__doc__.split("\n")[0], argv)
    data = load_dataset(args.dataset)
    probes = Probes.select(data.test_images, data.test_labels, "one per class", data.class_names, data.name)
    analysis = Probes.select(data.test_images, data.test_labels, "balanced:128", data.class_names, data.name)
    probe_x = jnp.asarray(probes.images, jnp.float32) / 255.0
    analysis_x = jnp.asarray(analysis.images, jnp.float32) / 255.0

    model = CNN(data.input_shape[-1], len(data.class_names), rngs=nnx.Rngs(args.seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup_steps=max(1, args.steps // 10), decay_steps=args.steps)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    capture = Capture.nnx(model, probe_x)
    config = {"model": "CNN (Flax NNX, own loop)", "activation": "relu", "dataset": data.name, "optimizer": "adamw",
              "learning_rate": "warmup + cosine, peak 2e-3", "batch_size": args.batch, "seed": args.seed,
              "augmentation": "random shifts (±2 px) and horizontal flips", "steps": args.steps}
    path = Path(args.out) / "own_loop_nnx.h5"
    key = jax.random.key(args.seed)
    rng = np.random.default_rng(args.seed)
    eval_count = min(1000, len(data.test_labels))
    with Recorder(path, probes, capture, planned_steps=args.steps, analysis=analysis, config=config,
                  experiment="own_loop_nnx", activation="relu", eval_count=eval_count, overwrite=args.overwrite) as rec:
        rec.write(0, capture(model, probe_x, analysis_x))  # step 0: the initial model (outside jit: runs eagerly)
        for step in range(1, args.steps + 1):
            idx = rng.integers(0, len(data.train_labels), args.batch)
            metrics, frame = train_step(model, optimizer, data.train_images[idx], data.train_labels[idx],
                                        jax.random.fold_in(key, step), probe_x,
                                        analysis_x if rec.should_analyse(step) else None, capture)
            rec.write(step, frame if rec.should_record(step) else None, metrics)
            rec.log_scalars(step, learning_rate=schedule(step - 1))
            if step % 50 == 0 or step == args.steps:
                loss, acc = eval_step(model, data.test_images[:eval_count], data.test_labels[:eval_count])
                rec.log_eval(step, loss=loss, accuracy=acc)
        loss, acc = eval_step(model, data.test_images, data.test_labels)
        rec.log_test(loss=loss, accuracy=acc, count=len(data.test_labels))
    print(path)
    return path


if __name__ == "__main__":
    keep_freed_memory()  # a program of its own: host memory XLA frees is reused (recorder/host_memory.py)
    main()
