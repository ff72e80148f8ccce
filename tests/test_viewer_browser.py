"""The viewer in a real browser: Debian's chromium driven by Playwright (both installed by setup.sh).

Pixels are read back from the page's canvases with getImageData and compared with replay's palette.
"""

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_run
from replay import open_run
from replay.palette import DIVERGING, colour_map, value_to_index
from test_viewer_api import get_json, live_writer
from viewer.catalog import run_id
from viewer.server import start_in_thread

CHROMIUM = "/usr/bin/chromium"
XSS = "<img src=x onerror=alert(1)>"
STEPS = [0, 1, 2, 3, 5, 8]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: ./setup.sh installs Debian's chromium package for these tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, two_runs):
    folder = tmp_path_factory.mktemp("served")
    acts = np.tile(np.linspace(-0.5, 0.5, 3 * 4 * 4 * 2, dtype=np.float32).reshape(1, 3, 4, 4, 2), (len(STEPS), 1, 1, 1, 1))
    acts[:, 0, 0, 0, 0] = 0.0
    acts[:, 0, 0, 1, 0] = 1.0
    acts[:, 0, 0, 2, 0] = -1.0
    acts[:, 1] *= np.array(STEPS, np.float32)[:, None, None, None] / 8  # probe 1 changes with the step
    write_run(folder / "known.h5", {"conv1": acts, "conv2": acts[:, :, :2, :2]}, steps=STEPS)
    write_run(folder / f"{XSS}.h5", {"conv1": acts[:2]})
    for act, path in two_runs.items():
        shutil.copy(path, folder / path.name)
    server = start_in_thread(folder, idle_seconds=0.5)
    yield server, folder
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(browser, served):
    server, _ = served
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    pg = context.new_page()
    pg.dialogs, pg.errors = [], []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.base = f"http://127.0.0.1:{server.server_address[1]}/"
    yield pg
    context.close()
    assert pg.dialogs == [] and pg.errors == []


def open_view(page, hash_):
    page.goto(page.base + hash_)
    page.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=20000)


def shown_steps(page):
    return page.evaluate("[document.body.dataset.step, ...[...document.querySelectorAll('.panel')].map(p => p.dataset.step)]")


def test_run_list_shows_every_run_and_untrusted_names_as_text(page):
    open_view(page, "")
    page.wait_for_selector("#runs tbody tr[data-id]")
    names = page.eval_on_selector_all("#runs tbody td:nth-child(2)", "cells => cells.map(c => c.textContent)")
    assert sorted(names) == sorted(["known", XSS, "tiny-relu", "tiny-tanh"])
    assert page.locator("#runs img").count() == 0  # the name stayed text
    states = page.eval_on_selector_all("#runs tbody td.state > span", "s => s.map(x => x.textContent)")
    assert set(states) == {"completed"}


def test_a_stored_zero_is_white_and_one_is_the_scales_end_colour(page):
    open_view(page, f"#/run/{run_id('known.h5')}?step=3")
    colours = page.evaluate("""() => {
        const g = window.__emergence.current.panels[0].grid;
        const ctx = g.canvas.getContext('2d');
        return [1, 0, 2].map(x => { const [px, py] = g.pixelOf(0, 0, 0, x); return [...ctx.getImageData(px, py, 1, 1).data]; });
    }""")
    ends = colour_map(DIVERGING)
    assert colours[1] == [255, 255, 255, 255]  # tanh 0: exactly white
    assert colours[0] == [*ends[-1].tolist(), 255]  # +1: the last level of seismic_r
    assert colours[2] == [*ends[0].tolist(), 255]  # -1: the first


