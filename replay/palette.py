"""One 256-colour palette shared by every frame of a picture, and the value → palette-index lookup.

Palette layout (indices):

    0 … 110    data colours: 111 levels of the colour map, level 55 is the scale's centre
    111 … 174  64 colours for the probe images (grey levels, or a quantised palette for colour probes)
    175 … 250  unused (black)
    251        rule: light grey lines between tiles
    252        paper: the white background
    253        not-a-number (magenta: it cannot be mistaken for a value)
    254        ink: text, frames and ticks (black)
    255        transparent: "unchanged since the previous frame" in GIF frame differences

The data levels are an odd number so that the centre of a diverging scale is one exact level: a tanh
activation of exactly 0 maps to level 55, which is pure white (255, 255, 255). One level spans 1/110 of the
scale (0.018 on tanh's [−1, 1]), so a drawn colour is within 1/220 of the range of the stored value. Every
frame is quantised on its own (no carrying over from the previous frame); 111 rather than 221 levels keeps
the per-step flicker between neighbouring levels, and so the GIFs, about a third smaller (measured on the
learn_to_see conv6 GIF: 6.4 MB against 9.8 MB). Values beyond the scale are clipped to its end levels,
never rescaled.
"""

from __future__ import annotations

import functools

import numpy as np

N_LEVELS = 111
CENTRE = N_LEVELS // 2
PROBE_BASE = 111
N_PROBE_COLOURS = 64
RULE = 251
PAPER = 252
NAN = 253
INK = 254
TRANSPARENT = 255
WHITE_RGB = (255, 255, 255)
NAN_RGB = (255, 0, 255)

DIVERGING = "seismic_r"  # −1 dark red … 0 white … +1 dark blue, as in the reference pictures
SEQUENTIAL = "viridis"  # for bounded one-sided activations (sigmoid, [0, 1])


@functools.lru_cache(maxsize=None)
def colour_map(name: str) -> np.ndarray:
    """[N_LEVELS, 3] uint8: `name` sampled at N_LEVELS evenly spaced points of [0, 1], ends included."""
    from matplotlib import colormaps

    cmap = colormaps[name].resampled(N_LEVELS)  # its LUT then holds exactly these samples
    rgb = np.rint(cmap(np.arange(N_LEVELS))[:, :3] * 255).astype(np.uint8)
    return rgb


def build_palette(kind: str, probe_colours: np.ndarray | None = None) -> np.ndarray:
    """[256, 3] uint8 palette for a 'diverging' or 'sequential' data scale."""
    pal = np.zeros((256, 3), np.uint8)
    pal[:N_LEVELS] = colour_map(DIVERGING if kind == "diverging" else SEQUENTIAL)
    if probe_colours is None:
        probe_colours = grey_levels()
    pal[PROBE_BASE : PROBE_BASE + len(probe_colours)] = probe_colours
    pal[RULE] = (200, 200, 200)
    pal[PAPER] = WHITE_RGB
    pal[NAN] = NAN_RGB
    pal[INK] = (0, 0, 0)
    pal[TRANSPARENT] = WHITE_RGB
    return pal


def grey_levels(count: int = N_PROBE_COLOURS) -> np.ndarray:  # [count, 3] uint8, 0 and 255 included
    g = np.rint(np.linspace(0, 255, count)).astype(np.uint8)
    return np.repeat(g[:, None], 3, axis=1)


def symlog(x: np.ndarray | float, linthresh: float) -> np.ndarray:
    """The symmetric-log transform sign(x)·ln(1 + |x|/C), float32: linear within about ±C, logarithmic beyond."""
    x = np.asarray(x, np.float32)
    return (np.sign(x) * np.log1p(np.abs(x) / np.float32(linthresh))).astype(np.float32)


def symlog_inverse(y: np.ndarray | float, linthresh: float) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return np.sign(y) * linthresh * np.expm1(np.abs(y))


