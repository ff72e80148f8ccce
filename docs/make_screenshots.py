"""Regenerates the README's screenshots of `emergence serve` (docs/img/viewer_*.png) in headless Chromium.

    .venv/bin/emergence record learn_to_see
    .venv/bin/emergence record learn_to_see --set activation=relu
    .venv/bin/python docs/make_screenshots.py [--runs runs]

The run view shows runs/learn_to_see.h5 at step 60; the compare view shows it beside
runs/learn_to_see-relu.h5 at the same step.
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
}


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
            for name, (view, height, clip) in SHOTS.items():
                page = browser.new_page(viewport={"width": 1400, "height": height})
                page.goto(base + view.format(**ids))
                page.wait_for_function("() => window.__emergence && window.__emergence.firstFramesMs !== null",
                                       timeout=60000)
                page.wait_for_timeout(500)
                out = ROOT / "docs" / "img" / name
                page.screenshot(path=str(out), full_page=clip is None)
                print(out, out.stat().st_size // 1000, "kB")
                page.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
