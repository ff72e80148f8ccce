"""A run's model at the steps whose weights the file stores, run again on fixed held-out images: what the
per-channel measures (compare/channels.py), the linear probes (compare/linear_probes.py) and feature visualisation
(replay/maximise.py) read.

The model is rebuilt from the run's config with `recorder.models.build_model` (model, activation, options,
input shape, class count), or is the model passed in (a run recorded through the Recorder API with its own
model class), and each stored step's weights are assigned to it. It runs in inference mode (running
statistics, no dropout), as the recorder computes frames, and returns the values its `tap`s mark: the
recorded layers, after the nonlinearity.

Which steps: every step `/weights` stores: 0 and the last by default; `--set snapshots=N` at recording time
stores N log-spaced steps (recorder/schedule.py `snapshot_steps`).

The held-out images (`measure_set`): `n` class-balanced images of the test split (round-robin over the
classes in split order, as the analysis images are chosen; the analysis images are its first ones), loaded
from the dataset the run names.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recorder.analysis import choose_analysis_probes
from recorder.capture import inference_view
from recorder.config import config_from_json
from recorder.data import load_dataset
from recorder.models import MODELS, build_model
from recorder.taps import capture_taps, flatten_taps, path_name
from recorder.train import to_inputs
from runfile.reader import Run

# held-out images the measures run on (fewer when the test split is smaller): the linear probes fit on half and
# are evaluated on the other half, so 2,000 + 2,000 give accuracies to about ±0.018 (95%) near 0.8
MEASURE_IMAGES = 4000
BATCH = 500  # images per forward pass


class SnapshotError(ValueError):
    """The run cannot be re-run: no stored weights, a model that cannot be rebuilt, missing data."""


@dataclasses.dataclass(frozen=True)
class MeasureSet:
    """Held-out images the measures are computed on."""

    images: np.ndarray  # [n, H, W, C] uint8
    labels: np.ndarray  # [n] int
    indices: np.ndarray  # [n] test-split indices
    dataset: str
    num_classes: int

    excluded: int = 0  # the run's picture probes, left out

    @property
    def rule(self) -> str:
        return (f"{len(self.labels)} test-split images of {self.dataset}, class-balanced (round-robin over the "
                f"{self.num_classes} classes in split order)"
                + (f", none of the run's {self.excluded} picture probes" if self.excluded else ""))


def measure_set(run: Run, n: int = MEASURE_IMAGES) -> MeasureSet:
    """`n` class-balanced test images of the run's dataset, none of them one of its picture probes (all the
    others if the split is smaller)."""
    c = run.config
    try:
        data = load_dataset(c.get("dataset", ""), c.get("data_dir"), c.get("synthetic_size", 4096))
    except (ValueError, OSError) as e:
        raise SnapshotError(f"{run.path}: its dataset is needed to re-run the model: {e}") from None
    k = len(data.class_names)
    probes = run.probes()[2]
    probes = probes[(probes >= 0) & (probes < len(data.test_labels))]
    candidates = np.setdiff1d(np.arange(len(data.test_labels)), probes)
    idx = candidates[choose_analysis_probes(data.test_labels[candidates], min(n, len(candidates)), k)]
    return MeasureSet(data.test_images[idx], data.test_labels[idx].astype(np.int64), idx, data.name, k, len(probes))


def _rebuilt(run: Run, shape: tuple[int, ...]) -> nnx.Module:
    c = run.config
    if c.get("model") not in MODELS:
        raise SnapshotError(f"{run.path}: model {c.get('model')!r} is not one emergence builds; pass the model "
                            "object (the same class, any weights) to measure it")
    config = config_from_json(json.dumps(c))
    return build_model(config.model, shape, len(run.class_names), config.activation, config.seed,
                       config.model_options())


class Snapshots:
    """The run's model at each stored step. `forward(step, x)` -> (logits, {layer: activation}) in float32;
    `pure()` the traceable function of (state, x) behind it, `state(step)` its weights."""

    def __init__(self, run: Run, model: nnx.Module | None = None):
        self.steps = [int(s) for s in run.weight_steps]
        if not self.steps:
            raise SnapshotError(f"{run.path} stores no weights (recorded before schema 5, or through the API "
                                "without weights=); nothing to re-run")
        self.run = run
        images, _, _ = run.probes()
        self.input_shape = tuple(images.shape[1:])
        self.model = model if model is not None else _rebuilt(run, self.input_shape)
        self.layers = list(run.layers)
        self._graphdef, template = nnx.split(self.model)
        self._template = template
        self._states: dict[int, nnx.State] = {}
        self._forward = jax.jit(self.pure())

    def state(self, step: int) -> nnx.State:
        """The model's state with the weights stored at `step` (raises SnapshotError when they do not fit)."""
        if step not in self._states:
            stored = self.run.weights(step)
            state = jax.tree.map(lambda v: v, self._template)
            seen = set()
            for path, var in nnx.to_flat_state(state):
                key = path_name(path)
                if key in stored:
                    if tuple(np.shape(stored[key])) != tuple(np.shape(var.get_value())):
                        raise SnapshotError(f"{self.run.path}: stored {key} has shape {np.shape(stored[key])}, the "
                                            f"model's is {np.shape(var.get_value())}")
                    var.set_value(jnp.asarray(stored[key], var.get_value().dtype))
                    seen.add(key)
            missing = sorted(set(stored) - seen)
            if missing:
                raise SnapshotError(f"{self.run.path}: stored weights {missing[:4]} are not in the model")
            self._states[step] = state
        return self._states[step]

    def pure(self) -> Callable[[nnx.State, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
        """(state, x float32 in [0, 1]) -> (logits, {layer: [B, H, W, C]}), traceable (jit, grad, vmap)."""
        graphdef, layers = self._graphdef, self.layers

        def forward(state: nnx.State, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
            logits, taps, _ = capture_taps(inference_view(nnx.merge(graphdef, state)))(x)
            values = flatten_taps(taps)
            return logits.astype(jnp.float32), {n: values[n].astype(jnp.float32) for n in layers}

        return forward

    def forward(self, step: int, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 images [n, H, W, C] -> (logits [n, K], {layer: [n, H, W, C]}) at `step`, float32 on the host."""
        state = self.state(step)
        parts = [jax.device_get(self._forward(state, to_inputs(jnp.asarray(images[i:i + BATCH]))))
                 for i in range(0, len(images), BATCH)]
        logits = np.concatenate([p[0] for p in parts])
        return logits, {n: np.concatenate([p[1][n] for p in parts]) for n in self.layers}

    def stacked(self, steps: list[int]) -> Any:
        """The states at `steps` stacked along a new leading axis (for vmap over training time)."""
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[self.state(s) for s in steps])