def value_to_index(values: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float,
                   linthresh: float | None = None) -> np.ndarray:
    """Palette indices (uint8, same shape) of `values` on the fixed scale [lo, hi] (broadcastable).

    Level = round((v − lo) / (hi − lo) · (N_LEVELS − 1)), clipped to the end levels; NaN → the NaN colour. With
    `linthresh` C the same rule applies to symlog(v), symlog(lo), symlog(hi) (a symmetric-log scale).
    """
    if linthresh is not None:
        values, lo, hi = symlog(values, linthresh), symlog(lo, linthresh), symlog(hi, linthresh)
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    step = np.float32(N_LEVELS - 1) / (hi - lo)
    level = np.rint((np.asarray(values, np.float32) - lo) * step)
    nan = np.isnan(level)
    has_nan = nan.any()
    if has_nan:
        level[nan] = 0
    out = np.clip(level, 0, N_LEVELS - 1, out=level).astype(np.uint8)
    if has_nan:
        out[nan] = NAN
    return out


def level_thresholds(lo: float | np.ndarray, hi: float | np.ndarray, linthresh: float | None = None) -> np.ndarray:
    """[..., N_LEVELS − 1] float32: entry k−1 is the smallest float32 value that `value_to_index` puts at level
    k or above, for each of the scales [lo, hi] (broadcast shapes [...]).

    `value_to_index` is monotone in the value, so for every non-NaN v, its level is exactly the number of
    thresholds ≤ v. That is how the browser viewer colours frames with this module's own rule: it counts
    thresholds computed here, and never restates the rule. Found by bisection over the ordered float32 bit
    patterns (33 rounds of `value_to_index` itself), so the result is exact, rounding included.
    """
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    shape = np.broadcast_shapes(lo.shape, hi.shape) + (N_LEVELS - 1,)
    want = np.broadcast_to(np.arange(1, N_LEVELS), shape)
    lo_b, hi_b = np.broadcast_to(lo[..., None], shape), np.broadcast_to(hi[..., None], shape)
    below = np.full(shape, _order_key(np.float32(-np.inf)), np.int64)  # level(value of key) < want
    above = np.full(shape, _order_key(np.float32(np.inf)), np.int64)  # level(value of key) >= want
    with np.errstate(over="ignore", invalid="ignore"):
        while np.any(above - below > 1):
            mid = (below + above) // 2
            reached = value_to_index(_from_order_key(mid), lo_b, hi_b, linthresh) >= want
            above = np.where(reached, mid, above)
            below = np.where(reached, below, mid)
    return _from_order_key(above)


def _order_key(v: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the same order as the values (−0 just below +0; NaN excluded)."""
    i = np.asarray(v, np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF) - 1, i)


def _from_order_key(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, np.int64)
    bits = np.where(k < 0, (-(k + 1)) | 0x80000000, k)
    return bits.astype(np.uint32).view(np.float32)


def probe_to_index(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices uint8 [P, H, W], colours [64, 3]) for probe images uint8 [P, H, W, 1 or 3]: `image_indices`
    with N_PROBE_COLOURS colours from PROBE_BASE on."""
    return image_indices(images, N_PROBE_COLOURS, PROBE_BASE)


def image_indices(images: np.ndarray, count: int, base: int, full: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """(indices uint8 [..., H, W], colours [count, 3]) for images [..., H, W, 1 or 3] with values in [0, full].

    Grey images use `count` evenly spaced grey levels (rounded to the nearest, never rescaled); colour images
    get a `count`-colour median-cut palette computed over all the images together. Indices start at `base`.
    """
    if images.shape[-1] == 1:
        level = np.rint(images[..., 0].astype(np.float32) * ((count - 1) / full)).astype(np.uint8)
        return level + base, grey_levels(count)
    from PIL import Image

    rgb = images if images.dtype == np.uint8 else np.rint(np.clip(images / full, 0, 1) * 255).astype(np.uint8)
    lead, (h, w) = rgb.shape[:-3], rgb.shape[-3:-1]
    strip = Image.fromarray(np.ascontiguousarray(rgb.reshape(-1, w, 3)))
    quant = strip.quantize(count, method=Image.Quantize.MEDIANCUT)
    colours = np.zeros((count, 3), np.uint8)
    used = np.asarray(quant.getpalette()[: 3 * count], np.uint8).reshape(-1, 3)
    colours[: len(used)] = used
    idx = np.asarray(quant, np.uint8).reshape(*lead, h, w)
    return idx + base, colours
