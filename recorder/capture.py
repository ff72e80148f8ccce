"""The frame of one step, computed inside the caller's own jitted function: `Capture`.

A `Capture` is made once, outside any jit, from the model and an example input: it traces the model
abstractly (`jax.eval_shape`, no FLOPs) to learn the recorded layers, their shapes, and what they are. Calling
it inside a jitted step returns the frame as a dict of device arrays, with no host callback:

    layer -> [P, H, W, C] (stored dtype)       "logits" -> [P, K] float32 (when the model returns logits)
    "kernel/<layer>" -> the layer's kernel     with an analysis batch also, per layer:
    "analysis/gram/<layer>" -> [n, n] float32  "analysis/stats/<layer>" -> [len(STAT_NAMES)] float32

Three kinds of model:
* Flax NNX (`Capture.nnx`): the values marked with `tap(...)` (after the nonlinearity); a model without taps
  gets every `nnx.Conv` output recorded, labelled honestly as pre-activation in the file and the pictures;
* Flax Linen (`Capture.linen`): the values the module sows into "intermediates" (`self.sow("intermediates",
  "conv1", y)` after the nonlinearity), else every `nn.Conv` output (pre-activation), through Linen's own
  `capture_intermediates`;
* any function (`Capture.function`): `fn(params, x) -> {layer: [B, H, W, C]}`, or `(logits, {layer: ...})`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recorder.analysis import gram_and_stats
from recorder.taps import capture_taps, flatten_taps, path_name
from runfile.schema import AFTER_NONLINEARITY, KERNEL_CHOICES, PRE_ACTIVATION, STAGES

NNX_MODE = "inference: the model in Module.eval() (BatchNorm running statistics, no dropout)"
LINEN_MODE = "as module.apply(variables, x) computes it (the module's own defaults for BatchNorm and Dropout)"
FUNCTION_MODE = "as the recorded function computes it"


class CaptureError(ValueError):
    """The model has nothing to record, or a layer cannot be recorded; the message says what to change."""


class _ConvOutput(nnx.Intermediate):
    """Every submodule's output, from which the `nnx.Conv` ones are kept (models without taps)."""


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str
    shape: tuple[int, int, int]  # (H, W, C) of one probe's activation
    stage: str  # AFTER_NONLINEARITY or PRE_ACTIVATION
    kernel_shape: tuple[int, ...] | None = None  # when the kernel is recorded with each frame
    channels: tuple[int, ...] | None = None  # the channel numbers recorded (a subset); None: all


ANALYSIS_ROWS = "rows"  # `frame_from(analysis=...)`: the analysis images' activations, not yet their Grams


def frame_from(values: Mapping[str, jax.Array], kernels: Mapping[str, jax.Array], logits: jax.Array | None,
               p: int, dtype: Any, kernel_layers: Sequence[str], analysis: bool | str,
               channels: Mapping[str, Sequence[int]] | None = None) -> dict[str, jax.Array]:
    """The frame dict from one forward pass over the probes (the first `p` rows) and, when `analysis`, the
    analysis images after them (traceable; the recorder's own step builds its frames with it too). A layer in
    `channels` keeps only those channels in the frame; its analysis statistics use all of them. With
    `analysis=ANALYSIS_ROWS` each layer's float32 activations of the analysis images come as
    `analysis/rows/<layer>` instead of their Gram and statistics (`analysis_of` computes those)."""
    frame: dict[str, jax.Array] = {}
    rows: dict[str, jax.Array] = {}  # the analysis images' float32 activations, before any storage rounding
    for name, a in values.items():
        kept = (channels or {}).get(name)
        frame[name] = (a[:p] if kept is None else a[:p, ..., np.asarray(kept)]).astype(dtype)
        if analysis:
            rows[f"analysis/rows/{name}"] = a[p:]
    frame.update(rows if analysis == ANALYSIS_ROWS else analysis_of(rows))
    for name in kernel_layers:
        frame[f"kernel/{name}"] = kernels[name].astype(jnp.float32)
    if logits is not None:
        frame["logits"] = logits[:p].astype(jnp.float32)
    return frame


