"""Feature visualisation over training: for each channel of a layer (or each class logit), the input that
maximises it, by regularised gradient ascent, at every step whose weights the run stores.

The objective of channel c is the activation of its unit at the centre of the feature map (of a class k: its
logit, before the softmax): the mean over all positions would be degenerate, since for a near-linear layer
it depends only on the image's mean brightness. The picture is cropped to that unit's receptive field
(`receptive_box`: the pixels its gradient reaches) plus the jitter margin. Gradient ascent on the pixels (Adam, `learning_rate`), from the same mid-grey
image with faint seeded noise for every channel and every step, with three regularisers that keep the
picture an image rather than adversarial noise:

* jitter: before every iteration the image is shifted by a random offset in [-j, j] pixels in each
  direction (wrapping), so no single pixel alignment can be exploited; j = `jitter`, at most a quarter of
  the receptive field's side (a 3x3 field is not jittered);
* smoothness: every `blur_every` iterations the image is blurred with a Gaussian of σ = `blur_sigma` pixels
  before the step (high frequencies are damped; the last operation is always an ascent step);
* pixel range: after every step pixels are clipped to [0, 1], the data's range (inputs are pixels / 255).

Adam normalises the gradient's scale, so a step's tiny initial activations are optimised as well as its
large final ones, and nothing else depends on the scale. The offsets and the noise come from the seed: the
result is a deterministic function of (weights, settings). One jitted computation per layer, vectorised
over the channels (one image per channel in a batch: in inference mode the images do not interact) and over
the stored steps (vmap over the stacked weights).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from replay import font
from replay.grid import GAP, MARGIN, Stamp
from replay.palette import INK, PAPER, build_palette, image_indices
from runfile.reader import Run
from recorder.snapshots import Snapshots

LOGITS = "logits"


@dataclasses.dataclass(frozen=True)
class MaximiseSettings:
    iterations: int = 256
    learning_rate: float = 0.05
    jitter: int = 2
    blur_sigma: float = 0.5
    blur_every: int = 4
    seed: int = 0

    def describe(self, jitter: int | None = None) -> str:
        jitter = self.jitter if jitter is None else jitter
        return (f"gradient ascent: {self.iterations} it, Adam {self.learning_rate:g}, jitter {jitter} px, "
                f"blur {self.blur_sigma:g} px every {self.blur_every} it, pixels in [0, 1], seed {self.seed}")

    def validate(self) -> "MaximiseSettings":
        if self.iterations < 1 or self.blur_every < 1 or self.jitter < 0 or not self.learning_rate > 0 \
                or self.blur_sigma < 0:
            raise ValueError(f"invalid maximisation settings: {self}")
        return self


@dataclasses.dataclass
class Maximised:
    layer: str
    steps: np.ndarray  # [S]
    images: np.ndarray  # [S, C, h, w, Cin] float32 in [0, 1], cropped to `box`
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the crop in the input
    jitter: int  # the jitter used (see the module docs)
    objective: np.ndarray  # [S, iterations, C] the objective at each iteration (before its update)
    settings: MaximiseSettings


def _blur(x: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] images (radius 2σ, edges reflected)."""
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(2 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), x.dtype)
    pad = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    rows = sum(k[i] * pad[:, i:i + h, :, :] for i in range(2 * r + 1))
    return sum(k[i] * rows[:, :, i:i + w, :] for i in range(2 * r + 1))