def test_keyboard_steps_through_recorded_frames_and_a_missing_step_says_so(page):
    open_view(page, f"#/run/{run_id('known.h5')}")
    assert set(shown_steps(page)) == {"8"}  # a completed run opens at its last frame
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.body.dataset.step === '5'")
    page.keyboard.press("Home")
    page.wait_for_function("() => document.body.dataset.step === '0'")
    page.keyboard.press("PageDown")
    page.wait_for_function("() => document.body.dataset.step === '8'")
    page.wait_for_function("() => document.querySelectorAll('.panel[data-step=\"8\"]').length === 2")
    page.wait_for_function("() => location.hash.includes('step=8')")  # the view lives in the URL
    page.fill("#step-box", "4")
    page.press("#step-box", "Enter")
    page.wait_for_function("() => document.body.dataset.step === '3'")
    assert "step 4 was not recorded: showing the nearest recorded step 3" in page.text_content("#notice")
    page.wait_for_function("() => document.querySelectorAll('.panel[data-step=\"3\"]').length === 2")


def test_hover_shows_the_exact_stored_value(page, served):
    open_view(page, f"#/run/{run_id('known.h5')}?step=5")
    box = page.evaluate("""() => {
        const g = window.__emergence.current.panels[0].grid, r = g.canvas.getBoundingClientRect();
        const [px, py] = g.pixelOf(1, 1, 2, 3);  // channel 1, probe 1, y 2, x 3
        return [r.left + px * r.width / g.canvas.width, r.top + py * r.height / g.canvas.height];
    }""")
    page.mouse.move(*box)
    text = page.text_content("#tip")
    with open_run(served[1] / "known.h5") as run:
        stored = run.activations("conv1", [5])[0, 1, 2, 3, 1]
    assert "probe 1" in text and "channel 1" in text and "y 2, x 3" in text
    assert f"value {float(stored)!r} (stored float32)" in text


def test_play_advances_to_the_last_frame(page):
    open_view(page, f"#/run/{run_id('known.h5')}?step=0&fps=30")
    page.click("#play")
    page.wait_for_function("() => document.body.dataset.step === '8'", timeout=10000)
    assert page.evaluate("window.__emergence.advanced") == len(STEPS) - 1


def test_compare_shows_both_runs_at_the_same_step(page, served):
    a, b = run_id("tiny-tanh.h5"), run_id("tiny-relu.h5")
    open_view(page, f"#/compare/{a}/{b}?step=10")
    steps = shown_steps(page)
    assert set(steps) == {"10"} and len(steps) == 1 + 2 * 2  # two layers, A and B each
    assert page.locator("canvas.simplot").count() == 1 and page.locator("table.layermap td").count() == 2 * 4
    matching = get_json(served[0], f"/api/compare?a={a}&b={b}")["similarity"]["matching"]
    assert page.text_content("#layer-matching").startswith("layer matching") and set(matching) == {"init", "end"}
    assert f"({matching['init']['matches']}/{matching['init']['compared']}) at initialisation" in page.text_content("#layer-matching")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelectorAll('.panel[data-step=\"11\"]').length === 4")
    tags = page.eval_on_selector_all(".panel h3", "hs => hs.map(h => h.textContent)")
    assert tags[0].startswith("A conv1 · tanh") and tags[1].startswith("B conv1 · relu")


def test_the_page_colours_every_half_exactly_as_replay(page, served):
    server, folder = served
    rid = run_id("tiny-relu.h5")
    open_view(page, f"#/run/{rid}")
    scale = get_json(server, f"/api/runs/{rid}")["layers"][1]["scale"]  # conv2, relu: a percentile scale
    levels = page.evaluate("""(scale) => {
        const c = new window.__emergence.Colourer(scale, window.__emergence.current.run.palettes);
        const halves = new Float16Array(new Uint16Array(65536).map((_, i) => i).buffer);
        return Array.from(halves, v => c.level(v));
    }""", scale)
    with np.errstate(invalid="ignore"):  # the signalling NaN patterns
        values = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
        expected = value_to_index(values, scale["lo"], scale["hi"]).astype(int)
    expected[np.isnan(values)] = -1
    assert np.array_equal(np.array(levels), expected)


