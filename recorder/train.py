"""The pure functions of a recorded run: one training step (`update`, jitted alone as `train_step`: the bare
step the benchmarks compare with), the frame (`frame_of`; both run in blocks of steps, recorder/blocks.py),
the probe forward alone (for step 0), and the evaluation of a chunk of images.

The model is split once into a static graph definition, its parameters and the rest of its state (batch
statistics, RNG stream counters: whatever the model carries besides `nnx.Param`); every function below
merges them inside the trace, so each is a plain `jax.jit` of pytrees and compiles once per input shape.
The training step runs the model in training mode and returns the rest of the state updated (BatchNorm's
running statistics, the dropout stream's counter, so masks differ per step and repeat for a seed); the
optimizer sees only the parameters. Frames and evaluations run it in inference mode (`Module.eval()`:
running statistics, no dropout), so a frame depends only on the state at its step, never on which other
images share its batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recorder.augment import augment, step_key
from recorder.capture import Capture
from recorder.summary import module_at
from recorder.taps import path_name


class TrainState(NamedTuple):
    params: nnx.State  # the model's nnx.Param leaves
    opt_state: optax.OptState
    model_state: nnx.State  # everything else the model holds (BatchStat, RNG counters, ...); often empty


# layer -> [P, H, W, C]; "logits" -> [P, K]; "kernel/<layer>" -> kernel; with analysis also
# "analysis/gram/<layer>" -> [n, n] float32 and "analysis/stats/<layer>" -> [len(STAT_NAMES)] float32
Frame = dict[str, jax.Array]


LR_SCHEDULES = ("constant", "cosine", "step")


def learning_rate_schedule(learning_rate: float, schedule: str, total_steps: int) -> optax.Schedule:
    """The learning rate of update k (optax counts from 0: update k is step k + 1): `constant`; `cosine`, from
    `learning_rate` to 0 over the run; `step`, times 0.1 at half and again at three quarters of the run."""
    if schedule == "constant":
        return optax.constant_schedule(learning_rate)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    if schedule == "step":
        return optax.piecewise_constant_schedule(learning_rate, {total_steps // 2: 0.1, 3 * total_steps // 4: 0.1})
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of: {', '.join(LR_SCHEDULES)}")


def make_optimizer(name: str, learning_rate: float | optax.Schedule, momentum: float,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam or SGD with momentum at `learning_rate` (a number or a schedule). `weight_decay` > 0 adds
    weight_decay · W to the gradient of every kernel (leaves of rank >= 2; not biases, not BatchNorm's scale
    and offset): the gradient of an L2 penalty ½ · weight_decay · ‖W‖² in the loss, Keras' `l2(weight_decay
    / 2)` kernel regulariser."""
    if name == "adam":
        tx = optax.adam(learning_rate)
    elif name == "sgd":
        tx = optax.sgd(learning_rate, momentum=momentum)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of: adam, sgd")
    if weight_decay:
        kernels = lambda params: jax.tree.map(lambda w: jnp.ndim(w) >= 2, params)
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=kernels), tx)
    return tx


def to_inputs(images: jax.Array) -> jax.Array:
    """uint8 pixels [B, H, W, C] -> float32 in [0, 1], the only preprocessing (as in the reference)."""
    return images.astype(jnp.float32) / 255.0


CARRIED = (nnx.BatchStat, nnx.RngState)  # what the step carries besides the parameters


def check_model_state(rest: nnx.State) -> None:
    """Refuses model state the step cannot carry correctly, naming the variable type."""
    bad = sorted({type(v).__name__ for _, v in nnx.to_flat_state(rest) if not isinstance(v, CARRIED)})
    if bad:
        raise ValueError(f"the model holds state of type {', '.join(bad)}, which the training step cannot carry: "
                         f"it carries nnx.Param (optimised), {', '.join(t.__name__ for t in CARRIED)} (updated "
                         "by the forward pass); make other values nnx.Param, nnx.BatchStat, or plain constants")


@dataclasses.dataclass
class StepFunctions:
    """The compiled functions of one run. `traces` counts how often each was traced (compiled)."""

    init_state: TrainState
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    probe_frame: Callable[..., Frame]  # (params, model_state, probe_x[, analysis_x]): step 0
    eval_chunk: Callable[..., tuple[jax.Array, jax.Array]]
    traces: dict[str, int]
    # the same computations unjitted, for blocks of steps (recorder/blocks.py):
    update: Callable[..., tuple[TrainState, dict[str, jax.Array]]]  # (state, images, labels, start, idx, step)
    frame_of: Callable[..., Frame]  # (params, model_state, probe_x[, analysis_x]), inference mode


