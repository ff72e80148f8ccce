"""A static index.html that shows every picture of one replay, with what each one is."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Sequence

from replay.images import atomic_path


@dataclasses.dataclass(frozen=True)
class Entry:
    section: str  # "Layers", "Curves", "Filters", "Snapshots"
    title: str
    file: str  # relative to the output folder
    caption: str
    display_zoom: int = 2  # pixel pictures are shown enlarged, without smoothing


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
figure {{ display: inline-block; vertical-align: top; margin: 0 1.5em 1.5em 0; }}
figcaption {{ font-size: 0.85em; max-width: 42em; }}
img.pixels {{ image-rendering: pixelated; image-rendering: crisp-edges; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
</style></head><body>
<h1>{title}</h1>
{facts}
{sections}
</body></html>
"""


def write_index(out_dir: Path, title: str, facts: Sequence[tuple[str, str]], entries: Sequence[Entry],
                sizes: dict[str, tuple[int, int]]) -> Path:
    """`sizes` maps a file to its (width, height) in pixels, for the enlarged display size."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    parts = []
    for section in dict.fromkeys(e.section for e in entries):
        figs = []
        for e in (e for e in entries if e.section == section):
            w, h = sizes.get(e.file, (0, 0))
            size = f' width="{w * e.display_zoom}" height="{h * e.display_zoom}"' if w and e.display_zoom > 1 else ""
            cls = ' class="pixels"' if e.display_zoom > 1 else ""
            figs.append(
                f'<figure><a href="{html.escape(e.file)}"><img src="{html.escape(e.file)}"{cls}{size} '
                f'alt="{html.escape(e.title)}"></a><figcaption><b>{html.escape(e.title)}</b>: '
                f"{html.escape(e.caption)}</figcaption></figure>"
            )
        parts.append(f"<h2>{html.escape(section)}</h2>\n" + "\n".join(figs))
    path = out_dir / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(PAGE.format(title=html.escape(title), facts=f"<table>{rows}</table>", sections="\n".join(parts)))
    return path
