"""The picture of one layer at one step: probe images, one tile per (channel, probe), a stamp and a colour bar.

    ┌──────────────────────────────────────────┐
    │ CONV3  TANH                               │  title
    │ STEP 120  TRAIN ACC 0.781  EVAL ACC 0.774 │  stamp (changes every frame)
    │      T-SHIRT/TOP TROUSER ...              │  column labels, whole (turned upright when a column is narrower)
    │      [probe images, one per column]       │
    │ C0   [tile][tile][tile] ...               │  one row per channel (columns with --transpose)
    │ C1   ...                                  │
    │      [colour bar]  -1   0   +1            │  the scale, with its rule
    └──────────────────────────────────────────┘

Everything except the tiles and the stamp is drawn once into a template. A frame is a copy of the template
with the tiles written through a strided view of the canvas: each feature map is upscaled by an integer
factor (pixel replication, factor = input size // map size × zoom) by broadcasting, never interpolated.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from replay import font
from replay.palette import CENTRE, INK, N_LEVELS, PAPER, RULE, value_to_index
from replay.scales import Scale, format_value

MARGIN = 4
GAP = 2
BAR_HEIGHT = 8
BAR_LEVEL_PX = 2
BLOCK_GAP = 12  # paper between blocks of channels  # each colour level is this many pixels wide in the colour bar


@dataclasses.dataclass(frozen=True)
class GridStyle:
    zoom: int = 1
    transpose: bool = False  # rows = probes, columns = channels
    wrap: bool = True  # wide layers: channel rows in side-by-side blocks, the grid near square (choose_blocks)
    text_scale: int = 1


@dataclasses.dataclass(frozen=True)
class Stamp:
    """Where a frame's step is drawn, so that tests can read it back with `font.read_text`."""

    y: int
    x: int
    scale: int
    step_digits: int

    def step_text(self, step: int) -> str:
        return f"STEP {step:>{self.step_digits}d}"


