"""Transfer learning for the built-in loop: start from other weights (`init_from`), keep layers fixed
(`freeze`).

- **init_from** (`recorder/weights.py` reads the sources): every weight of the model is taken from the
  source, except a head whose shape differs (another class count), which keeps its fresh initialisation.
  The head is the last module the forward pass calls that has parameters and returns the model's output
  shape (`head_path`).
- **freeze** names layers by their tap (`conv1`: the module whose kernel the tap records, or the `source`
  it names) or by module path (`dense1`, `blocks/0`, as the model summary lists them). Their parameters get
  no update: the optimiser is Optax's `multi_transform` with `set_to_zero` for them (no optimiser state is
  kept for them either). In training they run in inference mode, as Keras runs a frozen BatchNorm: running
  statistics fixed, no dropout. So a frozen layer's weights and statistics stay bitwise what they were.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import optax
from flax import nnx

from recorder.taps import path_name
from recorder.weights import assign, flat_weights, match_weights, read_weights


def head_path(summary: Mapping[str, Any]) -> str | None:
    """The output layer's module path (see the module docs), or None if no module fits."""
    out = summary.get("output_shape")
    heads = [m["path"] for m in summary.get("modules", [])
             if m["path"] != "(model)" and m["params"] and m["output_shape"] == out]
    return heads[-1] if heads else None


def initialise(model: nnx.Module, source: str, summary: Mapping[str, Any]) -> str:
    """Loads `source` (see recorder/weights.py) into `model` in place; returns what was done, in one line.
    Raises WeightsError when the source cannot be read or does not fit."""
    assignment = match_weights(flat_weights(model), read_weights(source), head_path(summary))
    assign(model, assignment.values)
    return assignment.note


def frozen_paths(names: Sequence[str], summary: Mapping[str, Any]) -> tuple[str, ...]:
    """Module paths of the layers named in `names` (tap names or module paths); raises ValueError naming the
    valid ones otherwise."""
    by_tap = {t["name"]: t.get("module") for t in summary.get("taps", []) if t.get("module")}
    modules = [m["path"] for m in summary.get("modules", []) if m["path"] != "(model)" and m["params"]]
    out = []
    for name in names:
        if name in by_tap:
            out.append(by_tap[name])
        elif name in modules:
            out.append(name)
        else:
            raise ValueError(f"freeze: no layer {name!r}; name a recorded layer ({', '.join(by_tap) or 'none'}) or a "
                             f"module with parameters ({', '.join(modules)})")
    return tuple(dict.fromkeys(out))


def freezing(tx: optax.GradientTransformation, params: nnx.State,
             frozen: Sequence[str]) -> optax.GradientTransformation:
    """`tx` for every parameter but those under the `frozen` module paths, which get zero updates."""
    if not frozen:
        return tx

    def label(keypath: tuple, _: Any) -> str:
        path = path_name(keypath) + "/"
        return "frozen" if any(path.startswith(f + "/") for f in frozen) else "trained"

    labels = jax.tree_util.tree_map_with_path(label, params)
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)