def test_a_run_being_recorded_appears_grows_and_keeps_a_set_cursor(browser, page, served):
    server, folder = served
    path = folder / "live.h5"
    rid = run_id("live.h5")
    open_view(page, "")
    proc = subprocess.Popen([sys.executable, "-c", live_writer(path)])
    try:
        page.wait_for_selector(f"#runs tr[data-id='{rid}']", timeout=20000)
        page.wait_for_function("() => document.body.dataset.step === undefined")  # still the list
        page.goto(page.base + f"#/run/{rid}")  # a recording run opens following live
        other = page.context.new_page()
        other.goto(page.base + f"#/run/{rid}?step=2")  # a cursor the user set
        page.wait_for_function("() => document.body.dataset.step === '12'", timeout=30000)
        other.wait_for_function("() => document.body.dataset.step === '2'", timeout=10000)
    finally:
        proc.wait(timeout=60)
    other.wait_for_function("() => document.querySelector('#run-state').textContent.startsWith('completed')", timeout=10000)
    assert other.evaluate("document.body.dataset.step") == "2"
    assert other.evaluate("window.__emergence.current.steps.length") == 13
    other.close()


def test_a_layer_too_large_to_serve_is_named_and_the_others_shown(browser, tmp_path):
    import h5py

    folder = tmp_path / "runs"
    folder.mkdir()
    acts = np.tanh(np.random.default_rng(0).normal(size=(3, 2, 4, 4, 2))).astype(np.float32)
    write_run(folder / "big.h5", {"conv1": acts, "conv2": acts})
    with h5py.File(folder / "big.h5", "r+") as f:  # conv2 declares 134 MB frames and stores none
        attrs = dict(f["layers/conv2/activations"].attrs)
        del f["layers/conv2/activations"]
        ds = f["layers/conv2"].create_dataset("activations", shape=(3, 2, 4096, 4096, 2), dtype="f2",
                                              maxshape=(None, 2, 4096, 4096, 2), chunks=(1, 2, 4096, 4096, 2))
        ds.attrs.update(attrs)
    server = start_in_thread(folder, idle_seconds=0.5)
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(f"http://127.0.0.1:{server.server_address[1]}/#/run/{run_id('big.h5')}")
        pg.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=20000)
        layers = pg.eval_on_selector_all(".panel", "ps => ps.map(p => p.dataset.layer)")
        assert layers == ["conv1"]
        assert "not shown: one frame of conv2 is 134 MB" in pg.text_content("body")
        assert errors == []
    finally:
        context.close()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def table_served(tmp_path_factory):
    """Four handmade runs that differ in activation, seed and length, and agree on everything else."""
    folder = tmp_path_factory.mktemp("table")
    acts = np.zeros((6, 2, 3, 3, 1), np.float32)
    for name, act, seed, frames in (("r-a", "tanh", 0, 4), ("r-b", "tanh", 1, 6), ("r-c", "relu", 0, 3), ("r-d", "relu", 1, 5)):
        write_run(folder / f"{name}.h5", {"conv1": acts[:frames]}, activation=act, config={"seed": seed})
    server = start_in_thread(folder, idle_seconds=0.5)
    yield server
    server.shutdown()
    server.server_close()


def table_names(pg):
    return pg.eval_on_selector_all("#runs tbody tr[data-id] td:nth-child(2)", "cells => cells.map(c => c.textContent)")