def make_step_functions(model: nnx.Module, tx: optax.GradientTransformation, capture: Capture,
                        frozen: Sequence[str] = (), augmentations: Sequence[str] = (), seed: int = 0,
                        measured: Mapping[str, str] | None = None, batch_sharding: Any = None) -> StepFunctions:
    """Builds the jitted functions for `model`; frames come from `capture` (the public recorder API's capture,
    called inside these steps as a user's step calls it). The modules at the `frozen` paths run in inference
    mode in training too (recorder/transfer.py; `tx` must give them no updates). `augmentations` apply to the
    training batch only, drawn from (seed, step) (recorder/augment.py). For each `measured` layer (name ->
    the path of the module that computes it) every step also returns three scalars (`layer_measures`):
    `<layer>/weight_change` ‖W_t − W_0‖/‖W_0‖, `<layer>/update_ratio` ‖W_t − W_t−1‖/‖W_t‖ and
    `<layer>/grad_norm` ‖∂loss/∂W‖, over the module's parameters; W_0 is `start`, the steps' argument.
    With `batch_sharding` (recorder/parallel.py), the gathered batch is constrained to it: data parallelism.

    The training state is donated: callers must not reuse a state after passing it in.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    check_model_state(rest)
    traces = {"train_step": 0, "probe_frame": 0, "eval_chunk": 0}

    def training(params: nnx.State, rest: nnx.State, x: jax.Array) -> tuple[jax.Array, nnx.State]:
        """Logits in training mode, and the model state the forward pass left (updated statistics, RNGs)."""
        m = nnx.merge(graphdef, params, rest, copy=True)  # fresh variables: mutable at this trace level
        m.train()
        for path in frozen:
            module_at(m, path).eval()
        logits = m(x)
        return logits, nnx.split(m, nnx.Param, ...)[2]

    def inference(params: nnx.State, rest: nnx.State) -> nnx.Module:
        m = nnx.merge(graphdef, params, rest)
        m.eval()
        return m

    def loss_and_accuracy(params: nnx.State, rest: nnx.State, x: jax.Array, y: jax.Array):
        logits, rest = training(params, rest, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, ((jnp.argmax(logits, -1) == y).mean(), rest)

    def update(state: TrainState, images: jax.Array, labels: jax.Array, start: nnx.State, idx: jax.Array,
               step: jax.Array) -> tuple[TrainState, dict]:
        x, y = to_inputs(images[idx]), labels[idx]  # gather the batch on the device
        if batch_sharding is not None:  # split along the mesh's data axis
            x, y = (jax.lax.with_sharding_constraint(v, batch_sharding) for v in (x, y))
        if augmentations:
            x = augment(x, step_key(seed, step), augmentations)
        (loss, (acc, rest)), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(
            state.params, state.model_state, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))  # one flag: cheap to carry out
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": acc, "finite": finite}
        metrics.update(layer_measures(measured or {}, params, start, updates, grads))
        return TrainState(params, opt_state, rest), metrics

    def frame_of(params: nnx.State, rest: nnx.State, probe_x: jax.Array, analysis_x: jax.Array | None = None,
                 analysis: bool | str = True) -> Frame:
        return capture(inference(params, rest), probe_x, analysis_x, analysis)

    def train_step(state, images, labels, start, idx, step):
        traces["train_step"] += 1  # runs only while tracing
        return update(state, images, labels, start, idx, step)

    def probe_frame(params, rest, probe_x, analysis_x=None):
        traces["probe_frame"] += 1
        return frame_of(params, rest, probe_x, analysis_x)

    def eval_chunk(params, rest, images, labels, idx, mask):
        """Summed loss and correct count over the rows `idx` of (images, labels) where mask is true (the last
        chunk repeats its last row). Gathered here, on the device, as the training batches are."""
        traces["eval_chunk"] += 1
        images, labels = images[idx], labels[idx]
        logits = inference(params, rest)(to_inputs(images))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = jnp.argmax(logits, -1) == labels
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(jnp.where(mask, correct, False))

    return StepFunctions(
        init_state=TrainState(params, tx.init(params), rest),
        train_step=jax.jit(train_step, donate_argnums=0),
        probe_frame=jax.jit(probe_frame),
        eval_chunk=jax.jit(eval_chunk),
        traces=traces,
        update=update,
        frame_of=frame_of,
    )


MEASURES = ("weight_change", "update_ratio", "grad_norm")


def layer_measures(measured: Mapping[str, str], params: nnx.State, start: nnx.State, updates: nnx.State,
                   grads: nnx.State) -> dict[str, jax.Array]:
    """The per-layer scalars of `make_step_functions` (float32 device scalars; a zero norm gives 0, not NaN)."""
    flat = {name: dict(nnx.to_flat_state(tree)) for name, tree in
            (("w", params), ("w0", start), ("dw", updates), ("g", grads))}
    out = {}
    for layer, module in measured.items():
        keys = [k for k in flat["w"] if path_name(k).startswith(module + "/")]

        def norm(which: str, minus: str | None = None) -> jax.Array:
            leaves = [flat[which][k].get_value() - (flat[minus][k].get_value() if minus else 0) for k in keys]
            return jnp.sqrt(sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in leaves))

        ratio = lambda a, b: jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)
        out[f"{layer}/weight_change"] = ratio(norm("w", "w0"), norm("w0"))
        out[f"{layer}/update_ratio"] = ratio(norm("dw"), norm("w"))
        out[f"{layer}/grad_norm"] = norm("g")
    return out


EVAL_CHUNK = 500


def evaluate(fns: StepFunctions, state: TrainState, images: Any, labels: Any, chunk: int = EVAL_CHUNK,
             count: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean loss and accuracy over the first `count` (default: all) `images` (device uint8 [N, H, W, C]) in
    inference mode; device scalars (no wait). Every chunk has the same shape whatever N (the last repeats its
    last row, masked out), so this compiles once; rows are gathered on the device."""
    n = images.shape[0] if count is None else count
    total_loss, total_correct = None, None
    for start in range(0, n, chunk):
        idx = np.minimum(np.arange(start, start + chunk), n - 1).astype(np.int32)
        mask = np.arange(start, start + chunk) < n
        loss, correct = fns.eval_chunk(state.params, state.model_state, images, labels, idx, mask)
        total_loss = loss if total_loss is None else total_loss + loss
        total_correct = correct if total_correct is None else total_correct + correct
    return total_loss / n, total_correct.astype(jnp.float32) / n
