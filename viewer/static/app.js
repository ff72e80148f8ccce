// The viewer's four views: the runs table, one run at a step cursor, two runs side by side at one step, and the
// curves of any number of runs on shared axes.
// The view state lives in the URL's hash (#/run/<id>?step=120&layers=conv1,conv3&probes=0:5&channels=0:4),
// so a link reproduces a view. Names, config strings and class names are untrusted: textContent only.

import { Colourer } from "./colour.js";
import { Curves, legend } from "./curves.js";
import { FrameStore, getBytes, getJSON } from "./data.js";
import { LayerPanel, el, parseList, tip } from "./panel.js";
import { similarityPlot, layerMap } from "./similarity.js";
import { ListView, fmt } from "./table.js";
import { CurvesView } from "./runs_curves.js";
import { DistributionPanel, GeometryPanel, classLegend } from "./views.js";

const app = document.getElementById("app");
const where = document.getElementById("where");
const conn = document.getElementById("conn");
// what tests and benchmarks read: the browser's own clock
const stats = (window.__emergence = { view: null, ready: false, firstFramesMs: null, advanced: 0, playStarted: null, errors: [] });
window.__emergence.Colourer = Colourer;

let current = null;

function parseHash() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  return { path: path.split("/").filter(Boolean), params: new URLSearchParams(query || "") };
}

function route() {
  if (current) current.stop();
  tip(null);
  const { path, params } = parseHash();
  const id = /^[0-9a-f]{16}$/;
  if (path[0] === "run" && id.test(path[1] || "")) current = new RunView(path[1], params);
  else if (path[0] === "compare" && id.test(path[1] || "") && id.test(path[2] || "")) current = new CompareView(path[1], path[2], params);
  else if (path[0] === "curves" && (path[1] || "").split(",").every((x) => id.test(x))) current = new CurvesView(path[1].split(","), params, stats, fail);
  else current = new ListView(app, where, params, stats, fail, conn);
  stats.current = current;
}

function fail(e) {
  stats.errors.push(String(e.message || e));
  conn.textContent = `error: ${e.message || e}`;
}

function nearest(steps, step) {
  let lo = 0, hi = steps.length - 1;
  if (hi < 0) return -1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] < step) lo = mid + 1; else hi = mid;
  }
  if (lo > 0 && step - steps[lo - 1] <= steps[lo] - step) return lo - 1;
  return lo;
}

// ------------------------------------------------------------------------------------- step controls
// One step cursor: slider over recorded frames, exact-step box, play/pause with fps, follow live, keyboard.
class Controls {
  constructor(view, params) {
    this.view = view;
    this.slider = el("input", { type: "range", min: "0", max: "0", value: "0", id: "slider", "aria-label": "recorded frame" });
    this.box = el("input", { type: "number", id: "step-box", min: "0", "aria-label": "step" });
    this.total = el("span", { class: "muted" });
    this.play = el("button", { id: "play", text: "▶ play" });
    this.fps = el("input", { type: "number", id: "fps", min: "1", max: "60", value: params.get("fps") || "10", "aria-label": "frames per second" });
    this.follow = el("input", { type: "checkbox", id: "follow" });
    this.notice = el("div", { class: "notice", id: "notice" });
    const b = (label, title, fn) => { const x = el("button", { text: label, title }); x.addEventListener("click", fn); return x; };
    this.root = el("div", { class: "controls" },
      el("div", { class: "row" },
        b("|◀", "first frame (Home)", () => view.move("first")), b("◀", "previous frame (←)", () => view.move(-1)),
        this.slider, b("▶", "next frame (→)", () => view.move(1)), b("▶|", "last frame (End)", () => view.move("last")),
        el("label", {}, "step ", this.box), this.total),
      el("div", { class: "row" }, this.play, el("label", {}, " fps ", this.fps),
        el("label", { class: "follow" }, this.follow, " follow live"),
        el("span", { class: "muted", text: " keys: ← → one frame, PgUp/PgDn ten, Home/End, space plays" })),
      this.notice);
    this.slider.addEventListener("input", () => view.gotoPosition(Number(this.slider.value), true));
    this.box.addEventListener("change", () => { if (this.box.value !== "") view.goto(Number(this.box.value), true); });
    this.play.addEventListener("click", () => view.togglePlay());
    this.fps.addEventListener("change", () => view.saveUrl());
    this.follow.addEventListener("change", () => { view.following = this.follow.checked; if (view.following) view.move("last", false); view.saveUrl(); });
    this.keys = (e) => {
      if (e.target instanceof HTMLInputElement && e.target.type !== "range" && e.target.type !== "checkbox") return;
      const moves = { ArrowLeft: -1, ArrowRight: 1, PageUp: -10, PageDown: 10, Home: "first", End: "last" };
      if (e.key in moves) { e.preventDefault(); view.move(moves[e.key]); } else if (e.key === " ") { e.preventDefault(); view.togglePlay(); }
    };
    document.addEventListener("keydown", this.keys);
  }

