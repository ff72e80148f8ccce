"""A 5×7 pixel font, drawn straight into palette-index canvases (no ffmpeg, no font files, no antialiasing).

Every glyph is a 5-wide, 7-high bitmap on a 6×9 cell (one column and two rows of spacing). Text is upper-cased;
characters without a glyph draw as '?'. Because the bitmaps are exact, `read_text` can decode what `draw_text`
wrote, which is how the tests check that a frame's stamped step is the stored step.
"""

from __future__ import annotations

import numpy as np

GLYPH_W, GLYPH_H = 5, 7
CELL_W, CELL_H = 6, 9  # advance and line height, in unscaled pixels

_GLYPHS_SRC = {
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.",
    "D": "###..|#..#.|#...#|#...#|#...#|#..#.|###..",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####",
    "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.",
    "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.",
    "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",
    "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    " ": ".....|.....|.....|.....|.....|.....|.....",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    ";": ".....|.##..|.##..|.....|.##..|..#..|.#...",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "-": ".....|.....|.....|.###.|.....|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "=": ".....|.....|#####|.....|#####|.....|.....",
    "/": "....#|....#|...#.|..#..|.#...|#....|#....",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.",
    "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.",
    "_": ".....|.....|.....|.....|.....|.....|#####",
    "'": "..#..|..#..|.#...|.....|.....|.....|.....",
    "|": "..#..|..#..|..#..|..#..|..#..|..#..|..#..",
    "#": ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.",
    "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...",
    "*": ".....|..#..|#.#.#|.###.|#.#.#|..#..|.....",
    "×": ".....|#...#|.#.#.|..#..|.#.#.|#...#|.....",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
}

GLYPHS: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in src.split("|")], dtype=bool) for ch, src in _GLYPHS_SRC.items()
}
for _ch, _g in GLYPHS.items():
    assert _g.shape == (GLYPH_H, GLYPH_W), _ch


def _normalise(text: str) -> str:
    return "".join(ch if ch in GLYPHS else "?" for ch in text.upper())


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(height, width) in pixels that `draw_text` covers, trailing spacing excluded."""
    if not text:
        return 0, 0
    return GLYPH_H * scale, (len(text) * CELL_W - 1) * scale


def draw_text(canvas: np.ndarray, text: str, y: int, x: int, color: int, scale: int = 1) -> int:
    """Draws `text` with its top-left corner at (y, x) into a 2-D canvas, clipped at the edges.

    Returns the x just after the text. Only glyph pixels are written; the background is left alone.
    """
    for i, ch in enumerate(_normalise(text)):
        glyph = GLYPHS[ch]
        if scale > 1:
            glyph = glyph.repeat(scale, axis=0).repeat(scale, axis=1)
        x0 = x + i * CELL_W * scale
        region = canvas[y : y + glyph.shape[0], x0 : x0 + glyph.shape[1]]
        mask = glyph[: region.shape[0], : region.shape[1]]
        region[mask] = color
    return x + len(text) * CELL_W * scale


def read_text(canvas: np.ndarray, y: int, x: int, length: int, color: int, scale: int = 1) -> str:
    """Decodes `length` characters drawn by `draw_text` at (y, x); an unknown cell reads as '�'."""
    out = []
    for i in range(length):
        x0 = x + i * CELL_W * scale
        cell = canvas[y : y + GLYPH_H * scale : scale, x0 : x0 + GLYPH_W * scale : scale] == color
        match = [ch for ch, g in GLYPHS.items() if g.shape == cell.shape and np.array_equal(g, cell)]
        out.append(match[0] if match else "\ufffd")
    return "".join(out)


def draw_text_up(canvas: np.ndarray, text: str, y: int, x: int, color: int, scale: int = 1) -> None:
    """Draws `text` turned a quarter left, reading bottom to top, with its bottom-left corner at (y, x): the
    column label of a narrow column, whole. `read_text_up` decodes it."""
    h, w = text_size(text, scale)
    block = np.zeros((h, w), np.uint8)
    draw_text(block, text, 0, 0, 1, scale)
    turned = np.rot90(block)  # [w, h]: the first character at the bottom
    y0 = y - turned.shape[0]
    region = canvas[max(y0, 0) : y, x : x + turned.shape[1]]
    mask = turned[turned.shape[0] - region.shape[0] :, : region.shape[1]] == 1
    region[mask] = color


def read_text_up(canvas: np.ndarray, y: int, x: int, length: int, color: int, scale: int = 1) -> str:
    """Decodes `length` characters that `draw_text_up` drew with its bottom-left corner at (y, x)."""
    h, w = GLYPH_H * scale, length * CELL_W * scale
    turned = canvas[y - w : y, x : x + h]
    return read_text(np.rot90(turned, -1).copy(), 0, 0, length, color, scale)


def fit_text(text: str, width: int, scale: int = 1) -> str:
    """`text` cut to at most `width` pixels (a trailing '.' marks a cut)."""
    n = (width // scale + 1) // CELL_W
    if len(text) <= n:
        return text
    return text[: max(n - 1, 0)] + "." if n > 0 else ""