def analysis_of(rows: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """`analysis/gram/<layer>` and `analysis/stats/<layer>` from the `analysis/rows/<layer>` of a frame made
    with `analysis=ANALYSIS_ROWS` (traceable)."""
    out = {}
    for key, a in rows.items():
        name = key.removeprefix("analysis/rows/")
        out[f"analysis/gram/{name}"], out[f"analysis/stats/{name}"] = gram_and_stats(a)
    return out


def parse_channels(spec: str) -> list[int]:
    """"A:B" (A to B − 1) or "a,b,c" -> sorted, unique channel numbers; raises CaptureError otherwise."""
    try:
        if ":" in spec:
            a, _, b = spec.partition(":")
            out = list(range(int(a or 0), int(b)))
        else:
            out = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        out = []
    if not out or min(out) < 0:
        raise CaptureError(f"channels={spec!r}: expected A:B (channels A to B-1) or a list like 0,3,5")
    return out


def inference_view(model: nnx.Module) -> nnx.Module:
    """A copy of `model` (sharing its arrays) in inference mode: running statistics, no dropout. Frames are
    computed on it, so they depend only on the model's state at the step, and the caller's model keeps its
    mode and its RNG counters."""
    view = nnx.merge(*nnx.split(model))
    view.eval()
    return view


def _stack(probe_x: jax.Array, analysis_x: jax.Array | None) -> jax.Array:
    return probe_x if analysis_x is None else jnp.concatenate([probe_x, analysis_x])  # one forward for both


def _pick_kernels(kernels: str | Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kernels, str):
        if kernels not in KERNEL_CHOICES:
            raise CaptureError(f"kernels={kernels!r}; expected one of {', '.join(KERNEL_CHOICES)} or a list of layers")
        return {"first": tuple(available[:1]), "all": tuple(available), "none": ()}[kernels]
    missing = [k for k in kernels if k not in available]
    if missing:
        raise CaptureError(f"kernels {missing} are not recordable; layers with a kernel: {', '.join(available) or 'none'}")
    return tuple(kernels)


def _check_maps(values: Mapping[str, Any], what: str) -> None:
    if not values:
        raise CaptureError(f"{what} has no layer to record: mark values with tap(self, 'name', y) (NNX), "
                           "self.sow('intermediates', 'name', y) (Linen), or give it conv layers")
    bad = {k: tuple(v.shape) for k, v in values.items() if len(v.shape) != 4}
    if bad:
        raise CaptureError(f"recorded layers must be [batch, H, W, C] feature maps; got {bad} from {what}")


class Capture:
    """Static facts about the recorded layers, and the traceable function that computes a frame."""

    def __init__(self, layers: tuple[LayerInfo, ...], forward: Callable[..., tuple], kernel_layers: tuple[str, ...],
                 dtype: Any, summary: dict[str, Any]):
        self.layers = layers
        self.kernel_layers = kernel_layers
        self.dtype = jnp.dtype(dtype)
        self.summary = summary
        out = summary.get("output_shape", [])
        self.num_classes = int(out[0]) if len(out) == 1 else 0  # logits [K] per image, else none recorded
        self._forward = forward  # (model-or-params, x) -> (logits | None, {layer: act}, {layer: kernel})
        self.mode = {"flax.linen": LINEN_MODE, "function": FUNCTION_MODE}.get(summary.get("framework", ""), NNX_MODE)
        self.model: Any = None  # NNX: the model it was made from, which a loop updates in place (recorder/own_loop.py)
        self.example_x: np.ndarray | None = None  # NNX: the example inputs it was made with (the probes, prepared)

    @property
    def has_logits(self) -> bool:
        return self.num_classes > 0

    def __call__(self, model: Any, probe_x: jax.Array, analysis_x: jax.Array | None = None,
                 analysis: bool | str = True) -> dict[str, jax.Array]:
        """The frame (see the module docstring); call it inside your jitted step. `model` is the NNX model,
        or the Linen variables, or the function's params, as the constructor was given. `analysis` (with
        `analysis_x`): True for the Grams and statistics, ANALYSIS_ROWS for the rows they come from."""
        logits, values, kernels = self._forward(model, _stack(probe_x, analysis_x))
        return frame_from(values, kernels, logits if self.has_logits else None, probe_x.shape[0], self.dtype,
                          self.kernel_layers, analysis if analysis_x is not None else False, self.channel_subsets)

    @property
    def channel_subsets(self) -> dict[str, tuple[int, ...]]:
        return {l.name: l.channels for l in self.layers if l.channels is not None}

    def with_channels(self, spec: str) -> "Capture":
        """This capture recording only the channels `spec` names ("0:16": 0 to 15; "0,3,5") of every layer that
        has more; a layer with no more channels than that keeps all of them. Returns self (changed)."""
        wanted = parse_channels(spec)
        layers = []
        for l in self.layers:
            kept = tuple(c for c in wanted if c < l.shape[-1])
            if not kept:
                raise CaptureError(f"channels={spec} selects none of {l.name}'s {l.shape[-1]} channels")
            if kept != tuple(range(l.shape[-1])):
                l = dataclasses.replace(l, shape=(*l.shape[:-1], len(kept)), channels=kept)
            layers.append(l)
        self.layers = tuple(layers)
        return self

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def nnx(cls, model: nnx.Module, example_x: Any, *, kernels: str | Sequence[str] = "first",
            dtype: Any = "float16") -> "Capture":
        """For a Flax NNX model: its `tap`s, or every `nnx.Conv` output if it has none."""
        from recorder.summary import summarize

        shape = tuple(np.shape(example_x))[1:]
        summary = summarize(model, shape)
        if summary["taps"]:
            def forward(m: nnx.Module, x: jax.Array) -> tuple:
                logits, taps, kerns = capture_taps(inference_view(m))(x)
                return logits, flatten_taps(taps), flatten_taps(kerns)

            names = [t["name"] for t in summary["taps"]]
            shapes = {t["name"]: tuple(t["shape"]) for t in summary["taps"]}
            kernel_shapes = {k: tuple(v) for k, v in summary["kernels"].items()}
            stage = AFTER_NONLINEARITY
        else:
            convs = {path_name(path): m for path, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)}
            if not convs:
                raise CaptureError(f"{type(model).__name__} has no tap() and no nnx.Conv: nothing to record")

            def forward(m: nnx.Module, x: jax.Array) -> tuple:
                logits, outputs = nnx.capture(inference_view(m), _ConvOutput, method_outputs=_ConvOutput)(x)
                values = {}
                for path, var in nnx.to_flat_state(outputs):
                    name = path_name(path[:-1])
                    if path[-1] == "__call__" and name in convs:
                        values[name] = var.get_value()[-1]
                kerns = {path_name(path): c.kernel[...]
                         for path, c in nnx.iter_modules(m) if isinstance(c, nnx.Conv)}
                return logits, values, kerns

            names = list(convs)  # definition order
            graphdef, state = nnx.split(model)  # traced on a copy: nnx forbids mutating the model from a trace
            out = jax.eval_shape(lambda s, x: forward(nnx.merge(graphdef, s), x)[1], state,
                                 jax.ShapeDtypeStruct((1, *shape), jnp.float32))
            _check_maps(out, type(model).__name__)
            shapes = {n: tuple(out[n].shape[1:]) for n in names}
            kernel_shapes = {n: tuple(c.kernel.shape) for n, c in convs.items()}
            stage = PRE_ACTIVATION
        picked = _pick_kernels(kernels, [n for n in names if n in kernel_shapes])
        layers = tuple(LayerInfo(n, shapes[n], stage, kernel_shapes[n] if n in picked else None) for n in names)
        capture = cls(layers, forward, picked, dtype, summary)
        capture.model, capture.example_x = model, np.asarray(example_x)
        return capture

    @classmethod
    def linen(cls, module: Any, variables: Any, example_x: Any, *, kernels: str | Sequence[str] = "first",
              kernel_paths: Mapping[str, str] | None = None, dtype: Any = "float16") -> "Capture":
        """For a Flax Linen module: what it sows into "intermediates", or every `nn.Conv` output if nothing.
        A layer's kernel is the `kernel` of the module at its path in the params, or at `kernel_paths[layer]`
        (e.g. {"tanh1": "conv1"} when the sown name differs from the conv's: Linen forbids equal names)."""
        kernel_paths = dict(kernel_paths or {})
        import flax.linen as nn

        x0 = jax.ShapeDtypeStruct((1, *tuple(np.shape(example_x))[1:]), jnp.float32)
        sown = jax.eval_shape(lambda v, x: module.apply(v, x, mutable=["intermediates"])[1], variables, x0)
        sown_names = _linen_sown(sown)
        stage = AFTER_NONLINEARITY if sown_names else PRE_ACTIVATION

        def forward(v: Any, x: jax.Array) -> tuple:
            if sown_names:
                logits, state = module.apply(v, x, mutable=["intermediates"])
                values = _linen_sown(state.get("intermediates", {}))
            else:
                logits, state = module.apply(v, x, capture_intermediates=lambda m, method: isinstance(m, nn.Conv)
                                             and method == "__call__", mutable=["intermediates"])
                values = _linen_calls(state.get("intermediates", {}))
            kerns = {}
            for name in values:  # a layer named after its conv submodule has that conv's kernel
                node = _lookup(v.get("params", {}), kernel_paths.get(name, name).split("/"))
                if isinstance(node, Mapping) and "kernel" in node:
                    kerns[name] = node["kernel"]
            return logits, values, kerns

        logits, values, kerns = jax.eval_shape(forward, variables, x0)
        _check_maps(values, type(module).__name__)
        picked = _pick_kernels(kernels, list(kerns))
        layers = tuple(LayerInfo(n, tuple(a.shape[1:]), stage, tuple(kerns[n].shape) if n in picked else None)
                       for n, a in values.items())
        params = int(sum(np.prod(l.shape) for l in jax.tree.leaves(variables.get("params", {}))))
        return cls(layers, forward, picked, dtype, _summary(layers, kerns, logits, params, "flax.linen"))

    @classmethod
    def function(cls, fn: Callable[[Any, jax.Array], Any], params: Any, example_x: Any, *,
                 stage: str = AFTER_NONLINEARITY, dtype: Any = "float16") -> "Capture":
        """For any `fn(params, x)` returning {layer: [B, H, W, C]} or (logits, {layer: ...}); `stage` says
        what the values are (AFTER_NONLINEARITY or PRE_ACTIVATION)."""
        if stage not in STAGES:
            raise CaptureError(f"stage={stage!r}; expected one of: {', '.join(STAGES)}")

        def forward(p: Any, x: jax.Array) -> tuple:
            out = fn(p, x)
            logits, values = out if isinstance(out, tuple) else (None, out)
            return logits, dict(values), {}

        x0 = jax.ShapeDtypeStruct((1, *tuple(np.shape(example_x))[1:]), jnp.float32)
        logits, values, _ = jax.eval_shape(forward, params, x0)
        if not isinstance(values, Mapping):
            raise CaptureError(f"{getattr(fn, '__name__', fn)} must return a dict of layer -> [B, H, W, C] "
                               f"(or (logits, dict)); got {type(values).__name__}")
        _check_maps(values, getattr(fn, "__name__", "the function"))
        layers = tuple(LayerInfo(n, tuple(a.shape[1:]), stage) for n, a in values.items())
        return cls(layers, forward, (), dtype, _summary(layers, {}, logits, 0, "function"))


def _summary(layers: Sequence[LayerInfo], kernels: Mapping[str, Any], logits: Any, params: int,
             framework: str) -> dict[str, Any]:
    """The run file's model summary for a model `summarize` cannot trace (Linen, a plain function)."""
    return {"modules": [], "taps": [{"name": l.name, "shape": list(l.shape)} for l in layers],
            "kernels": {n: list(k.shape) for n, k in kernels.items()},
            "output_shape": list(tuple(getattr(logits, "shape", ()))[1:]), "total_params": params,
            "framework": framework}


def _linen_sown(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """{path/name: value} of sown intermediates (Linen keeps a tuple per name), leaving out `__call__`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "__call__":
            continue
        if isinstance(value, tuple):
            out["/".join((*prefix, key))] = value[-1]
        elif isinstance(value, Mapping):
            out.update(_linen_sown(value, (*prefix, key)))
    return out


def _linen_calls(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """{module path: output} of captured `__call__` outputs."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "__call__" and prefix:
            out["/".join(prefix)] = value[-1]
        elif isinstance(value, Mapping):
            out.update(_linen_calls(value, (*prefix, key)))
    return out


def _lookup(tree: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree
