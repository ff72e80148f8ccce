"""The live viewer's speed, measured in headless Chromium with the browser's own clock.

    .venv/bin/python benchmarks/viewer_speed.py [--run runs/learn_to_see.h5] [--trials 5]

Prints one table:
* open: from the run view's first request to the first frame of every layer drawn (the page's own
  `performance.now()`), and from navigation; median of `--trials` fresh pages (target ≤ 300 ms);
* play: frames shown per second while playing with every layer on screen, asked for 30 and for 60 fps
  (target ≥ 30);
* table: the runs table over `--table-runs` (500) small run files that differ in activation, seed and
  learning rate: `/api/runs` the first time (every file opened) and warm (median of 5; target < 1 s), the page
  from navigation to the table drawn, one sort by a column, and a new listing in which one run changed;
* memory: the server's resident memory (VmRSS of its process) while a page plays a 1,000-step run with
  learn_to_see's layer shapes, written for the purpose: the median over the second half of the frames
  against the first half (target: flat).

The server runs as `emergence serve` in its own process, as a user starts it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


class Server:
    """`emergence serve FOLDER --port 0` in a subprocess."""

    def __init__(self, folder: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "emergence.cli", "serve", str(folder), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.url = match.group(1)

    def runs(self) -> dict[str, str]:
        with urllib.request.urlopen(self.url + "api/runs") as r:
            return {row["name"]: row["id"] for row in json.load(r)["runs"]}

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


def open_and_wait(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => window.__emergence && window.__emergence.firstFramesMs !== null", timeout=60000)


def measure_open(browser, url: str, trials: int) -> tuple[list[float], list[float]]:
    view, nav = [], []
    for _ in range(trials):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        open_and_wait(page, url)
        view.append(page.evaluate("window.__emergence.firstFramesMs"))
        nav.append(page.evaluate("window.__emergence.firstFramesSinceNavigation"))
        page.close()
    return view, nav


def measure_play(browser, url: str, fps: int, seconds: float) -> float:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    open_and_wait(page, f"{url}?step=0&fps={fps}")
    time.sleep(1.0)  # let the first blocks arrive
    page.click("#play")
    time.sleep(seconds)
    advanced, elapsed = page.evaluate("[window.__emergence.advanced, window.__emergence.playElapsed]")
    page.close()
    return advanced / (elapsed / 1000.0) if elapsed else float("nan")


def write_long_run(path: Path, steps: int) -> None:
    """A run of `steps` + 1 frames with learn_to_see's six layers (float16, tanh values), via the recorder's writer."""
    from tests.conftest import write_run  # the recorder's own writer, with a schema-complete layout

    rng = np.random.default_rng(0)
    shapes = {"conv1": (28, 28, 4), "conv2": (28, 28, 4), "conv3": (14, 14, 8), "conv4": (14, 14, 8),
              "conv5": (7, 7, 16), "conv6": (7, 7, 16)}
    first = {n: np.tanh(rng.normal(size=(1, 10, *s))).astype(np.float32) for n, s in shapes.items()}
    writer = write_run(path, first, close=False, probe_images=rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8))
    for step in range(1, steps + 1):
        frame = {n: np.tanh(a[0] + 0.02 * step + rng.normal(scale=0.1, size=a.shape[1:])).astype(np.float32)
                 for n, a in first.items()}
        frame["logits"] = np.zeros((10, 10), np.float32)
        writer.write_frame(step, frame, float(step))
        if step % 100 == 0:
            writer.flush()
    writer.set_status("completed")
    writer.close()


def write_many_runs(folder: Path, n: int) -> None:
    """`n` small run files, each written by the recorder's own writer, that differ in activation, seed and lr."""
    from tests.conftest import write_run

    acts = np.zeros((4, 2, 6, 6, 4), np.float32)
    for k in range(n):
        act = ("tanh", "relu", "gelu")[k % 3]
        write_run(folder / f"sweep/{act}-lr{k % 5}-seed{k}.h5", {"conv1": acts, "conv2": acts[:, :, :3, :3]},
                  activation=act, config={"seed": k, "learning_rate": 10.0 ** -(1 + k % 5)})


def measure_table(browser, n: int) -> list[tuple[str, str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sweep").mkdir()
        t0 = time.perf_counter()
        write_many_runs(folder, n)
        written = time.perf_counter() - t0
        server = Server(folder)
        try:
            def listing() -> float:
                t = time.perf_counter()
                with urllib.request.urlopen(server.url + "api/runs") as r:
                    count = len(json.load(r)["runs"])
                assert count == n, count
                return (time.perf_counter() - t) * 1000

            cold = listing()
            warm = [listing() for _ in range(5)]
            rows.append((f"/api/runs over {n} run files (written in {written:.0f} s): first answer (every file "
                         "opened), then warm", f"{statistics.median(warm):.0f} ms warm",
                         f"first {cold:.0f} ms; warm min {min(warm):.0f}, max {max(warm):.0f}", "< 1 s warm"))
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t = time.perf_counter()
            page.goto(server.url)
            page.wait_for_function(f"() => document.querySelectorAll('#runs tbody tr[data-id]').length === {n}",
                                   timeout=60000)
            drawn = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            page.click("#runs th[data-key='config.learning_rate']")
            page.wait_for_function("() => document.querySelector('#runs th[data-key=\"config.learning_rate\"] .arrow').textContent !== ''")
            sort = (time.perf_counter() - t) * 1000
            changed = page.evaluate("""() => {  // a listing in which one run moved on (a sweep recording)
                const table = window.__emergence.current.table, times = [];
                for (let k = 0; k < 5; k++) {
                    const rows = table.rows.map((r, i) => i === 7 ? { ...r, last_step: (r.last_step || 0) + k + 1 } : r);
                    const t = performance.now();
                    table.setRows(rows);
                    void document.body.offsetHeight;  // layout included
                    times.push(performance.now() - t);
                }
                return times.sort((a, b) => a - b)[2];
            }""")
            page.close()
            rows.append((f"the runs table in the page: navigation to {n} rows drawn; one sort by a column",
                         f"{drawn:.0f} ms", f"sort {sort:.0f} ms", ""))
            rows.append((f"the runs table: a new listing in which one of {n} runs changed (median of 5), layout "
                         "included", f"{changed:.0f} ms", "", ""))
        finally:
            server.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "learn_to_see.h5"), help="a recorded learn_to_see run")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--play-seconds", type=float, default=6.0)
    parser.add_argument("--memory-steps", type=int, default=1000)
    parser.add_argument("--table-runs", type=int, default=500)
    parser.add_argument("--only", choices=("all", "table"), default="all", help="table: the runs table alone")
    args = parser.parse_args()
    run = Path(args.run)
    if args.only == "table":
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            print_table(measure_table(browser, args.table_runs))
            browser.close()
        return
    if not run.is_file():
        sys.exit(f"no run at {run}: record one first (.venv/bin/emergence record learn_to_see)")
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        server = Server(run.parent)
        try:
            url = f"{server.url}#/run/{server.runs()[run.stem]}"
            mid = f"{url}?step=145"
            measure_open(browser, mid, 1)  # the server's first open of the file, and the browser's caches
            view, nav = measure_open(browser, mid, args.trials)
            rows.append(("open a run view: first frame of every layer drawn, from the view's first request",
                         f"{statistics.median(view):.0f} ms", f"min {min(view):.0f}, max {max(view):.0f}", "≤ 300 ms"))
            rows.append(("open a run view: the same, from navigation (page load included)",
                         f"{statistics.median(nav):.0f} ms", f"min {min(nav):.0f}, max {max(nav):.0f}", ""))
            for fps in (30, 60):
                shown = measure_play(browser, url, fps, args.play_seconds)
                rows.append((f"play all six layers + kernels, asked for {fps} fps", f"{shown:.1f} frames/s",
                             f"{shown / fps:.2f} of asked", "≥ 30 frames/s" if fps == 30 else ""))
        finally:
            server.close()

        long_folder = Path(tmp) / "long"
        long_folder.mkdir()
        t0 = time.perf_counter()
        write_long_run(long_folder / "long.h5", args.memory_steps)
        written = time.perf_counter() - t0
        server = Server(long_folder)
        try:
            url = f"{server.url}#/run/{server.runs()['long']}?step=0&fps=60"
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_and_wait(page, url)
            opened = server.rss_mb()
            page.click("#play")
            samples = []  # (frames played, MB)
            while True:
                step = int(page.evaluate("document.body.dataset.step"))
                samples.append((step, server.rss_mb()))
                if step == args.memory_steps:
                    break
                time.sleep(0.5)
            shown = page.evaluate("window.__emergence.advanced / (window.__emergence.playElapsed / 1000)")
            page.close()
            half = args.memory_steps // 2
            first = statistics.median(mb for step, mb in samples if step < half)
            second = statistics.median(mb for step, mb in samples if step >= half)
            peak = max(mb for _, mb in samples)
            rows.append((f"server RSS while a page plays all {args.memory_steps + 1} frames of a long run with "
                         f"learn_to_see's layers (written in {written:.0f} s): opened, then the median over the first "
                         "and over the second half of the frames",
                         f"{opened:.0f}; {first:.0f} -> {second:.0f} MB", f"second / first half: {second / first:.2f}; "
                         f"peak {peak:.0f} MB; played at {shown:.1f} frames/s", "flat"))
        finally:
            server.close()
        rows.extend(measure_table(browser, args.table_runs))
        browser.close()
    print_table(rows)


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    print("| measured | value | detail | target |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