  get fpsValue() { return Math.min(60, Math.max(1, Number(this.fps.value) || 10)); }

  update(steps, pos, requested) {
    this.slider.max = String(Math.max(0, steps.length - 1));
    this.slider.value = String(pos);
    if (document.activeElement !== this.box) this.box.value = String(steps[pos]);
    this.total.textContent = ` frame ${pos + 1} of ${steps.length} recorded (steps ${steps[0]}–${steps[steps.length - 1]})`;
    this.notice.textContent = requested !== null && requested !== steps[pos]
      ? `step ${requested} was not recorded: showing the nearest recorded step ${steps[pos]}` : "";
  }

  stop() { document.removeEventListener("keydown", this.keys); }
}

// ------------------------------------------------------------------------------------ shared stepping
// A view with panels that show frames at positions of `steps` (its own steps, or the steps two runs share).
class SteppedView {
  init(params) {
    this.params = params;
    this.zoom = Math.min(8, Math.max(1, Number(params.get("zoom")) || 2));
    this.probes = parseList(params.get("probes"));
    this.channels = parseList(params.get("channels"));
    this.layerFilter = params.get("layers") ? params.get("layers").split(",") : null;
    this.requested = params.has("step") && params.get("step") !== "" ? Number(params.get("step")) : null;
    this.following = params.get("follow") === "1";
    this.playing = false;
    this.pos = 0;
    this.timers = [];
    this.started = performance.now();
  }

  stop() {
    this.stopped = true;
    this.playing = false;
    this.timers.forEach(clearInterval);
    if (this.controls) this.controls.stop();
  }

  move(delta, user = true) {
    const n = this.steps.length;
    const pos = delta === "first" ? 0 : delta === "last" ? n - 1 : Math.min(n - 1, Math.max(0, this.pos + delta));
    this.gotoPosition(pos, user);
  }

  gotoPosition(pos, user) { this.goto(this.steps[pos], user, true); }

  // shows recorded step `step`, or the nearest recorded one with a notice; user moves end "follow live"
  goto(step, user = true, exact = false) {
    if (user) this.setFollow(false);
    if (!this.steps.length) return;
    this.requested = exact ? null : step;
    this.pos = nearest(this.steps, step);
    this.controls.update(this.steps, this.pos, this.requested);
    this.render();
    this.saveUrl();
  }

  setFollow(on) {
    this.following = on;
    this.controls.follow.checked = on;
  }

  render() {
    const pos = this.pos;
    const step = this.steps[pos];
    document.body.dataset.step = String(step);
    let drawn = 0;
    for (const [panel, p] of this.panelPositions(pos)) {
      if (panel.show(p, step)) { drawn++; continue; }
      panel.store.ensure(p).then(() => { if (this.pos === pos && !this.stopped) { panel.show(p, step); this.checkReady(); } }, fail);
    }
    this.afterRender(step);
    this.checkReady();
    return drawn;
  }

