"""The pure, jitted functions of a recorded run: one training step (optionally with the probe frame),
the probe forward alone (for step 0), and the evaluation of a chunk of images.

The model is split once into a static graph definition and its parameters; every function below merges
them inside the trace, so each is a plain `jax.jit` of pytrees and compiles once per input shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from recorder.capture import Capture
from recorder.taps import capture_taps


class TrainState(NamedTuple):
    params: nnx.State  # the model's nnx.Param leaves
    opt_state: optax.OptState


# layer -> [P, H, W, C]; "logits" -> [P, K]; "kernel/<layer>" -> kernel; with analysis also
# "analysis/gram/<layer>" -> [n, n] float32 and "analysis/stats/<layer>" -> [len(STAT_NAMES)] float32
Frame = dict[str, jax.Array]


def make_optimizer(name: str, learning_rate: float, momentum: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; expected one of: adam, sgd")


def to_inputs(images: jax.Array) -> jax.Array:
    """uint8 pixels [B, H, W, C] -> float32 in [0, 1], the only preprocessing (as in the reference)."""
    return images.astype(jnp.float32) / 255.0


@dataclasses.dataclass
class StepFunctions:
    """The compiled functions of one run. `traces` counts how often each was traced (compiled)."""

    init_state: TrainState
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    recorded_step: Callable[..., tuple[TrainState, dict[str, jax.Array], Frame]]
    analysed_step: Callable[..., tuple[TrainState, dict[str, jax.Array], Frame]]  # + analysis/* entries
    probe_frame: Callable[..., Frame]  # (params, probe_x[, analysis_x]): step 0
    eval_chunk: Callable[..., tuple[jax.Array, jax.Array]]
    traces: dict[str, int]


def make_step_functions(model: nnx.Module, tx: optax.GradientTransformation, capture: Capture) -> StepFunctions:
    """Builds the jitted functions for `model`; frames come from `capture` (the public recorder API's capture,
    called inside these steps as a user's step calls it).

    The training state is donated: callers must not reuse a state after passing it in.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    traces = {"train_step": 0, "recorded_step": 0, "analysed_step": 0, "probe_frame": 0, "eval_chunk": 0}

    def forward(params: nnx.State, x: jax.Array) -> tuple[jax.Array, nnx.State, nnx.State]:
        return capture_taps(nnx.merge(graphdef, params, rest))(x)

    def loss_and_accuracy(params: nnx.State, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits, _, _ = forward(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (jnp.argmax(logits, -1) == y).mean()

    def update(state: TrainState, images: jax.Array, labels: jax.Array, idx: jax.Array) -> tuple[TrainState, dict]:
        x, y = to_inputs(images[idx]), labels[idx]  # gather the batch on the device
        (loss, acc), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(state.params, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), {"loss": loss, "accuracy": acc}

    def frame_of(params: nnx.State, probe_x: jax.Array, analysis_x: jax.Array | None = None) -> Frame:
        return capture(nnx.merge(graphdef, params, rest), probe_x, analysis_x)

    def train_step(state, images, labels, idx):
        traces["train_step"] += 1  # runs only while tracing
        return update(state, images, labels, idx)

    def recorded_step(state, images, labels, idx, probe_x):
        traces["recorded_step"] += 1
        state, metrics = update(state, images, labels, idx)
        return state, metrics, frame_of(state.params, probe_x)  # the frame sees the updated parameters

    def analysed_step(state, images, labels, idx, probe_x, analysis_x):
        traces["analysed_step"] += 1
        state, metrics = update(state, images, labels, idx)
        return state, metrics, frame_of(state.params, probe_x, analysis_x)

    def probe_frame(params, probe_x, analysis_x=None):
        traces["probe_frame"] += 1
        return frame_of(params, probe_x, analysis_x)

    def eval_chunk(params, images, labels, mask):
        """Summed loss and correct count over the rows where mask is true (chunks are padded)."""
        traces["eval_chunk"] += 1
        logits, _, _ = forward(params, to_inputs(images))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = jnp.argmax(logits, -1) == labels
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(jnp.where(mask, correct, False))

    return StepFunctions(
        init_state=TrainState(params, tx.init(params)),
        train_step=jax.jit(train_step, donate_argnums=0),
        recorded_step=jax.jit(recorded_step, donate_argnums=0),
        analysed_step=jax.jit(analysed_step, donate_argnums=0),
        probe_frame=jax.jit(probe_frame),
        eval_chunk=jax.jit(eval_chunk),
        traces=traces,
    )


EVAL_CHUNK = 500


def evaluate(fns: StepFunctions, params: nnx.State, images: Any, labels: Any, chunk: int = EVAL_CHUNK) -> tuple[jax.Array, jax.Array]:
    """Mean loss and accuracy over all `images` (device uint8 [N, H, W, C]); returns device scalars.

    Every chunk has the same shape whatever N (the last is padded and masked), so this compiles once.
    """
    n = images.shape[0]
    total_loss = jnp.zeros((), jnp.float32)
    total_correct = jnp.zeros((), jnp.int32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        pad = chunk - (stop - start)
        x, y = images[start:stop], labels[start:stop]
        if pad:
            x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
            y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
        mask = jnp.arange(chunk) < (stop - start)
        loss, correct = fns.eval_chunk(params, x, y, mask)
        total_loss = total_loss + loss
        total_correct = total_correct + correct
    return total_loss / n, total_correct.astype(jnp.float32) / n
