"""How far a layer's weights moved: from the weights a run file stores (schema 5, `/weights`), and over time
from the per-layer scalars the training step records (`<layer>/weight_change`, recorder/train.py).

relative change = ‖W_b − W_a‖ / ‖W_a‖ over every parameter (`Param`: kernels, biases, BatchNorm scales and
offsets; not running statistics) of the module that computes the layer (the summary's `module` of its tap),
between two stored steps: by default the first (the initial model, or the weights it was initialised from)
and the last. 0 exactly when nothing changed (a frozen layer); None when the file cannot say (no weights
stored, or a tap that names no module).
"""

from __future__ import annotations

import numpy as np

from compare.settling import settled_at
from runfile.reader import Run

MEASURES = ("weight_change", "update_ratio", "grad_norm")  # the per-layer series of docs/run_schema.md


def layer_module(run: Run, layer: str) -> str | None:
    return next((t.get("module") for t in run.summary.get("taps", []) if t["name"] == layer), None)


def layer_params(run: Run, layer: str) -> list[str]:
    """Paths of the parameters of `layer`'s module (empty when unknown)."""
    module = layer_module(run, layer)
    if module is None:
        return []
    return [s["path"] for s in run.weight_specs if s["kind"] == "Param" and s["path"].startswith(module + "/")]


def weight_change(run: Run, layer: str, start: int | None = None, end: int | None = None) -> float | None:
    """‖W_end − W_start‖ / ‖W_start‖ of `layer`'s parameters (see the module docs)."""
    steps = run.weight_steps
    paths = layer_params(run, layer)
    if len(steps) < 2 or not paths:
        return None
    a = run.weights(int(steps[0]) if start is None else start, paths)
    b = run.weights(int(steps[-1]) if end is None else end, paths)
    before = np.concatenate([a[p].ravel() for p in paths]).astype(np.float64)
    after = np.concatenate([b[p].ravel() for p in paths]).astype(np.float64)
    norm = np.linalg.norm(before)
    return float(np.linalg.norm(after - before) / norm) if norm > 0 else None


def weight_series(run: Run, layers: list[str]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{layer: {measure: (steps, values)}} of the per-step layer measures recorded (empty dicts where none)."""
    scalars = run.scalars()
    return {layer: {m: scalars[f"{layer}/{m}"] for m in MEASURES if f"{layer}/{m}" in scalars} for layer in layers}


def weight_settled(series: dict[str, tuple[np.ndarray, np.ndarray]], level: float) -> int | None:
    """The first step from which a layer's weight change from init (`series`: one layer's `weight_series`)
    stays at or above `level` of its final value: when the weights had travelled that share of their way
    (None without the series or movement)."""
    change = series.get("weight_change")
    if change is None or not len(change[1]) or not change[1][-1] > 0:
        return None
    return settled_at(change[0], change[1] / change[1][-1], level)
