"""A Keras-`summary()`-like shape trace of a model, computed abstractly (no FLOPs spent)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recorder.taps import call_order, capture_taps, flatten_taps, tap_names_in_call_order


class _Output(nnx.Intermediate):
    """Every submodule's `__call__` output, for the shape trace."""


def summarize(model: nnx.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Returns {"modules": [...], "taps": [...], "kernels": {...}, "total_params": int} for one input.

    `modules` lists every submodule with parameters or an output: path, type, output shape (batch 1)
    and parameter count. `taps` lists the tapped layers in the order the forward pass calls them.
    """
    graphdef, state = nnx.split(model)
    order: list[str] = []

    def trace(state: nnx.State, x: jax.Array):
        m = nnx.merge(graphdef, state)
        with call_order() as log:
            out, taps, kernels, outputs = capture_taps(m, _Output, method_outputs=_Output)(x)
        order.extend(tap_names_in_call_order(m, log))
        return out, taps, kernels, outputs

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    out, taps, kernels, outputs = jax.eval_shape(trace, state, x)
    flat_taps = flatten_taps(taps)
    if set(order) != set(flat_taps):
        raise ValueError(f"tap bookkeeping mismatch: traced {order}, captured {sorted(flat_taps)}")
    params_by_path: dict[tuple, int] = {}
    for path, module in nnx.iter_modules(model):
        own = nnx.state(module, nnx.Param)
        params_by_path[tuple(path)] = int(sum(np.prod(v.shape) for v in jax.tree.leaves(own)))
    modules = []
    for path, var in nnx.to_flat_state(outputs):
        module_path = tuple(path[:-1])
        value = var.get_value()[0]
        module = _module_at(model, module_path)
        modules.append({
            "path": "/".join(str(p) for p in module_path) or "(model)",
            "type": type(module).__name__,
            "output_shape": list(value.shape[1:]),
            "params": params_by_path.get(module_path, 0),
        })
    modules.sort(key=lambda row: row["path"] == "(model)")  # the whole model last, as a total row
    return {
        "modules": modules,
        "taps": [{"name": name, "shape": list(flat_taps[name].shape[1:])} for name in order],
        "kernels": {name: list(k.shape) for name, k in flatten_taps(kernels).items()},
        "total_params": params_by_path.get((), 0),
        "output_shape": list(out.shape[1:]),
    }


def _module_at(model: nnx.Module, path: tuple) -> nnx.Module:
    for p, m in nnx.iter_modules(model):
        if tuple(p) == path:
            return m
    raise KeyError(path)


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text table of `summarize`'s result."""
    rows = [("module", "type", "output shape", "params")]
    rows += [(m["path"], m["type"], str(tuple(m["output_shape"])), f"{m['params']:,}") for m in summary["modules"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    taps = ", ".join(f"{t['name']} {tuple(t['shape'])}" for t in summary["taps"])
    lines.append(f"recorded layers (after the nonlinearity): {taps}")
    return "\n".join(lines)