def test_runs_table_sorts_filters_groups_and_selects_any_number(browser, table_served):
    pg = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"http://127.0.0.1:{table_served.server_address[1]}/")
    pg.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=20000)
    pg.wait_for_selector("#runs tbody tr[data-id]")
    heads = pg.eval_on_selector_all("#runs th.sortable > span:first-child", "s => s.map(x => x.textContent)")
    assert "seed" in heads and "activation" in heads  # differ (activation is always shown)
    assert "optimizer" not in heads and "learning_rate" not in heads  # the same in every run: no column
    assert table_names(pg) == ["r-a", "r-b", "r-c", "r-d"]
    pg.click("#runs th[data-key='steps']")  # last steps 3, 5, 2, 4
    assert table_names(pg) == ["r-c", "r-a", "r-d", "r-b"]
    pg.click("#runs th[data-key='steps']")
    assert table_names(pg) == ["r-b", "r-d", "r-a", "r-c"]
    pg.fill("input.col-filter[data-key='config.seed']", "=1")
    assert table_names(pg) == ["r-b", "r-d"]
    pg.fill("input.col-filter[data-key='config.seed']", "")
    pg.fill("input.col-filter[data-key='steps']", "<4")
    assert table_names(pg) == ["r-a", "r-c"]
    pg.fill("input.col-filter[data-key='steps']", "")
    pg.fill("#runs-filter", "relu")
    assert table_names(pg) == ["r-d", "r-c"]
    assert "2 of 4 runs shown" in pg.text_content("#runs-count")
    pg.fill("#runs-filter", "")
    pg.select_option("#runs-group", "config.activation")
    groups = pg.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.classList.contains('group') ? r.textContent : r.cells[1].textContent)")
    assert groups[0].startswith("activation = relu · 2 runs · best accuracy mean 0.750")
    assert groups[1:3] == ["r-d", "r-c"] and groups[3].startswith("activation = tanh · 2 runs") and groups[4:] == ["r-b", "r-a"]
    pg.check("#select-shown")
    ids = sorted(run_id(f"{n}.h5") for n in ("r-a", "r-b", "r-c", "r-d"))
    href = pg.get_attribute("#curves-link", "href")
    assert sorted(href.split("/")[-1].split(",")) == ids and "4 selected" in pg.text_content("#runs-count")
    assert "disabled" in pg.get_attribute("#compare-link", "class")  # two runs, not four
    pg.wait_for_function("() => location.hash.includes('group=config.activation') && location.hash.includes('sort=steps')")
    state = pg.evaluate("location.hash")
    pg.reload()  # the table's state lives in the URL
    pg.wait_for_function("() => document.querySelectorAll('#runs tr.group').length === 2", timeout=20000)
    assert pg.evaluate("location.hash") == state
    assert errors == []
    pg.context.close()


def _ema(values, w):
    out, last = [], 0.0
    for n, v in enumerate(values, 1):
        last = last * w + (1 - w) * v
        out.append(last / (1 - w**n))
    return out


def test_curves_of_many_runs_smooth_share_a_cursor_and_open_frames_at_the_pinned_step(page, served):
    _, folder = served
    names = ["tiny-tanh", "tiny-relu", "known"]
    open_view(page, "#/curves/" + ",".join(run_id(f"{n}.h5") for n in names))
    assert page.evaluate("window.__emergence.current.runs.length") == 3
    assert page.locator("canvas.runs-chart").count() == 4
    with open_run(folder / "tiny-relu.h5") as run:
        loss = run.train_metrics().loss.astype(float).tolist()
        step0 = int(run.train_metrics().step[0])
    for w in (0.6, 0.9):
        if w != 0.6:
            page.evaluate("(w) => { const s = document.getElementById('smoothing'); s.value = String(w); s.dispatchEvent(new Event('input')); }", w)
        got = page.evaluate("(s) => window.__emergence.current.valueAt('loss', 1, s)", step0 + 9)
        assert got["raw"] == pytest.approx(loss[9]) and got["smoothed"] == pytest.approx(_ema(loss, w)[9], rel=1e-9)
    page.wait_for_function("() => location.hash.includes('smooth=0.9')")
    # every chart is drawn in each run's colour
    colours = page.evaluate("""() => {
        const c = document.querySelector("canvas.runs-chart[data-chart='loss']");
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
        return ['31,119,180', '255,127,14', '44,160,44'].map(k => seen.has(k));
    }""")
    assert colours == [True, True, True]
    box = page.locator("canvas.runs-chart[data-chart='loss']").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    rows = page.eval_on_selector_all("#curves-readout tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    assert [r[0] for r in rows] == names and all(r[1] != "–" and r[2] != "–" for r in rows)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#pinned")
    pinned = int(page.text_content("#pinned").split()[-1])
    link = page.get_attribute(".run-key[data-run='0'] a", "href")
    assert link.endswith(f"?step={pinned}")
    page.select_option("#x-axis", "wall")
    page.select_option("#y-axis", "log")
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
    assert " s (step " in page.text_content("#curves-readout tbody tr")
    page.click(".run-key[data-run='0'] a")  # the frames at the pinned step
    page.wait_for_function("(s) => document.body.dataset.step === String(s)", arg=pinned, timeout=20000)