class LayerGrid:
    def __init__(
        self,
        title: str,
        probe_labels: Sequence[str],  # [P]
        map_shape: tuple[int, int],  # (H, W) of the layer's feature maps
        channels: Sequence[int],  # the channel numbers shown, in order
        scale: Scale,
        max_step: int,
        style: GridStyle = GridStyle(),
        probe_index: np.ndarray | None = None,  # uint8 [P, Hi, Wi] palette indices of the probe images
        cell_size: tuple[int, int] | None = None,  # (Hi, Wi) when there are no probe images
        channel_prefix: str = "C",
    ):
        self.scale = scale
        self.style = style
        ts = style.text_scale
        line = font.CELL_H * ts
        p = len(probe_labels)
        hi, wi = probe_index.shape[1:] if probe_index is not None else cell_size
        hm, wm = map_shape
        self.num_probes, self.num_channels = p, len(channels)
        self.factor = (max(1, hi // hm), max(1, wi // wm))
        fy, fx = self.factor[0] * style.zoom, self.factor[1] * style.zoom
        self._f = (fy, fx)
        tile = (hm * fy, wm * fx)
        shown = (hi * style.zoom, wi * style.zoom)
        cell = (max(tile[0], shown[0]), max(tile[1], shown[1]))
        self._tile_off = ((cell[0] - tile[0]) // 2, (cell[1] - tile[1]) // 2)
        pitch = (cell[0] + GAP, cell[1] + GAP)

        channel_labels = [f"{channel_prefix}{c}" for c in channels]
        if scale.per_channel:
            channel_labels = [f"{channel_prefix}{c} {format_value(float(s))}" for c, s in zip(channels, scale.hi)]
        if style.transpose:
            row_labels, col_labels = list(probe_labels), channel_labels
        else:
            row_labels, col_labels = channel_labels, list(probe_labels)
        label_w = max(len(s) for s in [*row_labels, "C0"]) * font.CELL_W * ts + GAP
        # column labels are never cut: a label wider than its column turns upright, reading bottom to top
        upright = any(font.text_size(t, ts)[1] > pitch[1] - GAP for t in col_labels)
        labels_h = max(font.text_size(t, ts)[1] for t in col_labels) + 2 * GAP if upright else line

        # vertical layout
        y = MARGIN
        self._title_y = y
        y += line
        self.stamp = Stamp(y, MARGIN, ts, len(str(max(int(max_step), 0))))
        y += line + GAP
        labels_y = y
        y += labels_h
        skip = (pitch[0] + 2 * GAP, pitch[1] + 2 * GAP) if probe_index is not None else (0, 0)
        if style.transpose:  # probe images form the first column, channels the next ones
            blocks, n_rows, n_cols = 1, p, len(channels)
            probes_at = (y, MARGIN + label_w)
            grid_y = y
        else:  # probe images form the first row of each block of channels
            extra_h = pitch[0] + labels_h - line  # the probe row, and upright labels' taller band
            blocks = choose_blocks(len(channels), p, pitch, label_w, extra_h) if style.wrap else 1
            n_rows, n_cols = -(-len(channels) // blocks), p
            probes_at = (y, MARGIN + label_w)
            grid_y = y + skip[0]
        grid_h, grid_w = n_rows * pitch[0], n_cols * pitch[1]
        block_w = label_w + grid_w + (BLOCK_GAP if blocks > 1 else 0)
        grid_x0 = MARGIN + label_w + (skip[1] if style.transpose else 0)
        self._blocks_x = [grid_x0 + b * block_w for b in range(blocks)]  # each block's first tile column
        bar_y = grid_y + grid_h + GAP
        height = bar_y + BAR_HEIGHT * ts + GAP + 2 * line + MARGIN
        stamp_w = font.text_size(self.stamp.step_text(0) + "  TRAIN ACC 0.000  EVAL ACC 0.000", ts)[1]
        bar_w = N_LEVELS * BAR_LEVEL_PX
        rule_w = font.text_size(scale.short, ts)[1]
        grid_right = self._blocks_x[-1] + grid_w
        width = max(grid_right, MARGIN + max(stamp_w, bar_w, rule_w, font.text_size(title, ts)[1])) + MARGIN
        self.shape = (height, width)
        self.blocks, self.rows_per_block = blocks, n_rows

        canvas = np.full(self.shape, PAPER, np.uint8)
        font.draw_text(canvas, title, self._title_y, MARGIN, INK, ts)
        self.column_labels: list[tuple[str, int, int, bool]] = []  # (text, y, x, upright) as drawn: tests read them
        oy, ox = (cell[0] - shown[0]) // 2, (cell[1] - shown[1]) // 2
        for b, bx in enumerate(self._blocks_x):
            px = bx - (skip[1] if style.transpose else 0)  # where this block's probe images start
            # probe images, upscaled by zoom
            for k in range(p if probe_index is not None else 0):
                probe_px = probe_index[k].repeat(style.zoom, axis=0).repeat(style.zoom, axis=1)  # [Hi*z, Wi*z]
                y0 = probes_at[0] + (k * pitch[0] if style.transpose else 0) + oy
                x1 = px + (0 if style.transpose else k * pitch[1]) + ox
                canvas[y0 : y0 + shown[0], x1 : x1 + shown[1]] = probe_px
            # labels
            shown_rows = row_labels if style.transpose else row_labels[b * n_rows : (b + 1) * n_rows]
            for j, text in enumerate(col_labels):
                cx = (bx if style.transpose else px) + j * pitch[1]
                if upright:  # centred in its column, bottoms aligned just above the grid
                    cx += max(0, (pitch[1] - GAP - font.GLYPH_H * ts) // 2)
                    font.draw_text_up(canvas, text, labels_y + labels_h - GAP, cx, INK, ts)
                    self.column_labels.append((text, labels_y + labels_h - GAP, cx, True))
                else:
                    font.draw_text(canvas, text, labels_y, cx, INK, ts)
                    self.column_labels.append((text, labels_y, cx, False))
            for i, text in enumerate(shown_rows):
                cy = (probes_at[0] if style.transpose else grid_y) + i * pitch[0] + (cell[0] - font.GLYPH_H * ts) // 2
                lx = bx - label_w - (skip[1] if style.transpose else 0)
                font.draw_text(canvas, text, cy, lx, INK, ts)
            rows_here = n_rows if style.transpose else len(shown_rows)
            canvas[grid_y - GAP // 2 : grid_y + rows_here * pitch[0] - GAP // 2,
                   bx - GAP // 2 : bx + grid_w - GAP // 2] = RULE
        self._bar = (bar_y, MARGIN + label_w if MARGIN + label_w + bar_w + MARGIN <= width else MARGIN, ts)
        draw_colour_bar(canvas, scale, *self._bar)
        self.template = canvas

        # where the tiles go: see _tile_view
        self._grid_y, self._grid_hw, self._pitch, self._cell = grid_y, (grid_h, grid_w), pitch, cell
        self._rows_cols = (n_rows, n_cols)
        self._map_shape = (hm, wm)
        assert np.shares_memory(self._tile_view(canvas), canvas)  # a view: writes reach the canvas

    def _tile_view(self, canvas: np.ndarray, block: int = 0) -> np.ndarray:
        """[rows, H, fy, cols, W, fx] view of `canvas` onto the tile pixels of one block (writes reach it)."""
        gy, gx, (gh, gw) = self._grid_y, self._blocks_x[block], self._grid_hw
        n_rows, n_cols = self._rows_cols
        area = canvas[gy : gy + gh, gx : gx + gw].reshape(n_rows, self._pitch[0], n_cols, self._pitch[1])
        oy, ox = self._tile_off
        (hm, wm), (fy, fx) = self._map_shape, self._f
        tiles = area[:, oy : oy + hm * fy, :, ox : ox + wm * fx]
        return tiles.reshape(n_rows, hm, fy, n_cols, wm, fx)

    def tile_box(self, probe: int, channel: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the tile of the `probe`-th shown probe and `channel`-th shown channel."""
        block, row, col = (0, probe, channel) if self.style.transpose else (
            channel // self.rows_per_block, channel % self.rows_per_block, probe)
        y0 = self._grid_y + row * self._pitch[0] + self._tile_off[0]
        x0 = self._blocks_x[block] + col * self._pitch[1] + self._tile_off[1]
        (hm, wm), (fy, fx) = self._map_shape, self._f
        return y0, y0 + hm * fy, x0, x0 + wm * fx

    def indices(self, acts: np.ndarray) -> np.ndarray:
        """Palette indices uint8 [..., P, H, W, C] of activations on this grid's fixed scale."""
        return value_to_index(acts, self.scale.lo, self.scale.hi, self.scale.linthresh)

    def render(self, index: np.ndarray, stamp: str, scale: Scale | None = None) -> np.ndarray:
        """One frame, uint8 [height, width], from palette indices [P, H, W, C] and the stamp line; `scale`: this
        frame's own scale (a per-step rule), whose ticks replace the template's."""
        canvas = self.template.copy()
        if scale is not None:
            y, x, ts = self._bar
            ty = y + BAR_HEIGHT * ts + GAP
            canvas[ty : ty + font.CELL_H * ts] = PAPER
            draw_ticks(canvas, scale, ty, x, ts)
        if self.style.transpose:  # rows = probes, cols = channels
            self._tile_view(canvas)[...] = index.transpose(0, 1, 3, 2)[:, :, None, :, :, None]
        else:  # rows = channels, cols = probes; block b holds channels b·R .. (b+1)·R − 1
            r = self.rows_per_block
            for b in range(self.blocks):
                part = index[..., b * r : (b + 1) * r]
                self._tile_view(canvas, b)[: part.shape[-1]] = part.transpose(3, 1, 0, 2)[:, :, None, :, :, None]
        font.draw_text(canvas, stamp, self.stamp.y, self.stamp.x, INK, self.stamp.scale)
        return canvas


def choose_blocks(channels: int, probes: int, pitch: tuple[int, int], label_w: int, extra_h: int | None = None) -> int:
    """How many side-by-side blocks of channel rows make the picture closest to square (1 for narrow layers);
    `extra_h`: what the picture has above its channel rows beyond one line of labels (default one row)."""
    best, best_k = None, 1
    for k in range(1, channels + 1):
        rows = -(-channels // k)
        if k > 1 and -(-channels // (k - 1)) == rows:
            continue  # no fewer rows than k − 1 blocks
        w = k * (label_w + probes * pitch[1] + BLOCK_GAP)
        h = rows * pitch[0] + (pitch[0] if extra_h is None else extra_h)
        off = abs(np.log(w / h))
        if best is None or off < best - 1e-9:
            best, best_k = off, k
    return best_k


def draw_colour_bar(canvas: np.ndarray, scale: Scale, y: int, x: int, ts: int = 1) -> None:
    """The N_LEVELS data colours left to right, ticks at both ends and the centre, and the scale's rule."""
    h = BAR_HEIGHT * ts
    width = N_LEVELS * BAR_LEVEL_PX
    levels = np.arange(N_LEVELS, dtype=np.uint8).repeat(BAR_LEVEL_PX)
    if scale.one_sided:  # only [0, hi] is ever used: its levels stretched over the same width
        levels = (CENTRE + np.arange(width) * (N_LEVELS - CENTRE) // width).astype(np.uint8)
    canvas[y : y + h, x : x + width] = levels
    ty = y + h + GAP
    for level in (0, CENTRE, N_LEVELS - 1):
        level = level * BAR_LEVEL_PX + BAR_LEVEL_PX // 2
        canvas[y + h : y + h + GAP, x + level] = INK
    draw_ticks(canvas, scale, ty, x, ts)
    font.draw_text(canvas, scale.short, ty + font.CELL_H * ts, x, INK, ts)


def draw_ticks(canvas: np.ndarray, scale: Scale, ty: int, x: int, ts: int = 1) -> None:
    """The values at the colour bar's ends and centre, on the line at `ty` under a bar that starts at `x`."""
    lo, mid, hi = scale.tick_values()
    ticks = [(0, lo), (CENTRE, mid), (N_LEVELS - 1, hi)]
    if scale.per_channel:
        ticks = [(0, "0" if scale.one_sided else "-S_C"), (CENTRE, "+S_C/2" if scale.one_sided else 0.0),
                 (N_LEVELS - 1, "+S_C")]
    for level, value in ticks:
        level = level * BAR_LEVEL_PX + BAR_LEVEL_PX // 2
        text = value if isinstance(value, str) else format_value(value)
        tw = font.text_size(text, ts)[1]
        tx = min(max(x + level - tw // 2, 0), canvas.shape[1] - tw)
        font.draw_text(canvas, text, ty, tx, INK, ts)
