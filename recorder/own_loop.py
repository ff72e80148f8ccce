"""What the built-in loop does for itself, made available to a loop of your own through `Recorder`.

- `canonical_config`: the user's config, with the common keys under the names the file and every reader use
  (`lr` → `learning_rate`, `batch` → `batch_size`, …) and every other key kept verbatim.
- `LiveAnalysis`: the analysis batch (the held-out images `emergence compare` measures similarity on) computed
  by the recorder itself at the analysis steps, from the NNX model your loop updates in place, so that an
  own-loop run can be compared without touching the training step. It checks once, at the first analysis
  step after step 0, that the model it reads is the one the loop trains (the frame it computes must equal
  the frame the step computed), and refuses the run otherwise.
- `pixel_map`: how the loop turns pixels into model inputs, read off the probes (a per-channel affine map:
  `/ 255`, mean and standard deviation, …), so the analysis images are prepared the same way.
- `measure_split`: loss and accuracy of a predict function over a whole split, in batches.
- `progress`: a progress bar around any iterable of steps.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from recorder.capture import Capture
from recorder.progress import Progress

# name in the run file (what `info`, the viewer and compare read) <- names a loop's config commonly uses
CONFIG_ALIASES = {
    "learning_rate": ("learning_rate", "lr", "learning-rate", "learningrate", "eta"),
    "batch_size": ("batch_size", "batch", "batch-size", "batchsize", "bs"),
    "seed": ("seed", "random_seed", "rng_seed"),
    "optimizer": ("optimizer", "optimiser", "opt"),
    "activation": ("activation", "act", "nonlinearity"),
    "dataset": ("dataset", "data", "data_set"),
    "model": ("model", "arch", "architecture", "model_name"),
}


class OwnLoopError(ValueError):
    """A loop's input that the recorder cannot use as given."""


def canonical_config(config: Mapping[str, Any], **known: Any) -> dict[str, Any]:
    """`config` with each common key under its file name (CONFIG_ALIASES) and every other key verbatim. `known`
    fills a common key the config does not give (values the recorder knows: the probes' data set, the capture's
    model class); two spellings of one key with different values are an error."""
    out: dict[str, Any] = {}
    taken: dict[str, str] = {}
    for key, value in config.items():
        name = next((n for n, aliases in CONFIG_ALIASES.items() if str(key).lower() in aliases), str(key))
        if name in taken and out[name] != value:
            raise OwnLoopError(f"config gives {name} twice: {taken[name]}={out[name]!r} and {key}={value!r}")
        out[name], taken[name] = value, str(key)
    for name, value in known.items():
        if out.get(name) is None and value not in (None, ""):
            out[name] = value
    return out