def test_distribution_and_geometry_panels_follow_the_step_cursor(page, served):
    rid = run_id("tiny-tanh.h5")
    open_view(page, f"#/run/{rid}?step=10")
    page.wait_for_function("() => window.__emergence.geometryReady === true", timeout=30000)
    api = get_json(served[0], f"/api/runs/{rid}/geometry?layer=conv1")
    analysed = api["steps"]
    at = max(s for s in analysed if s <= 10)
    panels = lambda view: page.eval_on_selector_all(f".view-panel[data-view='{view}']", "ps => ps.map(p => p.dataset.step)")  # noqa: E731
    assert panels("distribution") == ["10", "10"] and panels("geometry") == [str(at)] * 2
    # the last image drawn at the shown analysed step sits in its class's colour where its coordinates say
    colour, expected = page.evaluate("""() => {
        const p = window.__emergence.current.views.geo[0][0], d = p.data, S = p.canvas.width;
        const k = d.steps.indexOf(Number(p.root.dataset.step)), e = d.extent * 1.05;
        const i = d.labels.length - 1, [x, y] = d.coords[k][i];
        const px = Math.round(((x / e + 1) / 2) * (S - 8) + 4), py = Math.round((1 - (y / e + 1) / 2) * (S - 8) + 4);
        return [[...p.canvas.getContext('2d').getImageData(px, py, 1, 1).data].slice(0, 3), d.labels[i]];
    }""")
    tab10 = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
             [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]]
    assert colour == tab10[expected % 10]
    page.keyboard.press("End")
    page.wait_for_function("() => document.body.dataset.step === '30'")
    assert panels("distribution") == ["30", "30"] and panels("geometry") == [str(analysed[-1])] * 2
    caption = page.text_content(".view-panel[data-view='distribution'] .counts")
    assert caption.startswith("step 30: median ") and "64 bins over [-1, +1]" in caption
    # one channel of conv1: that channel's counts from the server, on the same cursor
    page.select_option(".view-panel[data-view='distribution'][data-layer='conv1'] select.channel", "3")
    page.wait_for_function("() => window.__emergence.current.views.dist[0][0].data.channel === 3")
    expected = get_json(served[0], f"/api/runs/{rid}/distribution?layer=conv1&channel=3")["counts"]
    assert page.evaluate("window.__emergence.current.views.dist[0][0].data.counts") == expected
    page.keyboard.press("Home")
    page.wait_for_function("() => document.body.dataset.step === '0'")
    assert panels("distribution") == ["0", "0"]


def test_compare_bins_both_runs_distributions_over_one_range(page, served):
    a, b = run_id("tiny-tanh.h5"), run_id("tiny-relu.h5")
    open_view(page, f"#/compare/{a}/{b}?step=10")
    page.wait_for_function("() => window.__emergence.distributionsReady === true", timeout=30000)
    edges = page.evaluate("window.__emergence.current.views.dist.map(([x, y]) => [x.data.edges, y.data.edges])")
    relu = get_json(served[0], f"/api/runs/{b}")["layers"]
    for (ea, eb), layer in zip(edges, relu):
        assert ea == eb and ea[0] == -1.0 and ea[-1] == pytest.approx(max(1.0, layer["scale"]["hi"]))