def receptive_box(forward, state, layer: str, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the pixels that reach `layer`'s centre unit (the whole input for the logits), found
    as the support of its gradient, summed over channels and 8 random images (a max-pool passes one pixel
    of each window per image)."""
    h, w = shape[:2]
    if layer == LOGITS:
        return 0, h, 0, w
    x = jax.random.uniform(jax.random.key(0), (8, *shape))

    def centre(x):
        a = forward(state, x)[1][layer]
        return jnp.sum(a[:, a.shape[1] // 2, a.shape[2] // 2, :])

    support = np.asarray(jnp.sum(jnp.abs(jax.grad(centre)(x)), axis=(0, 3))) > 0
    if not support.any():
        return 0, h, 0, w
    ys, xs = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def _ascend(forward, layer: str, settings: MaximiseSettings, shape: tuple[int, ...], count: int, jitter: int):
    """The jittable (state) -> (images [count, *shape], objective [iterations, count]) of one step's weights."""
    tx = optax.adam(settings.learning_rate)
    key = jax.random.key(settings.seed)
    noise_key, jitter_key = jax.random.split(key)
    x0 = 0.5 + 0.01 * jax.random.normal(noise_key, (count, *shape), jnp.float32)
    offsets = jax.random.randint(jitter_key, (settings.iterations, 2), -jitter, jitter + 1)
    index = jnp.arange(count)

    def objective(x: jax.Array, state) -> tuple[jax.Array, jax.Array]:
        logits, acts = forward(state, x)
        if layer == LOGITS:
            per = logits[index, index]
        else:
            a = acts[layer]
            per = a[index, a.shape[1] // 2, a.shape[2] // 2, index]  # image i: channel i's centre unit
        return jnp.sum(per), per

    def run(state):
        def body(carry, it):
            x, opt = carry
            x = jax.lax.cond((it > 0) & (it % settings.blur_every == 0), lambda v: _blur(v, settings.blur_sigma),
                             lambda v: v, x)  # before the step: the result is an ascent step's, not a blur's
            dy, dx = offsets[it, 0], offsets[it, 1]
            shifted = jnp.roll(x, (dy, dx), axis=(1, 2))
            (_, per), g = jax.value_and_grad(objective, has_aux=True)(shifted, state)
            g = jnp.roll(g, (-dy, -dx), axis=(1, 2))
            updates, opt = tx.update(-g, opt)
            x = jnp.clip(optax.apply_updates(x, updates), 0.0, 1.0)
            return (x, opt), per

        (x, _), trace = jax.lax.scan(body, (x0, tx.init(x0)), jnp.arange(settings.iterations))
        return x, trace

    return run


def maximise(snaps: Snapshots, layer: str, steps: list[int] | None = None,
             settings: MaximiseSettings = MaximiseSettings()) -> Maximised:
    """The maximising inputs of every channel of `layer` (or of each class when layer == "logits") at `steps`
    (default: every stored step)."""
    settings.validate()
    steps = list(snaps.steps if steps is None else steps)
    if layer != LOGITS and layer not in snaps.layers:
        raise ValueError(f"no layer {layer!r}; layers: {', '.join(snaps.layers)} (or {LOGITS})")
    count = len(snaps.run.class_names) if layer == LOGITS else snaps.run.layer_shape(layer)[-1]
    forward = snaps.pure()
    y0, y1, x0, x1 = receptive_box(forward, snaps.state(steps[-1]), layer, snaps.input_shape)
    jitter = min(settings.jitter, min(y1 - y0, x1 - x0) // 4)
    h, w = snaps.input_shape[:2]
    box = (max(0, y0 - jitter), min(h, y1 + jitter), max(0, x0 - jitter), min(w, x1 + jitter))
    run = _ascend(forward, layer, settings, snaps.input_shape, count, jitter)
    images, trace = jax.device_get(jax.jit(jax.vmap(run))(snaps.stacked(steps)))
    images = np.asarray(images)[:, :, box[0]:box[1], box[2]:box[3], :]
    return Maximised(layer, np.asarray(steps), images, box, jitter, np.asarray(trace), settings)


# -- pictures --------------------------------------------------------------------------------------------------
TILE_PX = 56  # a tile's side at zoom 1, before rounding down to a whole enlargement factor
IMAGE_COLOURS = 200  # palette indices 0..199: the images (grey ramp or a median-cut colour palette)


def _palette_and_indices(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[S, C, h, w, Cin] in [0, 1] -> (palette [256, 3], indices [S, C, h, w]). Grey images: a fixed ramp of
    IMAGE_COLOURS levels (no rescaling); colour images: one median-cut palette over every tile."""
    pal = build_palette("diverging")
    index, colours = image_indices(images, IMAGE_COLOURS, 0, full=1.0)
    pal[:IMAGE_COLOURS] = colours
    return pal, index


class MaximiseFrames:
    """The frames of one `Maximised`: a title, the step (a `Stamp`, readable back with font.read_text), the
    method in words, and one labelled tile per channel (class) in a near-square grid."""

    def __init__(self, m: Maximised, title: str, labels: list[str], zoom: int = 1):
        self.m = m
        self.palette, self._index = _palette_and_indices(m.images)
        h, w = m.images.shape[2:4]
        f = max(1, TILE_PX // max(h, w)) * zoom
        self._f = f
        tile = (h * f, w * f)
        count = m.images.shape[1]
        cols = int(np.ceil(np.sqrt(count)))
        rows = int(np.ceil(count / cols))
        line = font.CELL_H
        pitch = (tile[0] + line + GAP, tile[1] + 2 * GAP)
        method = self._method_lines(m)
        self.stamp = Stamp(MARGIN + line, MARGIN, 1, len(str(int(m.steps.max()))))
        top = MARGIN + (2 + len(method)) * line + GAP
        width = max(MARGIN + cols * pitch[1], MARGIN + max(font.text_size(t)[1] for t in [title, *method])) + MARGIN
        self.shape = (top + rows * pitch[0] + MARGIN, width)
        canvas = np.full(self.shape, PAPER, np.uint8)
        font.draw_text(canvas, title, MARGIN, MARGIN, INK)
        for i, text in enumerate(method):
            font.draw_text(canvas, text, MARGIN + (2 + i) * line, MARGIN, INK)
        self._boxes = []
        for k in range(count):
            y = top + (k // cols) * pitch[0]
            x = MARGIN + (k % cols) * pitch[1]
            font.draw_text(canvas, font.fit_text(labels[k], tile[1]), y, x, INK)
            self._boxes.append((y + line, x))
        self._template = canvas
        self._tile = tile

    @staticmethod
    def _method_lines(m: Maximised) -> list[str]:
        s = m.settings
        y0, y1, x0, x1 = m.box
        return [f"GRADIENT ASCENT {s.iterations} IT, ADAM {s.learning_rate:g}, JITTER {m.jitter} PX, BLUR "
                f"{s.blur_sigma:g} PX EVERY {s.blur_every} IT, SEED {s.seed}",
                f"PIXELS IN [0, 1] (BLACK 0, WHITE 1), CROP Y {y0}:{y1} X {x0}:{x1}"]

    def __call__(self, positions: np.ndarray):
        for p in positions:
            frame = self._template.copy()
            font.draw_text(frame, self.stamp.step_text(int(self.m.steps[p])), self.stamp.y, self.stamp.x, INK)
            for k, (y, x) in enumerate(self._boxes):
                up = self._index[p, k].repeat(self._f, 0).repeat(self._f, 1)
                frame[y:y + self._tile[0], x:x + self._tile[1]] = up
            yield frame


def write_maximise_gifs(run: Run, out: str | Path, layers: list[str] | None = None,
                        settings: MaximiseSettings = MaximiseSettings(), zoom: int = 1, fps: float = 4.0,
                        log: Callable[[str], None] = lambda s: None) -> list[tuple[Path, str, tuple[int, int]]]:
    """One GIF per layer of the open `run` (default: every recorded layer, then the logits): the maximising
    inputs at every stored step. Returns [(gif, caption, (width, height))]."""
    from replay.animate import write_animation
    from replay.gif import frame_duration_ms

    out = Path(out)
    written = []
    snaps = Snapshots(run)
    names = list(layers) if layers else [*run.layers, LOGITS]
    unknown = [n for n in names if n != LOGITS and n not in run.layers]
    if unknown:
        raise ValueError(f"--maximise: no layer {', '.join(unknown)}; layers: {', '.join(run.layers)}, {LOGITS}")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        m = maximise(snaps, name, settings=settings)
        if name == LOGITS:
            title, labels = "LOGITS: THE INPUT THAT MAXIMISES EACH CLASS", [c.replace("°", "") for c in run.class_names]
        else:
            title = f"{name} {run.activation_label(name)}: THE INPUT THAT MAXIMISES EACH CHANNEL'S CENTRE UNIT"
            labels = [f"C{c}" for c in range(m.images.shape[1])]
        frames = MaximiseFrames(m, title, labels, zoom)
        gif = out / f"maximise_{name.replace('/', '_')}.gif"
        anim = write_animation(frames, np.arange(len(m.steps)), gif, frame_duration_ms(fps), None)
        gain = m.objective[:, -1, :] - m.objective[:, 0, :]
        caption = (f"{name}: what each {'class' if name == LOGITS else 'channel'} responds to most, at the "
                   f"{len(m.steps)} stored steps {m.steps[0]}-{m.steps[-1]}; {settings.describe(m.jitter)}; the objective "
                   f"rose in {np.mean(gain > 0):.0%} of (step, {'class' if name == LOGITS else 'channel'}) pairs.")
        log(f"{gif.name}  {anim.frames} frames  {anim.bytes / 1e6:.2f} MB")
        written.append((gif, caption, frames.shape[::-1]))
    return written