  checkReady() {
    const panels = this.panelPositions(this.pos);
    if (stats.firstFramesMs === null && panels.length && panels.every(([p]) => p.drawnStep !== null)) {
      stats.firstFramesMs = performance.now() - this.started;
      stats.firstFramesSinceNavigation = performance.now();
      stats.ready = true;
      for (const [panel, p] of panels) panel.store.ensure(p).catch(() => {}); // then the blocks around them
    }
  }

  togglePlay() {
    this.playing = !this.playing;
    this.controls.play.textContent = this.playing ? "❚❚ pause" : "▶ play";
    if (!this.playing) return;
    if (this.pos >= this.steps.length - 1) this.gotoPosition(0, false);
    this.setFollow(false);
    stats.advanced = 0;
    stats.playStarted = performance.now();
    let last = performance.now();
    const tick = (now) => {
      if (!this.playing || this.stopped) return;
      const next = this.pos + 1;
      if (next >= this.steps.length) { this.togglePlay(); return; }
      const interval = 1000 / this.controls.fpsValue;
      const due = now - last >= interval - 1;
      const pairs = this.panelPositions(next);
      const ready = pairs.every(([panel, p]) => panel.store.get(p) !== null);
      if (!ready) pairs.forEach(([panel, p]) => panel.store.ensure(p).catch(fail));
      if (due && ready) {
        last = now - last > 2 * interval ? now : last + interval; // the asked rate on average, not "at most"
        this.pos = next;
        this.requested = null;
        this.controls.update(this.steps, this.pos, null);
        this.render();
        stats.advanced++;
        stats.playElapsed = performance.now() - stats.playStarted;
        // fetch the next block before it is needed
        for (const [panel, p] of this.panelPositions(Math.min(this.steps.length - 1, next + 16))) panel.store.ensure(p).catch(() => {});
      }
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  saveUrl() {
    clearTimeout(this.urlTimer);
    this.urlTimer = setTimeout(() => {
      const p = new URLSearchParams();
      if (this.steps.length) p.set("step", String(this.requested ?? this.steps[this.pos]));
      if (this.layerFilter) p.set("layers", this.layerFilter.join(","));
      for (const key of ["probes", "channels"]) if (this.params.get(key)) p.set(key, this.params.get(key));
      if (this.zoom !== 2) p.set("zoom", String(this.zoom));
      if (this.controls.fpsValue !== 10) p.set("fps", String(this.controls.fpsValue));
      if (this.following) p.set("follow", "1");
      if (this.extraParams) this.extraParams(p);
      history.replaceState(null, "", `#/${this.urlPath()}?${p}`);
    }, 150);
  }

  selectionInputs() {
    const input = (key, label, placeholder) => {
      const box = el("input", { type: "text", id: `pick-${key}`, placeholder, size: "8" });
      box.value = this.params.get(key) || "";
      box.addEventListener("change", () => {
        const p = new URLSearchParams(this.params);
        if (box.value.trim()) p.set(key, box.value.trim()); else p.delete(key);
        if (this.steps.length) p.set("step", String(this.steps[this.pos]));
        location.hash = `#/${this.urlPath()}?${p}`;
      });
      return el("label", {}, ` ${label} `, box);
    };
    const zoom = el("select", { id: "zoom" }, ...[1, 2, 3, 4, 6, 8].map((z) => {
      const o = el("option", { value: String(z), text: `×${z}` });
      if (z === this.zoom) o.selected = true;
      return o;
    }));
    zoom.addEventListener("change", () => {
      const p = new URLSearchParams(this.params);
      p.set("zoom", zoom.value);
      if (this.steps.length) p.set("step", String(this.steps[this.pos]));
      location.hash = `#/${this.urlPath()}?${p}`;
    });
    return el("div", { class: "row selection" }, el("label", {}, "zoom ", zoom), input("layers", "layers", "all"),
      input("probes", "probes", "all, or 0:5"), input("channels", "channels", "all, or 0:4"));
  }
}

// ---------------------------------------------------------------------------------------------- one run
class RunView extends SteppedView {
  constructor(id, params) {
    super();
    stats.view = "run";
    this.id = id;
    this.init(params);
    this.load().catch(fail);
  }

  urlPath() { return `run/${this.id}`; }

  runUrl() { return `/api/runs/${this.id}${this.scaleMode ? `?scale=${this.scaleMode}` : ""}`; }

  extraParams(p) { if (this.scaleMode) p.set("scale", this.scaleMode); }

  // linear colours (the default), a symmetric-log colour axis or each frame on its own scale: the view reloads
  // with the server's scales
  scaleChoice() {
    const box = el("select", { id: "scale-mode" }, ...[["", "linear"], ["symlog", "symmetric log"], ["step", "per step"]].map(([v, t]) => {
      const o = el("option", { value: v, text: t });
      o.selected = v === this.scaleMode;
      return o;
    }));
    box.addEventListener("change", () => {
      const p = new URLSearchParams(this.params);
      if (box.value) p.set("scale", box.value); else p.delete("scale");
      if (this.steps.length) p.set("step", String(this.steps[this.pos]));
      location.hash = `#/${this.urlPath()}?${p}`;
    });
    return el("label", {}, " colours ", box);
  }

  async load() {
    // the run, its probes and metrics are asked for at once; the first frames (one per layer) as soon as the
    // run's steps are known, and the page is built while they travel
    const metrics = getJSON(`/api/runs/${this.id}/metrics`);
    this.scaleMode = ["symlog", "step"].includes(this.params.get("scale")) ? this.params.get("scale") : "";
    const [run, probes] = await Promise.all([getJSON(this.runUrl()), getBytes(`/api/runs/${this.id}/probes`)]);
    if (this.stopped) return;
    this.run = run;
    this.steps = run.steps;
    this.stores = new Map();
    if (this.steps.length) this.firstFetches(run, nearest(this.steps, this.requested ?? this.steps[this.steps.length - 1]));
    this.probeBytes = new Uint8Array(probes.buffer);
    where.textContent = run.name;
    document.title = `${run.name} · emergence`;
    this.facts = el("div", { class: "facts" });
    this.controls = new Controls(this, this.params);
    this.scaleLog = el("div", { class: "notice scale-log", id: "scale-log" });
    this.controls.root.append(this.scaleLog);
    this.curves = new Curves((step) => this.goto(step, true));
    this.curveLegend = el("p", { class: "legend" });
    const opts = { zoom: this.zoom, probes: this.probes, channels: this.channels, probeBytes: this.probeBytes };
    this.panels = this.shownLayers(run).map((l) => new LayerPanel(run, l, opts, this.stores.get(l.name)));
    this.kernelPanels = servedKernels(run).map((k) => new LayerPanel(run, k, { zoom: this.zoom, kernels: true }, this.stores.get(`kernel ${k.name}`)));
    for (const p of this.panels) {
      const link = el("a", { class: "export", target: "_blank", rel: "noopener", text: "PNG" });
      link.title = "this frame rendered by replay's own renderer (the GIF's frame)";
      p.exportLink = link;
      p.root.querySelector(".panel-head").append(link);
    }
    this.views = new LayerViews(this.shownLayers(run).map((l) => l.name), run, "");
    const selection = this.selectionInputs();
    selection.append(this.scaleChoice());
    app.replaceChildren(this.facts, this.controls.root, selection, this.curves.canvas, this.curveLegend,
      el("div", { class: "panels" }, ...this.panels.map((p) => p.root)),
      ...(this.kernelPanels.length ? [el("h3", { text: "first layer's kernels over training" }), el("div", { class: "panels" }, ...this.kernelPanels.map((p) => p.root))] : []),
      ...this.views.sections());
    this.showFacts();
    if (!this.steps.length) { this.controls.notice.textContent = "no frame recorded yet"; }
    else if (this.requested !== null) this.goto(this.requested, false);
    else { this.setFollow(this.following || run.state === "recording"); this.move("last", false); }
    this.controls.follow.checked = this.following;
    this.setMetrics(await metrics);
    this.timers.push(setInterval(() => this.poll().catch(fail), 1000));
    await firstFramesDrawn(); // the distributions take the server a moment per layer: after the frames, not before
    this.viewsLoaded = performance.now();
    await this.views.load([this.id], () => this.steps.length ? this.steps[this.pos] : null);
  }

  shownLayers(run) {  // a layer too large to serve (its frames get 413) is named in the facts instead
    return run.layers.filter((l) => !l.too_large && (!this.layerFilter || this.layerFilter.includes(l.name)));
  }

  // stores for the shown layers and the first kernel layer, each asked for frame `pos` alone
  firstFetches(run, pos) {
    const items = [...this.shownLayers(run).map((l) => [l.name, l, false]), ...servedKernels(run).map((k) => [`kernel ${k.name}`, k, true])];
    for (const [key, info, kernels] of items) {
      const store = FrameStore.forLayer(run.id, info, kernels);
      store.setTotal(run.steps.length);
      this.stores.set(key, store);
      store.ensureOne(pos).catch(fail);
    }
  }

  setMetrics(metrics) {
    this.metrics = metrics;
    this.curves.set(metrics, Math.max(this.run.planned_steps, this.steps[this.steps.length - 1] || 0));
    this.curveLegend.textContent = legend(metrics);
  }

  showFacts() {
    const r = this.run;
    const test = r.test ? `test accuracy ${fmt(r.test.accuracy, 4)} on ${r.test.count} images` : "no test result yet";
    const state = el("span", { class: `state ${r.state}`, id: "run-state", text: r.state + (r.reason ? `: ${r.reason}` : "") });
    const refused = [...r.layers, ...r.kernels].filter((l) => l.too_large).map((l) => el("p", { class: "notice", text: `not shown: ${l.too_large}` }));
    const nonfinite = Object.entries(r.nonfinite || {}).map(([name, what]) => `${name} ${what}`);
    const warning = nonfinite.length ? [el("p", { class: "notice", id: "run-nonfinite", text: `non-finite data: ${nonfinite.join("; ")}` })] : [];
    this.facts.replaceChildren(el("h2", { text: r.name }), ...warning, el("p", {},
      state, el("span", { text: ` · ${r.experiment}: ${r.training} · ${r.steps.length} frames of ${r.planned_steps} steps (${r.schedule}) · ${test}` })),
      ...refused);
  }

  panelPositions(pos) {
    return [...this.panels, ...this.kernelPanels].map((p) => [p, pos]);
  }

  // a scale that changed while the run records is never changed silently: one line each, newest first
  announceScale(name, was, now, run) {
    const range = (s) => `[${[].concat(s.lo)[0].toPrecision(3)}, ${[].concat(s.hi)[0].toPrecision(3)}]`;
    const last = run.steps.length ? run.steps[run.steps.length - 1] : 0;
    const line = el("div", { text: `at step ${last}: ${name}'s colour scale ${range(was)} → ${range(now)} (${now.provisional ? `over the ${now.covers} frames recorded so far` : "final"})` });
    this.scaleLog.prepend(line);
    while (this.scaleLog.childNodes.length > 6) this.scaleLog.lastChild.remove();
    stats.scaleChanges = (stats.scaleChanges || 0) + 1;
  }

  afterRender(step) {
    this.curves.setCursor(step);
    this.views.setStep(step);
    for (const p of this.panels) p.exportLink.setAttribute("href", `/api/runs/${this.id}/frame.png?layer=${encodeURIComponent(p.info.name)}&step=${step}${this.scaleMode ? `&scale=${this.scaleMode}` : ""}`);
  }

  async poll() {
    const run = await getJSON(this.runUrl());
    if (this.stopped) return;
    conn.textContent = "";
    const grown = run.steps.length !== this.steps.length;
    const counts = JSON.stringify(run.counts) !== JSON.stringify(this.run.counts) || JSON.stringify(run.test) !== JSON.stringify(this.run.test);
    this.run = { ...this.run, ...run };
    this.steps = run.steps;
    for (const p of [...this.panels, ...this.kernelPanels]) {
      const info = (p.kernels ? run.kernels : run.layers).find((l) => l.name === p.info.name);
      p.run = this.run;
      p.store.setTotal(run.steps.length);
      if (info && JSON.stringify(info.scale.thresholds) !== p.scaleKey) {
        const was = p.info.scale;
        this.announceScale(p.kernels ? `${info.name} kernels` : info.name, was, info.scale, run);
        p.info = { ...p.info, scale: info.scale };
        p.setScale(info.scale);
        p.drawnStep = null;
      } else if (info && !!info.scale.provisional !== !!p.info.scale.provisional) {
        p.info = { ...p.info, scale: info.scale };
        p.setScale(info.scale); // the run completed: the same scale, no longer provisional
      }
    }
    this.showFacts();
    if (counts) this.setMetrics(await getJSON(`/api/runs/${this.id}/metrics`));
    if (grown && performance.now() - this.viewsLoaded > 10000) { // a live run's distributions: every 10 s at most
      this.viewsLoaded = performance.now();
      this.views.load([this.id], () => this.steps[this.pos]).catch(fail);
    }
    if (!this.steps.length) return;
    if (this.following && !this.playing) this.move("last", false);
    else if (grown || this.panels.some((p) => p.drawnStep === null)) {
      // the user's cursor stays where it is: the same requested step, shown exactly once it is recorded
      if (this.requested !== null) this.goto(this.requested, false); else this.controls.update(this.steps, this.pos, null);
      if (this.panels.some((p) => p.drawnStep === null)) this.render();
    }
  }
}

// ------------------------------------------------------------------------------------------- two runs
class CompareView extends SteppedView {
  constructor(a, b, params) {
    super();
    stats.view = "compare";
    this.ids = [a, b];
    this.init(params);
    this.load().catch(fail);
  }

  urlPath() { return `compare/${this.ids[0]}/${this.ids[1]}`; }

  async load() {
    const [cmp, ra, rb, pa, pb] = await Promise.all([
      getJSON(`/api/compare?a=${this.ids[0]}&b=${this.ids[1]}`), getJSON(`/api/runs/${this.ids[0]}`), getJSON(`/api/runs/${this.ids[1]}`),
      getBytes(`/api/runs/${this.ids[0]}/probes`), getBytes(`/api/runs/${this.ids[1]}/probes`)]);
    if (this.stopped) return;
    this.runs = [ra, rb];
    this.cmp = cmp;
    this.steps = cmp.steps;
    where.textContent = `${ra.name} vs ${rb.name}`;
    this.controls = new Controls(this, this.params);
    this.controls.follow.disabled = true;
    const layers = cmp.layers.filter((l) => !this.layerFilter || this.layerFilter.includes(l));
    this.pairs = layers.map((name) => [0, 1].map((k) => {
      const run = this.runs[k];
      return new LayerPanel(run, run.layers.find((l) => l.name === name), {
        zoom: this.zoom, probes: this.probes, channels: this.channels,
        probeBytes: new Uint8Array((k ? pb : pa).buffer), tag: k ? "B" : "A" });
    }));
    const head = el("div", { class: "facts" }, el("h2", { text: "Two runs at the same step" }),
      ...[0, 1].map((k) => el("p", {}, el("b", { text: k ? "B " : "A " }), el("a", { href: `#/run/${this.runs[k].id}`, text: this.runs[k].name }),
        el("span", { text: ` · ${this.runs[k].facts.activation}, seed ${this.runs[k].facts.seed} · ${this.runs[k].state}` }))),
      el("p", { class: "muted", text: `Aligned by step: ${cmp.steps.length} steps recorded in both runs; each side keeps its own fixed colour scale unless "one colour scale for both runs" is ticked.` }));
    this.sim = el("div", { class: "similarity" });
    if (cmp.similarity) {
      this.simPlot = similarityPlot(cmp.similarity, layers);
      this.sim.append(el("h3", { text: `same-layer similarity over training (${cmp.similarity.measure})` }), this.simPlot.canvas,
        el("h3", { text: `layer map at step ${cmp.similarity.map.step}: rows A, columns B` }), layerMap(cmp.similarity.map, this.runs[0].palettes),
        el("h3", { text: `baseline: the layer map at step ${cmp.similarity.map_init.step} (initialisation)` }), layerMap(cmp.similarity.map_init, this.runs[0].palettes),
        el("p", { id: "layer-matching", text: matchingText(cmp.similarity.matching) }));
    } else {
      this.sim.append(el("p", { class: "notice", text: `no similarity between the runs: ${cmp.mismatch || "no analysed step in common"}` }));
    }
    this.sharedScale = el("input", { type: "checkbox", id: "shared-scale" });
    this.sharedScale.checked = this.params.get("scale") === "shared";
    this.sharedScale.addEventListener("change", () => { this.applyScales(); this.saveUrl(); });
    this.controls.root.append(el("label", { class: "row" }, this.sharedScale,
      " one colour scale for both runs (per layer: the range holding both runs' own scales)"));
    this.applyScales();
    this.views = new LayerViews(layers, ra, "A ", rb);
    app.replaceChildren(head, this.controls.root, this.selectionInputs(),
      el("div", { class: "pairs" }, ...this.pairs.map(([a, b]) => el("div", { class: "pair" }, a.root, b.root))), this.sim,
      ...this.views.sections());
    if (!this.steps.length) { this.controls.notice.textContent = "the runs have no recorded step in common"; return; }
    if (this.requested !== null) this.goto(this.requested, false); else this.move("last", false);
    await firstFramesDrawn();
    await this.views.load(this.ids, () => this.steps[this.pos]);
  }

  panelPositions(pos) {
    const step = this.steps[pos];
    const posA = this.runs[0].steps.indexOf(step), posB = this.runs[1].steps.indexOf(step);
    return this.pairs.flatMap(([a, b]) => [[a, posA], [b, posB]]);
  }

  // each run's own scale (the default), or one per layer shared by both: always stated under the bar
  applyScales() {
    const shared = this.sharedScale.checked;
    for (const pair of this.pairs) {
      for (const [k, panel] of pair.entries()) {
        const own = this.runs[k].layers.find((l) => l.name === panel.info.name).scale;
        const scale = shared && this.cmp.shared_scales[panel.info.name] ? this.cmp.shared_scales[panel.info.name] : own;
        panel.info = { ...panel.info, scale };
        panel.setScale(scale);
        panel.drawnStep = null;
      }
    }
    if (this.views && this.steps && this.steps.length) this.render();
  }

  extraParams(p) { if (this.sharedScale && this.sharedScale.checked) p.set("scale", "shared"); }

  afterRender(step) {
    if (this.simPlot) this.simPlot.setCursor(step);
    this.views.setStep(step);
  }
}

window.addEventListener("hashchange", route);
route();

// Distributions and geometry of the shown layers, for one run or two side by side (B's panels after A's, with
// the distributions of both binned over one range so that their columns compare).
class LayerViews {
  constructor(layers, runA, tagA, runB = null) {
    this.layers = layers;
    this.runs = runB ? [runA, runB] : [runA];
    const tags = runB ? [tagA, "B "] : [""];
    this.dist = layers.map((name, i) => this.runs.map((run, k) => new DistributionPanel(name, tags[k],
      run.layers.find((l) => l.name === name).channels, (channel) => this.loadDistribution(i, k, channel))));
    this.ids = [];
    this.currentStep = () => null;
    const analysed = this.runs.every((r) => r.has_analysis);
    this.geo = analysed ? layers.map((name) => this.runs.map((_, k) => new GeometryPanel(name, tags[k]))) : [];
    this.legend = el("div");
    this.method = el("p", { class: "legend" });
    this.distNote = el("p", { class: "legend", text: "loading…" });
    this.stats = stats;
  }

  sections() {
    const row = (panels) => el("div", { class: "pair" }, ...panels.map((p) => p.root));
    const out = [el("h3", { id: "distributions", text: "Distributions over training" }), this.distNote,
      el("div", { class: "panels" }, ...this.dist.map(row))];
    if (this.geo.length) {
      out.push(el("h3", { id: "geometry", text: "Representation geometry: the analysis images on two principal components, by class" }),
        this.method, this.legend, el("div", { class: "panels" }, ...this.geo.map(row)));
    }
    return out;
  }

  // one range for both runs' bins: the union of their colour scales (0 at the bottom where both are one-sided)
  range(name) {
    const ends = this.runs.map((r) => {
      const s = r.layers.find((l) => l.name === name).scale;
      return [s.one_sided ? 0 : Math.min(...[].concat(s.lo)), Math.max(...[].concat(s.hi))];
    });
    return [Math.min(...ends.map((e) => e[0])), Math.max(...ends.map((e) => e[1]))];
  }

  // layer i's distribution in run k, of one channel (the model's number) or of the whole layer (null)
  async loadDistribution(i, k, channel = null) {
    const name = this.layers[i], shared = this.ids.length > 1;
    const [lo, hi] = shared ? this.range(name) : [null, null];
    const q = (shared ? `&lo=${lo}&hi=${hi}` : "") + (channel === null ? "" : `&channel=${channel}`);
    const d = await getJSON(`/api/runs/${this.ids[k]}/distribution?layer=${encodeURIComponent(name)}${q}`);
    this.dist[i][k].set(d);
    this.dist[i][k].setStep(this.currentStep());
    this.distNote.textContent = `Each column: the probe images' activations (every position; every stored channel, or the one chosen above a panel) at one recorded step, from the stored frames, binned over ${shared ? "one range shared by both runs" : "the layer's colour-scale range"} (the same bins at every step); colour: the share of the step's values in the bin, log scale from 0.01% (light) to 100% (dark); lines: the median (solid), 25/75% (dashed), 5/95% (dotted); red: the step shown.`;
  }

  async load(ids, currentStep) {
    this.ids = ids;
    this.currentStep = currentStep;
    await Promise.all(this.layers.flatMap((_, i) => ids.map((_, k) => {
      const select = this.dist[i][k].channel;
      return this.loadDistribution(i, k, select && select.value !== "" ? Number(select.value) : null);
    })));
    this.stats.distributionsReady = true;
    if (!this.geo.length) return;
    await Promise.all(this.layers.flatMap((name, i) => ids.map(async (id, k) => {
      const g = await getJSON(`/api/runs/${id}/geometry?layer=${encodeURIComponent(name)}`);
      this.geo[i][k].set(g);
      this.geo[i][k].setStep(currentStep());
      this.method.textContent = `${g.method}. Only the analysed steps have Grams: each panel shows the analysed step at or before the cursor. Between-class share: the classes' share of the features' variance (all dimensions).`;
      if (!this.legend.childNodes.length) this.legend.replaceChildren(classLegend(this.runs[k].class_names, g.labels));
    })));
    this.stats.geometryReady = true;
  }

  setStep(step) {
    for (const p of [...this.dist.flat(), ...this.geo.flat()]) p.setStep(step);
  }
}

// resolves once the view's first frames are drawn (or after 5 s, or at once for a run without frames)
function firstFramesDrawn() {
  const started = performance.now();
  return new Promise((resolve) => {
    const check = () => {
      const c = stats.current;
      if (stats.firstFramesMs !== null || !c || !c.steps || !c.steps.length || performance.now() - started > 5000) resolve();
      else setTimeout(check, 30);
    };
    check();
  });
}

// the first kernel layer, when it can be served
function servedKernels(run) {
  return run.kernels.slice(0, 1).filter((k) => !k.too_large);
}

// "layer matching 0.222 [0.117–0.381] at initialisation → 0.639 [0.476–0.775] at the end": how often a layer's
// most similar layer in the other run is itself, with its 95% interval, before and after training.
function matchingText(m) {
  const one = (x) => x ? `${x.accuracy.toFixed(3)} [${x.interval95[0].toFixed(3)}–${x.interval95[1].toFixed(3)}] (${x.matches}/${x.compared})` : "-";
  return `layer matching (a layer's most similar layer in the other run is itself): ${one(m.init)} at initialisation → ${one(m.end)} at the end`;
}
