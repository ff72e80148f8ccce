"""Your own Flax Linen training loop, recorded through the public API (`recorder.Capture.linen` + `Recorder`).

A Linen CNN that sows its activations after the nonlinearity (`self.sow("intermediates", ...)`), trained
with its own `flax.training.train_state.TrainState`, SGD with momentum and a step learning-rate schedule.
The frame is captured inside the same jitted step that trains.

    .venv/bin/python -m experiments.own_loop_linen --out runs --steps 300   # about 2 minutes on 2 CPU cores

Writes OUT/own_loop_linen.h5, which `emergence info | replay | compare | serve` read like any run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from experiments import own_loop_args
from recorder import Capture, Probes, Recorder, keep_freed_memory, load_dataset


class CNN(nn.Module):
    """Conv32-pool-Conv64-pool-Dense10, tanh, in Linen; each conv's activation is sown as tanh1, tanh2."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, features in ((1, 32), (2, 64)):
            x = nn.tanh(nn.Conv(features, (3, 3), name=f"conv{i}")(x))
            self.sow("intermediates", f"tanh{i}", x)  # recorded: after the nonlinearity
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def loss_and_accuracy(params, apply_fn, x, y):
    logits = apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits.argmax(-1) == y).mean()


@partial(jax.jit, static_argnames="capture")
def train_step(state: train_state.TrainState, images, labels, probe_x, analysis_x, capture: Capture | None):
    """One update; returns the new state, the metrics and, with a `capture`, the frame."""
    x = images.astype(jnp.float32) / 255.0
    (loss, acc), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(state.params, state.apply_fn, x, labels)
    state = state.apply_gradients(grads=grads)
    frame = None if capture is None else capture({"params": state.params}, probe_x, analysis_x)
    return state, {"loss": loss, "accuracy": acc}, frame


@jax.jit
def eval_step(state: train_state.TrainState, images, labels):
    return loss_and_accuracy(state.params, state.apply_fn, images.astype(jnp.float32) / 255.0, labels)


def main(argv: list[str] | None = None) -> Path:
    args = own_loop_args.parse(__doc__.split("\n")[0], argv)
    data = load_dataset(args.dataset)
    probes = Probes.select(data.test_images, data.test_labels, "one per class", data.class_names, data.name)
    analysis = Probes.select(data.test_images, data.test_labels, "balanced:128", data.class_names, data.name)
    probe_x = jnp.asarray(probes.images, jnp.float32) / 255.0
    analysis_x = jnp.asarray(analysis.images, jnp.float32) / 255.0

    cnn = CNN(len(data.class_names))
    params = cnn.init(jax.random.key(args.seed), probe_x[:1])["params"]
    lr = optax.piecewise_constant_schedule(0.05, {max(1, args.steps // 2): 0.2, max(2, 3 * args.steps // 4): 0.2})
    state = train_state.TrainState.create(apply_fn=cnn.apply, params=params, tx=optax.sgd(lr, momentum=0.9))
    capture = Capture.linen(cnn, {"params": params}, probe_x, kernel_paths={"tanh1": "conv1", "tanh2": "conv2"})
    config = {"model": "CNN (Flax Linen, own loop)", "activation": "tanh", "dataset": data.name,
              "optimizer": "sgd, momentum 0.9", "learning_rate": "0.05, x0.2 at 1/2 and 3/4 of the steps",
              "batch_size": args.batch, "seed": args.seed, "steps": args.steps}
    path = Path(args.out) / "own_loop_linen.h5"
    rng = np.random.default_rng(args.seed)
    with Recorder(path, probes, capture, planned_steps=args.steps, analysis=analysis, config=config,
                  experiment="own_loop_linen", activation="tanh", eval_count=min(1000, len(data.test_labels)),
                  overwrite=args.overwrite) as rec:
        rec.write(0, capture({"params": state.params}, probe_x, analysis_x))
        for step in range(1, args.steps + 1):
            idx = rng.integers(0, len(data.train_labels), args.batch)
            state, metrics, frame = train_step(state, data.train_images[idx], data.train_labels[idx], probe_x,
                                               analysis_x if rec.should_analyse(step) else None, capture)
            rec.write(step, frame, metrics)
            rec.log_scalars(step, learning_rate=lr(step - 1))
            if step % 50 == 0 or step == args.steps:
                loss, acc = eval_step(state, data.test_images[:1000], data.test_labels[:1000])
                rec.log_eval(step, loss=loss, accuracy=acc)
        loss, acc = eval_step(state, data.test_images, data.test_labels)
        rec.log_test(loss=loss, accuracy=acc, count=len(data.test_labels))
    print(path)
    return path


if __name__ == "__main__":
    keep_freed_memory()  # a program of its own: host memory XLA frees is reused (recorder/host_memory.py)
    main()
