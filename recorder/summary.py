"""A Keras-`summary()`-like shape trace of a model, computed abstractly (no FLOPs spent)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recorder.taps import call_order, capture_taps, flatten_taps, path_name, tap_sources


class _Output(nnx.Intermediate):
    """Every submodule's `__call__` output, for the shape trace."""


def summarize(model: nnx.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Returns {"modules": [...], "taps": [...], "kernels": {...}, "total_params": int, "total_state": int}
    for one input.

    `modules` lists every submodule with parameters or an output: path, type, output shape (batch 1),
    parameter count (`nnx.Param`: what the optimiser trains) and non-trainable state count (BatchNorm's
    running statistics: `nnx.BatchStat`). `taps` lists the tapped layers in the order the forward pass calls
    them, each with the path of the module whose parameters computed it (`module`; None if the tap says not).
    """
    graphdef, state = nnx.split(model)
    order: dict[str, str | None] = {}
    called: list[str] = []  # module paths in the order their __call__ ran

    def trace(state: nnx.State, x: jax.Array):
        m = nnx.merge(graphdef, state)
        with call_order() as log, _calls_logged(m) as calls:
            out, taps, kernels, outputs = capture_taps(m, _Output, method_outputs=_Output)(x)
        order.update(tap_sources(m, log))
        called.extend(dict.fromkeys(calls))
        return out, taps, kernels, outputs

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    out, taps, kernels, outputs = jax.eval_shape(trace, state, x)
    flat_taps = flatten_taps(taps)
    if set(order) != set(flat_taps):
        raise ValueError(f"tap bookkeeping mismatch: traced {order}, captured {sorted(flat_taps)}")
    params_by_path: dict[tuple, int] = {}
    state_by_path: dict[tuple, int] = {}
    for path, module in nnx.iter_modules(model):
        params_by_path[tuple(path)] = _count(nnx.state(module, nnx.Param))
        state_by_path[tuple(path)] = _count(nnx.state(module, nnx.BatchStat))
    modules = []
    for path, var in nnx.to_flat_state(outputs):
        module_path = tuple(path[:-1])
        value = var.get_value()[0]
        module = module_at(model, path_name(module_path))
        modules.append({
            "path": path_name(module_path) or "(model)",
            "type": type(module).__name__,
            "output_shape": list(value.shape[1:]),
            "params": params_by_path.get(module_path, 0),
            "state": state_by_path.get(module_path, 0),
        })
    rank = {p or "(model)": i for i, p in enumerate(called)}
    # in call order (as Keras lists layers; a module before the modules it calls), the whole model last
    modules.sort(key=lambda row: (row["path"] == "(model)", rank.get(row["path"], len(rank))))
    return {
        "modules": modules,
        "taps": [{"name": name, "shape": list(flat_taps[name].shape[1:]), "module": module}
                 for name, module in order.items()],
        "kernels": {name: list(k.shape) for name, k in flatten_taps(kernels).items()},
        "total_params": params_by_path.get((), 0),
        "total_state": state_by_path.get((), 0),
        "output_shape": list(out.shape[1:]),
    }


@contextlib.contextmanager
def _calls_logged(model: nnx.Module) -> Iterator[list[str]]:
    """Logs the path of every module of `model` whose `__call__` runs, in order (trace time; each class's
    `__call__` is wrapped for the duration and restored after)."""
    paths = {id(m): path_name(path) for path, m in nnx.iter_modules(model)}
    log: list[str] = []
    patched = {}
    for cls in {type(m) for m in (m for _, m in nnx.iter_modules(model))}:
        original = cls.__call__

        def logged(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            if id(self) in paths:
                log.append(paths[id(self)])
            return __original(self, *args, **kwargs)

        patched[cls] = ("__call__" in vars(cls), original)
        cls.__call__ = logged
    try:
        yield log
    finally:
        for cls, (own, original) in patched.items():
            if own:
                cls.__call__ = original
            else:
                del cls.__call__


def _count(state: nnx.State) -> int:
    return int(sum(np.prod(v.shape) for v in jax.tree.leaves(state)))


def module_at(model: nnx.Module, path: str) -> nnx.Module:
    """The submodule of `model` at `path` (`/`-separated, "" for the model itself)."""
    for p, m in nnx.iter_modules(model):
        if path_name(p) == path:
            return m
    raise KeyError(path)


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text table of `summarize`'s result, with Keras' totals of trainable and non-trainable values."""
    rows = [("module", "type", "output shape", "params", "non-trainable")]
    rows += [(m["path"], m["type"], str(tuple(m["output_shape"])), f"{m['params']:,}", f"{m.get('state', 0):,}")
             for m in summary["modules"]]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    trainable, fixed = summary.get("total_params", 0), summary.get("total_state", 0)
    lines.append(f"total: {trainable + fixed:,} values ({trainable:,} trainable parameters, {fixed:,} non-trainable "
                 "running statistics)")
    taps = ", ".join(f"{t['name']} {tuple(t['shape'])}" for t in summary["taps"])
    lines.append(f"recorded layers (after the nonlinearity): {taps}")
    return "\n".join(lines)
