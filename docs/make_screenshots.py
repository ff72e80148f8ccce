"""Regenerates the README's screenshots of `emergence serve` (docs/img/viewer_*.png) in headless Chromium.

    .venv/bin/emergence record learn_to_see
    .venv/bin/emergence record learn_to_see --set activation=relu
    .venv/bin/python docs/make_screenshots.py [--runs runs]

The run view shows runs/learn_to_see.h5 at step 60; the compare view shows it beside
runs/learn_to_see-relu.h5 at the same step; the views shot is that run's distributions and geometry at step
60 (conv2 and conv6); the table and curves shots show every run in the folder (a sweep of activations and
seeds under runs/ makes them worth looking at: `emergence sweep learn_to_see --grid activation=tanh,relu
--seeds 0,1,2 --out runs/sweep`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from viewer.catalog import run_id  # noqa: E402
from viewer.server import start_in_thread  # noqa: E402

SHOTS = {  # file -> (hash of the view, viewport height, clip height or None for the whole page)
    "viewer_run.png": ("#/run/{a}?step=60&layers=conv1,conv2,conv3,conv4", 1250, 1250),
    "viewer_compare.png": ("#/compare/{a}/{b}?step=60&layers=conv1,conv3&zoom=1", 1250, None),
    "viewer_views.png": ("#/run/{a}?step=60&layers=conv2,conv6", 1250, "views"),
    "viewer_table.png": ("#/?group=config.activation&sort=best_accuracy&desc=1", 900, None),
    "viewer_curves.png": ("#/curves/{all}?series=conv6/weight_change", 1000, 1000),
}


def _rows(base: str) -> list[dict]:
    import json
    import urllib.request

    with urllib.request.urlopen(base + "api/runs") as r:
        return json.load(r)["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    args = parser.parse_args()
    runs = Path(args.runs)
    for name in ("learn_to_see.h5", "learn_to_see-relu.h5"):
        if not (runs / name).is_file():
            sys.exit(f"no {runs / name}: record it first (see this script's docstring)")
    from playwright.sync_api import sync_playwright

    server = start_in_thread(runs)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    ids = {"a": run_id("learn_to_see.h5"), "b": run_id("learn_to_see-relu.h5")}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            ids["all"] = ",".join(row["id"] for row in _rows(base) if row["readable"])
            for name, (view, height, clip) in SHOTS.items():
                page = browser.new_page(viewport={"width": 1400, "height": height})
                page.goto(base + view.format(**ids))
                page.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=60000)
                if name in ("viewer_views.png", "viewer_compare.png"):  # their distributions and geometry loaded
                    page.wait_for_function("() => window.__emergence.geometryReady === true", timeout=60000)
                page.wait_for_timeout(500)
                out = ROOT / "docs" / "img" / name
                if clip == "views":  # from the distributions' heading to the end of the page
                    top = page.evaluate("document.getElementById('distributions').getBoundingClientRect().top + scrollY")
                    bottom = page.evaluate("document.documentElement.scrollHeight")
                    page.screenshot(path=str(out), full_page=True,
                                    clip={"x": 0, "y": top - 8, "width": 1400, "height": bottom - top + 8})
                else:
                    page.screenshot(path=str(out), full_page=clip is None)
                print(out, out.stat().st_size // 1000, "kB")
                page.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