def test_a_live_runs_scale_is_labelled_provisional_and_each_change_is_announced(browser, tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    server = start_in_thread(folder, idle_seconds=0.5)
    pg = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # a relu run whose values grow at every step: its percentile scale changes as it records
    proc = subprocess.Popen([sys.executable, "-c", live_writer(folder / "grow.h5", "relu", first=0.1,
                                                               value="0.1 * (step + 1)", last=24, pause=0.2)])
    try:
        deadline = __import__("time").monotonic() + 20
        while not (folder / "grow.h5").exists() and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.05)
        pg.goto(f"http://127.0.0.1:{server.server_address[1]}/#/run/{run_id('grow.h5')}")
        pg.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=20000)
        rule = pg.text_content(".panel .rule")
        assert rule.startswith("provisional: the run is still recording; covers the ")  # relu: a percentile scale
        pg.wait_for_function("() => (window.__emergence.scaleChanges || 0) >= 2", timeout=30000)
        line = pg.text_content("#scale-log div")
        assert re.match(r"at step \d+: conv1's colour scale \[-[0-9.]+, [0-9.]+\] → \[-[0-9.]+, [0-9.]+\] \(over the \d+ frames recorded so far\)", line), line
    finally:
        proc.wait(timeout=60)
    pg.wait_for_function("() => document.querySelector('#run-state').textContent.startsWith('completed')", timeout=15000)
    pg.wait_for_function("() => !document.querySelector('.panel .rule').textContent.startsWith('provisional')", timeout=15000)
    final = get_json(server, f"/api/runs/{run_id('grow.h5')}")["layers"][0]["scale"]
    assert "provisional" not in final and final["hi"] == pytest.approx(2.5)  # p99.9 of every value: 0.1 × 25
    assert errors == []
    pg.context.close()
    server.shutdown()
    server.server_close()


def test_a_panel_below_the_colour_resolution_says_so_instead_of_looking_dead(browser, tmp_path):
    folder = tmp_path / "faint"
    folder.mkdir()
    acts = np.zeros((3, 2, 4, 4, 2), np.float32)
    acts[0] = 0.001  # far below one colour level of a scale of ±10
    acts[1] = 10.0
    write_run(folder / "faint.h5", {"conv1": acts}, activation="relu")
    server = start_in_thread(folder, idle_seconds=0.5)
    pg = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/#/run/{run_id('faint.h5')}"
        pg.goto(base + "?step=0")
        pg.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=20000)
        text = pg.text_content(".panel .counts")
        assert text.startswith("every value is within 0's colour: max |a| at this step = 0.0010, 0.00010 of the scale"), text
        assert "warn" in pg.get_attribute(".panel .counts", "class")
        pg.keyboard.press("End")
        pg.wait_for_function("() => document.body.dataset.step === '2'")
        assert pg.text_content(".panel .counts").startswith("every value is exactly 0 at this step")
        pg.keyboard.press("ArrowLeft")
        pg.wait_for_function("() => document.body.dataset.step === '1'")
        assert pg.text_content(".panel .counts").startswith("clipped 0")
    finally:
        pg.context.close()
        server.shutdown()
        server.server_close()


def test_compare_can_draw_both_runs_on_one_scale_and_says_so(page, served):
    a, b = run_id("tiny-tanh.h5"), run_id("tiny-relu.h5")
    cmp = get_json(served[0], f"/api/compare?a={a}&b={b}")
    relu = get_json(served[0], f"/api/runs/{b}")["layers"][0]["scale"]
    shared = cmp["shared_scales"]["conv1"]
    assert shared["hi"] == pytest.approx(max(1.0, relu["hi"])) and shared["lo"] == -shared["hi"]
    open_view(page, f"#/compare/{a}/{b}?step=10")
    rules = lambda: page.eval_on_selector_all(".panel .rule", "r => r.map(x => x.textContent)")  # noqa: E731
    assert "fixed (tanh range)" in rules()[0] and "one scale for both runs" not in rules()[0]
    page.check("#shared-scale")
    assert all("one scale for both runs" in r for r in rules())
    his = page.evaluate("window.__emergence.current.pairs[0].map(p => p.info.scale.hi)")
    assert his == [shared["hi"], shared["hi"]]
    page.wait_for_function("() => location.hash.includes('scale=shared')")
    page.reload()
    page.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=20000)
    assert page.is_checked("#shared-scale") and all("one scale for both runs" in r for r in rules())


