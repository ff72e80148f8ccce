"""A static index.html that shows every picture of one replay, with what each one is, and one clock for its
animations: a step slider and play that show every layer's (and every geometry) GIF at the same training step
(replay/clock.js, which reads the GIFs' bytes from clock/NAME.gif.js scripts beside the page: a page opened
from disk may load scripts but may not fetch its neighbours)."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import shutil
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
    steps: tuple[int, ...] = ()  # an animation on the page's clock: the training step of each of its frames


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
figure {{ display: inline-block; vertical-align: top; margin: 0 1.5em 1.5em 0; }}
figcaption {{ font-size: 0.85em; max-width: 42em; }}
.pixels {{ image-rendering: pixelated; image-rendering: crisp-edges; }}
#clock {{ position: sticky; top: 0; z-index: 1; background: #f4f4f4; border-bottom: 1px solid #ccc;
          padding: 0.4em 0.6em; margin: 0 -0.6em 1em; }}
#clock input[type=range] {{ width: 40em; max-width: 60%; vertical-align: middle; }}
.clock-now {{ font-variant-numeric: tabular-nums; margin: 0 1em; }}
.clock-step, .clock-note {{ font-size: 0.85em; color: #555; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
</style></head><body>
<h1>{title}</h1>
{facts}
<div id="clock" hidden><button type="button">play</button>
<input type="range" min="0" max="0" value="0" aria-label="step"><span class="clock-now"></span>
<label>fps <select>{fps}</select></label> <span class="clock-note"></span>
<div class="clock-step">One clock: every animation below at the same step (the slider, play, ← → one frame,
PgUp/PgDn ten, Home/End, space). An animation not recorded at that step shows its last frame before it.</div></div>
{sections}
{scripts}
</body></html>
"""


def write_index(out_dir: Path, title: str, facts: Sequence[tuple[str, str]], entries: Sequence[Entry],
                sizes: dict[str, tuple[int, int]]) -> tuple[Path, int]:
    """`sizes` maps a file to its (width, height) in pixels, for the enlarged display size. Entries with `steps`
    go on the page's clock. Returns the page and the bytes its clock's scripts take."""
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
    fps = "".join(f'<option{" selected" if f == 10 else ""}>{f}</option>' for f in (2, 5, 10, 20, 30))
    scripts, clock_bytes = _clock_scripts(out_dir, [e for e in entries if e.steps])
    path = out_dir / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(PAGE.format(title=html.escape(title), facts=f"<table>{rows}</table>", sections="\n".join(parts),
                                   fps=fps, scripts=scripts))
    return path, clock_bytes


def _clock_scripts(out_dir: Path, animations: Sequence[Entry]) -> tuple[str, int]:
    """Writes clock/clock.js and one clock/NAME.js per animation (its bytes in base64 and its frames' steps);
    returns the page's script tags and the bytes written. Without animations, none (and clock/ is removed)."""
    folder = out_dir / "clock"
    if not animations:
        shutil.rmtree(folder, ignore_errors=True)  # a clock of an earlier replay into the same folder
        return "", 0
    folder.mkdir(exist_ok=True)
    with atomic_path(folder / "clock.js") as tmp:
        shutil.copyfile(Path(__file__).with_name("clock.js"), tmp)
    tags = ['<script src="clock/clock.js"></script>']
    for e in animations:
        data = base64.b64encode((out_dir / e.file).read_bytes()).decode("ascii")
        script = folder / f"{e.file}.js"
        with atomic_path(script) as tmp:
            tmp.write_text(f"emergenceClock.add({json.dumps(e.file)}, {json.dumps(list(e.steps))}, \"{data}\");\n")
        tags.append(f'<script src="clock/{html.escape(e.file)}.js"></script>')
    written = sum(p.stat().st_size for p in folder.iterdir())
    return "\n".join(tags + ["<script>emergenceClock.start();</script>"]), written