def pixel_map(pixels: np.ndarray, inputs: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The per-channel affine map `inputs = a·pixels + b` that turns the probes' uint8 pixels into the model
    inputs the capture was built with, as a function of uint8 images; None if there is none (a different
    shape, a non-affine preprocessing, or a channel whose pixels are all equal so `a` is undetermined)."""
    x = np.asarray(inputs, np.float64)
    u = np.asarray(pixels, np.float64)
    if x.shape != u.shape or x.ndim != 4:
        return None
    scale, shift = np.zeros(u.shape[-1]), np.zeros(u.shape[-1])
    for c in range(u.shape[-1]):
        uc, xc = u[..., c].ravel(), x[..., c].ravel()
        if np.ptp(uc) == 0:
            return None
        a, b = np.polyfit(uc, xc, 1)
        if np.max(np.abs(a * uc + b - xc)) > 1e-5 * max(1.0, float(np.max(np.abs(xc)))):
            return None
        scale[c], shift[c] = a, b
    dtype = np.asarray(inputs).dtype if np.issubdtype(np.asarray(inputs).dtype, np.floating) else np.float32
    return lambda images: (np.asarray(images, np.float64) * scale + shift).astype(dtype)


def jitted_capture(capture: Capture, model: Any) -> Callable[..., Any]:
    """The capture as its own jitted program; NNX models travel split into graph and state."""
    from flax import nnx

    if isinstance(model, nnx.Module):
        graphdef = nnx.graphdef(model)
        run = jax.jit(lambda state, x, a: capture(nnx.merge(graphdef, state), x, a))
        return lambda m, x, a: run(nnx.state(m), x, a)
    return jax.jit(capture.__call__)


def _relative_error(ours: jax.Array, theirs: jax.Array) -> jax.Array:
    a, b = jnp.asarray(ours, jnp.float32), jnp.asarray(theirs, jnp.float32)
    return jnp.sqrt(jnp.sum((a - b) ** 2) / (jnp.sum(b**2) + 1e-30))


class LiveAnalysis:
    """Adds the analysis batch to the frames of the analysis steps, computed from `capture.model` (the live
    NNX model) on `analysis_x`, in one more jitted forward pass per analysis step."""

    def __init__(self, capture: Capture, probe_x: Any, analysis_x: np.ndarray):
        self.capture = capture
        self.model = capture.model
        self.probe_x = jnp.asarray(probe_x)
        self.analysis_x = jnp.asarray(analysis_x)
        self._forward = jitted_capture(capture, self.model)
        self._checked = False
        eps = float(jnp.finfo(capture.dtype).eps)
        self.tolerance = max(4 * eps, 1e-4)  # two programs' rounding differs; a stale model differs by far more

    def add(self, step: int, frame: Mapping[str, Any]) -> dict[str, Any]:
        ours = self._forward(self.model, self.probe_x, self.analysis_x)
        if not self._checked and step > 0:
            self._check(step, frame, ours)
        return {**frame, **{k: v for k, v in ours.items() if k.startswith("analysis/")}}

    def _check(self, step: int, frame: Mapping[str, Any], ours: Mapping[str, Any]) -> None:
        """One sync per run: the live model's frame equals the step's own frame."""
        layers = [l.name for l in self.capture.layers]
        worst = float(jnp.max(jnp.stack([_relative_error(ours[n], frame[n]) for n in layers])))
        if not worst <= self.tolerance:
            raise OwnLoopError(
                f"step {step}: the model given to Capture.nnx is not the model the loop trains (its frame differs "
                f"from the step's by {worst:.2g}, relative). The recorder computes the analysis batch from that "
                "model, which your step must update in place (nnx.jit with the model as an argument) and capture "
                "after the update. Otherwise pass analysis=None, or analysis=Probes(...) and call "
                "capture(model, probe_x, analysis_x) at the steps where rec.should_analyse(step)")
        self._checked = True


def auto_analysis(probes: Any, capture: Capture) -> tuple[Any, LiveAnalysis | None, str]:
    """(the analysis Probes, the LiveAnalysis that computes them, "") when the recorder can analyse by itself,
    else (None, None, why not)."""
    if probes.analysis is None:
        return None, None, "the probes do not come from a data set (Probes.from_dataset picks the analysis set too)"
    if capture.model is None or capture.example_x is None:
        return None, None, f"a {capture.mode} capture has no live model to re-run (NNX captures do)"
    probe_x = capture.example_x
    prepare = pixel_map(probes.images, probe_x)
    if prepare is None:
        return None, None, ("the model's inputs are not a per-channel affine map of the probes' pixels, so the "
                            "analysis images cannot be prepared the same way")
    return probes.analysis, LiveAnalysis(capture, probe_x, prepare(probes.analysis.images)), ""


def measure_split(predict: Callable[[np.ndarray], Any], images: np.ndarray, labels: np.ndarray,
                 batch_size: int = 1000) -> tuple[float, float, int]:
    """(mean cross-entropy, accuracy, count) of `predict(uint8 images) -> logits` over a whole split, in batches
    of `batch_size` (the loss from the logits in float64, so every loop's test loss means the same)."""
    labels = np.asarray(labels)
    if len(images) != len(labels) or not len(labels):
        raise OwnLoopError(f"measure_split needs one label per image and at least one image; got {len(images)} images "
                           f"and {len(labels)} labels")
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = np.asarray(predict(images[start:start + batch_size]), np.float64)
        y = labels[start:start + batch_size]
        if logits.shape != (len(y), logits.shape[-1]) or logits.ndim != 2:
            raise OwnLoopError(f"predict must return logits [batch, classes]; got shape {logits.shape} for {len(y)} images")
        shifted = logits - logits.max(-1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total_loss -= float(log_softmax[np.arange(len(y)), y].sum())
        correct += int((logits.argmax(-1) == y).sum())
    return total_loss / len(labels), correct / len(labels), len(labels)


def progress(steps: Iterable[int], total: int, latest: Callable[[], Mapping[str, float]],
             enabled: bool = True, stream: Any = None) -> Iterator[int]:
    """Yields `steps`, drawing a progress line after each: the step, the latest training loss and accuracy
    that reached the host (`latest()`, never a device value), steps/s and ETA."""
    bar = Progress(total, stream=stream, enabled=enabled)
    step = None
    try:
        for step in steps:
            yield step
            last = latest()
            bar.update(step, last.get("loss"), last.get("accuracy"))
    finally:
        if step is not None:
            last = latest()
            bar.update(step, last.get("loss"), last.get("accuracy"), force=True)
        bar.close()