def test_symlog_colours_are_chosen_in_the_page_stated_and_replays(page, served):
    rid = run_id("tiny-relu.h5")
    open_view(page, f"#/run/{rid}?step=10")
    page.select_option("#scale-mode", "symlog")
    page.wait_for_function("() => location.hash.includes('scale=symlog') && window.__emergence.current.run && "
                           "window.__emergence.current.run.layers[1].scale.linthresh", timeout=20000)
    page.wait_for_function("() => document.body.dataset.step === '10'", timeout=20000)
    scale = get_json(served[0], f"/api/runs/{rid}?scale=symlog")["layers"][1]["scale"]
    assert "symlog colours: linear within" in page.text_content(".panel[data-layer='conv2'] .rule")
    values = [0.0, scale["linthresh"], 0.3 * scale["hi"], -scale["hi"], 2 * scale["hi"]]
    levels = page.evaluate("""(v) => {
        const p = window.__emergence.current.panels[1];
        return v.map(x => p.colourer.level(x));
    }""", values)
    expected = value_to_index(np.array(values, np.float32), scale["lo"], scale["hi"], scale["linthresh"]).tolist()
    assert levels == expected
    assert request_status(served[0], f"/api/runs/{rid}?scale=cubic") == 400


def request_status(server, path):
    from test_viewer_api import request

    return request(server, path)[0]


def test_per_step_scales_colour_each_frame_on_its_own_range_and_say_so(page, served):
    from replay.scales import step_scales

    server, folder = served
    rid = run_id("tiny-relu.h5")
    with open_run(folder / "tiny-relu.h5") as run:
        steps = run.steps
        at = {int(steps[k]): (k, run.read_frames("conv2", np.array([k])).astype(np.float32)) for k in (1, len(steps) - 1)}
    open_view(page, f"#/run/{rid}?step={int(steps[1])}")
    page.select_option("#scale-mode", "step")
    for step, (k, frame) in at.items():
        open_view(page, f"#/run/{rid}?scale=step&step={step}")
        page.wait_for_function(f"() => document.body.dataset.step === '{step}' && window.__emergence.current.panels "
                               "&& window.__emergence.current.panels[1].scalePos !== undefined", timeout=20000)
        s = float(step_scales(frame)[0])
        got = page.evaluate("""() => { const p = window.__emergence.current.panels[1];
            return [p.colourer.hi, p.colourer.lo, p.scalePos, [...p.barBox.querySelectorAll('.ticks span')].map(e => e.textContent),
                    p.barBox.querySelector('.rule').textContent,
                    [0, 1, 2, 3].map(x => p.colourer.level(p.frame.values[x])), Array.from(p.frame.values.slice(0, 4))]; }""")
        hi, lo, pos, ticks, rule, levels, values = got
        assert (hi, lo, pos) == (pytest.approx(s), pytest.approx(-s), k)
        assert "per step" in rule and "not comparable" in rule and len(ticks) == 3
        assert levels == value_to_index(np.array(values, np.float32), -np.float32(s), np.float32(s)).tolist()
    assert at[int(steps[1])][1].max() != at[int(steps[-1])][1].max()


def test_a_listing_with_one_changed_run_redraws_only_that_row(browser, table_served):
    pg = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
    pg.goto(f"http://127.0.0.1:{table_served.server_address[1]}/")
    pg.wait_for_function("() => window.__emergence && window.__emergence.ready === true", timeout=20000)
    pg.wait_for_selector("#runs tbody tr[data-id]")
    kept, steps = pg.evaluate("""() => {
        const table = window.__emergence.current.table;
        const before = [...document.querySelectorAll('#runs tbody tr[data-id]')];
        table.setRows(table.rows.map((r) => r.name === 'r-b' ? { ...r, last_step: 77 } : r));
        const after = [...document.querySelectorAll('#runs tbody tr[data-id]')];
        return [after.map((tr, i) => tr === before[i]),
                after.map((tr) => tr.querySelector("td[data-key='steps']").textContent.split(' ')[0])];
    }""")
    assert kept == [True, False, True, True] and steps == ["3", "77", "2", "4"]
    pg.context.close()


def test_index_html_steps_every_animation_on_one_clock(browser, two_runs, tmp_path):
    """replay's index.html: one slider shows every layer, filter and geometry GIF at the same training step;
    each canvas holds exactly the GIF's frame at that step (Pillow's decoding), forwards, backwards and across
    keyframes, and an animation without a frame at the cursor's step shows its last frame before it."""
    from PIL import Image, ImageSequence

    from replay.render import ReplayOptions, replay
    from replay.selection import select_frames

    out = tmp_path / "out"
    replay(two_runs["tanh"], out, ReplayOptions(every=1))
    with open_run(two_runs["tanh"]) as run:
        shown = [int(run.steps[p]) for p in select_frames(run.steps, every=1)]
        analysed = [int(s) for s in run.analysis_steps]
    steps = sorted(set(shown) | set(analysed))
    assert len(shown) > 16  # more than one keyframe
    animations = sorted(p.name for p in out.glob("*.gif"))
    assert {"conv1.gif", "conv2.gif", "conv1_kernels.gif", "geometry_conv1.gif"} <= set(animations)
    assert sorted(p.name[:-3] for p in (out / "clock").glob("*.gif.js")) == animations

    def gif_frames(name: str) -> list[np.ndarray]:
        with Image.open(out / name) as im:
            return [np.asarray(frame.convert("RGBA")) for frame in ImageSequence.Iterator(im)]

    expected_frames = {name: gif_frames(name) for name in animations}

    page = browser.new_page()
    try:
        page.goto((out / "index.html").as_uri())
        page.wait_for_selector("#clock:not([hidden])")
        assert page.locator("canvas").count() == len(animations) and page.locator("img[src$='.gif']").count() == 0
        assert page.evaluate("emergenceClock.steps()") == steps
        for step in (steps[-1], steps[5], steps[19], steps[30], steps[0], steps[-2]):  # back across keyframes, forwards
            page.evaluate(f"emergenceClock.show({step})")
            for name in animations:
                frame_steps = analysed if name.startswith("geometry_") else shown
                k = max(i for i, s in enumerate(frame_steps) if s <= step)
                png = page.evaluate("(file) => document.querySelector(`canvas[data-file=\"${file}\"]`).toDataURL()", name)
                got = np.asarray(Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1]))).convert("RGBA"))
                assert np.array_equal(got, expected_frames[name][k]), (name, step)  # opaque, the GIF's colours
                label = page.locator(f'canvas[data-file="{name}"] + .clock-step').inner_text()
                assert label.startswith(f"step {frame_steps[k]}") and (("at or before" in label) == (frame_steps[k] != step))
        page.keyboard.press("End")
        page.keyboard.press("ArrowLeft")
        assert page.locator(".clock-now").inner_text().startswith(f"step {steps[-2]}")
        page.keyboard.press("Space")  # play from there: it reaches the last step and stops
        page.wait_for_function(f"document.querySelector('.clock-now').textContent.startsWith('step {steps[-1]} ')")
        page.wait_for_function("document.querySelector('#clock button').textContent === 'play'")
    finally:
        page.close()


def test_index_html_shows_the_last_frame_before_a_step_and_keeps_a_gif_it_cannot_step(browser, two_runs, tmp_path):
    from replay.render import ReplayOptions, replay

    out = tmp_path / "out"
    replay(two_runs["relu"], out, ReplayOptions(every=3, kernels=False))  # layers at steps 0, 3, 6, …; geometry at each
    script = out / "clock" / "conv2.gif.js"
    script.write_text(script.read_text().replace('"R0lGOD', '"R0xGOD'))  # "GIF89a" -> not a GIF
    page = browser.new_page()
    try:
        page.goto((out / "index.html").as_uri())
        page.wait_for_selector("#clock:not([hidden])")
        assert page.locator("img[src='conv2.gif']").count() == 1 and page.locator("canvas[data-file='conv1.gif']").count() == 1
        assert "conv2.gif: not a GIF" in page.locator(".clock-note").inner_text()
        page.evaluate("emergenceClock.show(4)")
        label = lambda f: page.locator(f'canvas[data-file="{f}"] + .clock-step').inner_text()
        assert label("conv1.gif") == "step 3 (the last frame at or before 4)" and label("geometry_conv1.gif") == "step 4"
    finally:
        page.close()
