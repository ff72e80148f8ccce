// Curves of any number of runs on shared axes: train loss and accuracy, held-out accuracy, and one extra series
// (a per-layer measure, the learning rate, a loop's own series). A smoothing slider (an exponential moving
// average with bias correction, as TensorBoard smooths: the raw line stays faint), linear or log y, step or
// wall-time x. Hovering any chart moves one cursor over all of them and lists every run's value there; a click
// pins the step, and each run's link opens its frames at that step. State in the hash:
// #/curves/<id>,<id>?smooth=0.6&y=log&x=wall&series=conv1/weight_change&step=120

import { getJSON } from "./data.js";
import { el } from "./panel.js";
import { differingKeys } from "./table.js";

// matplotlib's tab10: distinct for ten runs; runs beyond ten reuse them dashed
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const PAD = { l: 52, r: 12, t: 20, b: 28 };

// TensorBoard's smoothing: an EMA of weight w, divided by 1 − w^n (n finite values so far) so that the first
// points are not pulled towards 0. A missing (non-finite) value stays missing and does not move the average.
export function smoothed(values, w) {
  if (!(w > 0)) return values.slice();
  let last = 0, n = 0;
  return values.map((v) => {
    if (v === null) return null;
    last = last * w + (1 - w) * v;
    n++;
    return last / (1 - w ** n);
  });
}

// x positions of steps on a run's wall clock: its training rows' wall times, linearly between them
function wallOf(train, steps) {
  const s = train.step, t = train.wall_time;
  return steps.map((x) => {
    if (!s.length) return null;
    let lo = 0, hi = s.length - 1;
    if (x <= s[0]) return t[0];
    if (x >= s[hi]) return t[hi];
    while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (s[mid] <= x) lo = mid; else hi = mid; }
    return t[lo] + ((x - s[lo]) / (s[hi] - s[lo])) * (t[hi] - t[lo]);
  });
}

function nearestIndex(xs, x) {
  let best = -1, gap = Infinity;
  let lo = 0, hi = xs.length - 1;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
  for (const i of [lo - 1, lo]) if (i >= 0 && i < xs.length && Math.abs(xs[i] - x) < gap) { gap = Math.abs(xs[i] - x); best = i; }
  return best;
}

function tick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e-3 && a < 1e5 ? String(Number(v.toPrecision(3))) : v.toExponential(1);
}

class Chart {
  constructor(view, spec) {
    this.view = view;
    this.spec = spec;
    this.canvas = el("canvas", { class: "runs-chart", "data-chart": spec.key, width: "560", height: "250" });
    this.canvas.addEventListener("mousemove", (e) => { const x = this.dataX(e); if (x !== null) view.setCursor(x); });
    this.canvas.addEventListener("click", (e) => { const x = this.dataX(e); if (x !== null) view.pin(x); });
  }

  dataX(e) {
    if (!this.frame) return null;
    const px = e.offsetX * (this.canvas.width / this.canvas.clientWidth);
    const f = (px - PAD.l) / (this.canvas.width - PAD.l - PAD.r);
    return this.frame.x0 + Math.min(1, Math.max(0, f)) * (this.frame.x1 - this.frame.x0);
  }

  // lines: [{colour, dashed, xs, raw, smooth}] (smooth null: drawn as points joined, no faint copy)
  drawBase(lines, log, xRange) {
    const c = document.createElement("canvas");
    c.width = this.canvas.width;
    c.height = this.canvas.height;
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, c.width, c.height);
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#222";
    ctx.fillText(this.spec.title(), PAD.l, 13);
    const ok = (v) => v !== null && (!log || v > 0);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const l of lines) {
      for (let i = 0; i < l.xs.length; i++) {
        if (l.xs[i] === null || !ok(l.raw[i])) continue;
        x0 = Math.min(x0, l.xs[i]); x1 = Math.max(x1, l.xs[i]);
        const v = log ? Math.log10(l.raw[i]) : l.raw[i];
        y0 = Math.min(y0, v); y1 = Math.max(y1, v);
      }
    }
    this.frame = null;
    if (xRange && Number.isFinite(x0)) [x0, x1] = xRange; // every chart on the same x axis: one cursor lines up
    if (!Number.isFinite(x0)) { ctx.fillStyle = "#888"; ctx.fillText(log ? "no positive value to draw on a log axis" : "no data", PAD.l + 10, 60); this.base = c; return; }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.04;
    y0 -= pad; y1 += pad;
    const W = c.width - PAD.l - PAD.r, H = c.height - PAD.t - PAD.b;
    const X = (x) => PAD.l + ((x - x0) / (x1 - x0)) * W;
    const Y = (v) => PAD.t + H - (((log ? Math.log10(v) : v) - y0) / (y1 - y0)) * H;
    this.frame = { x0, x1, X, top: PAD.t, bottom: PAD.t + H };
    ctx.strokeStyle = "#ccc";
    ctx.strokeRect(PAD.l, PAD.t, W, H);
    ctx.fillStyle = "#333";
    for (let k = 0; k <= 4; k++) {
      const v = y0 + (k / 4) * (y1 - y0);
      const label = log ? tick(10 ** v) : tick(v);
      ctx.fillText(label, 2, PAD.t + H - (k / 4) * H + 4);
      const x = x0 + (k / 4) * (x1 - x0);
      ctx.textAlign = k === 0 ? "left" : k === 4 ? "right" : "center";
      ctx.fillText(this.view.xMode === "wall" ? `${tick(x)} s` : String(Math.round(x)), PAD.l + (k / 4) * W, c.height - 10);
      ctx.textAlign = "left";
    }
    for (const l of lines) {
      const faint = l.smooth !== null && l.smooth !== l.raw;
      path(ctx, l.xs, l.raw, X, Y, ok, l.colour, faint ? 0.22 : 1, faint ? 1 : 1.6, l.dashed, l.smooth === null);
      if (faint) path(ctx, l.xs, l.smooth, X, Y, ok, l.colour, 1, 1.8, l.dashed, false);
    }
    this.base = c;
  }

  drawCursor(x) {
    const ctx = this.canvas.getContext("2d");
    if (this.base) ctx.drawImage(this.base, 0, 0);
    if (!this.frame || x === null) return;
    const px = Math.round(this.frame.X(Math.min(this.frame.x1, Math.max(this.frame.x0, x)))) + 0.5;
    ctx.strokeStyle = "#000";
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(px, this.frame.top);
    ctx.lineTo(px, this.frame.bottom);
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

function path(ctx, xs, ys, X, Y, ok, colour, alpha, width, dashed, dots) {
  ctx.save();
  ctx.globalAlpha = alpha;
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = width;
  ctx.setLineDash(dashed ? [6, 3] : []);
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i < xs.length; i++) {
    if (xs[i] === null || !ok(ys[i])) { pen = false; continue; }
    const x = X(xs[i]), y = Y(ys[i]);
    if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    pen = true;
    if (dots) ctx.fillRect(x - 2, y - 2, 4, 4);
  }
  ctx.stroke();
  ctx.restore();
}

export class CurvesView {
  constructor(ids, params, stats, fail) {
    this.ids = [...new Set(ids)];
    this.stats = stats;
    this.fail = fail;
    stats.view = "curves";
    stats.curves = this;
    this.weight = Math.min(0.99, Math.max(0, Number(params.get("smooth") ?? 0.6) || 0));
    this.log = params.get("y") === "log";
    this.xMode = params.get("x") === "wall" ? "wall" : "step";
    this.seriesName = params.get("series") || "";
    this.pinned = params.has("step") ? Number(params.get("step")) : null;
    this.cursor = null;
    this.load().catch(fail);
  }

  stop() { this.stopped = true; }

  async load() {
    const [list, ...metrics] = await Promise.all([getJSON("/api/runs"), ...this.ids.map((id) => getJSON(`/api/runs/${id}/metrics`))]);
    if (this.stopped) return;
    const rows = new Map(list.runs.map((r) => [r.id, r]));
    this.runs = this.ids.map((id, k) => ({
      id, row: rows.get(id) || { name: id, config: {} }, metrics: metrics[k], series: new Map(),
      colour: PALETTE[k % PALETTE.length], dashed: k >= PALETTE.length,
    }));
    const names = [...new Set(this.runs.flatMap((r) => r.metrics.series || []))].sort();
    if (!this.seriesName || !names.includes(this.seriesName)) this.seriesName = names.find((n) => n.endsWith("/weight_change")) || names[0] || "";
    this.build(names);
    await this.loadSeries();
  }

  build(names) {
    document.getElementById("where").textContent = `curves of ${this.runs.length} run${this.runs.length === 1 ? "" : "s"}`;
    this.slider = el("input", { type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01", "aria-label": "smoothing" });
    this.slider.value = String(this.weight);
    this.sliderText = el("span", { id: "smoothing-value" });
    this.slider.addEventListener("input", () => { this.weight = Number(this.slider.value); this.redraw(); });
    const select = (id, options, value, onChange) => {
      const s = el("select", { id }, ...options.map(([v, t]) => { const o = el("option", { value: v, text: t }); o.selected = v === value; return o; }));
      s.addEventListener("change", () => onChange(s.value));
      return s;
    };
    const yBox = select("y-axis", [["linear", "linear"], ["log", "log"]], this.log ? "log" : "linear", (v) => { this.log = v === "log"; this.redraw(); });
    const xBox = select("x-axis", [["step", "step"], ["wall", "wall time (s)"]], this.xMode, (v) => { this.xMode = v; this.redraw(); });
    const sBox = select("series-pick", names.length ? names.map((n) => [n, n]) : [["", "(no extra series in these runs)"]], this.seriesName,
      (v) => { this.seriesName = v; this.loadSeries().catch(this.fail); });
    const specs = [
      { key: "loss", title: () => `train loss (each batch${this.weight > 0 ? `; EMA ${this.weight.toFixed(2)}, bias-corrected` : ""})`, smooth: true, get: (r) => [r.metrics.train.step, r.metrics.train.loss] },
      { key: "accuracy", title: () => `train accuracy (each batch${this.weight > 0 ? `; EMA ${this.weight.toFixed(2)}, bias-corrected` : ""})`, smooth: true, get: (r) => [r.metrics.train.step, r.metrics.train.accuracy] },
      { key: "eval_accuracy", title: () => "held-out accuracy (eval subset, not smoothed)", smooth: false, get: (r) => [r.metrics.eval.step, r.metrics.eval.accuracy] },
      { key: "series", title: () => `${this.seriesName || "no extra series"}${this.weight > 0 ? ` (EMA ${this.weight.toFixed(2)}, bias-corrected)` : ""}`, smooth: true,
        get: (r) => { const s = r.series.get(this.seriesName); return s ? [s.step, s.value] : [[], []]; } },
    ];
    this.charts = specs.map((s) => new Chart(this, s));
    this.readout = el("table", { class: "runs readout", id: "curves-readout" });
    this.legend = el("div", { class: "curves-legend" });
    const app = document.getElementById("app");
    app.replaceChildren(
      el("h2", { text: `Curves of ${this.runs.length} run${this.runs.length === 1 ? "" : "s"}` }),
      el("div", { class: "row selection" }, el("label", {}, "smoothing ", this.slider, " ", this.sliderText), el("label", {}, " y ", yBox),
        el("label", {}, " x ", xBox), el("label", {}, " series ", sBox)),
      this.legend,
      el("div", { class: "charts" }, ...this.charts.map((c) => c.canvas)),
      el("p", { class: "muted", text: "Hover a chart: every run's value at the cursor below (smoothed, then raw). Click: pin that step; each run's name opens its frames there." }),
      this.readout);
  }

  async loadSeries() {
    const name = this.seriesName;
    if (name) {
      await Promise.all(this.runs.map(async (r) => {
        if (r.series.has(name) || !(r.metrics.series || []).includes(name)) return;
        r.series.set(name, await getJSON(`/api/runs/${r.id}/series?name=${encodeURIComponent(name)}`));
      }));
    }
    if (!this.stopped) this.redraw();
  }

  // one run's points on a chart, in the current x mode: {steps, xs, raw, smooth}
  points(chart, r) {
    const [steps, raw] = chart.spec.get(r);
    const xs = this.xMode === "wall" ? wallOf(r.metrics.train, steps) : steps;
    const smooth = chart.spec.smooth && this.weight > 0 ? smoothed(raw, this.weight) : chart.spec.smooth ? raw : null;
    return { steps, xs, raw, smooth };
  }

  // what tests read: one run's raw and smoothed value at a step on a chart
  valueAt(chartKey, runIndex, step) {
    const chart = this.charts.find((c) => c.spec.key === chartKey);
    const p = this.points(chart, this.runs[runIndex]);
    const i = p.steps.indexOf(step);
    return i < 0 ? null : { raw: p.raw[i], smoothed: p.smooth ? p.smooth[i] : p.raw[i] };
  }

  redraw() {
    this.sliderText.textContent = this.weight > 0 ? this.weight.toFixed(2) : "off";
    const lines = this.charts.map((c) => this.runs.map((r) => ({ colour: r.colour, dashed: r.dashed, ...this.points(c, r) })));
    let lo = Infinity, hi = -Infinity; // a loop, not Math.min(...xs): long runs have more points than arguments fit
    for (const l of lines.flat()) for (const x of l.xs) if (x !== null) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
    const xRange = Number.isFinite(lo) ? [lo, hi] : null;
    this.charts.forEach((c, k) => { c.drawBase(lines[k], this.log, xRange); c.drawCursor(this.cursor); });
    this.showLegend();
    this.showReadout();
    this.saveUrl();
    this.stats.ready = true;
  }

  setCursor(x) {
    this.cursor = x;
    for (const c of this.charts) c.drawCursor(x);
    this.showReadout();
  }

  pin(x) {
    this.pinned = this.xMode === "step" ? Math.round(x) : this.stepAtWall(x);
    this.showLegend();
    this.saveUrl();
  }

  stepAtWall(t) {
    const tr = this.runs[0].metrics.train;
    const i = nearestIndex(tr.wall_time, t);
    return i < 0 ? 0 : tr.step[i];
  }

  showLegend() {
    const keys = differingKeys(this.runs.map((r) => r.row.config || {}));
    this.legend.replaceChildren(...this.runs.map((r, k) => {
      const href = `#/run/${r.id}${this.pinned !== null ? `?step=${this.pinned}` : ""}`;
      const what = keys.map((key) => `${key}=${r.row.config[key]}`).join(", ");
      return el("span", { class: "run-key", "data-run": String(k) }, swatch(r),
        el("a", { href, text: r.row.name }), el("span", { class: "muted", text: what ? ` ${what}` : "" }));
    }), ...(this.pinned !== null ? [el("span", { class: "muted", id: "pinned", text: ` · pinned at step ${this.pinned}` })] : []));
  }

  showReadout() {
    const x = this.cursor;
    const head = el("tr", {}, el("th", { text: "run" }), el("th", { text: this.xMode === "wall" ? "time" : "step" }),
      ...this.charts.map((c) => el("th", { text: c.spec.key === "series" ? this.seriesName || "series" : c.spec.key.replace("_", " ") })));
    const rows = this.runs.map((r) => {
      let where = "–";
      const cells = this.charts.map((c) => {
        if (x === null) return el("td", { text: "–" });
        const p = this.points(c, r);
        const xs = p.xs.map((v) => (v === null ? -Infinity : v));
        const i = nearestIndex(xs, x);
        if (i < 0) return el("td", { text: "–" });
        if (c.spec.key === "loss") where = this.xMode === "wall" ? `${tick(p.xs[i])} s (step ${p.steps[i]})` : String(p.steps[i]);
        const f = (v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(4));
        const at = c.spec.key === "eval_accuracy" ? ` @${p.steps[i]}` : ""; // sparse: say which evaluation
        const text = (p.smooth && p.smooth !== p.raw ? `${f(p.smooth[i])} (${f(p.raw[i])})` : f(p.raw[i])) + at;
        return el("td", { "data-chart": c.spec.key, text });
      });
      return el("tr", { "data-run": r.id }, el("td", {}, swatch(r), el("span", { text: r.row.name })),
        el("td", { text: where }), ...cells);
    });
    this.readout.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  }

  saveUrl() {
    const p = new URLSearchParams();
    if (this.weight !== 0.6) p.set("smooth", String(this.weight));
    if (this.log) p.set("y", "log");
    if (this.xMode === "wall") p.set("x", "wall");
    if (this.seriesName) p.set("series", this.seriesName);
    if (this.pinned !== null) p.set("step", String(this.pinned));
    history.replaceState(null, "", `#/curves/${this.ids.join(",")}?${p}`);
  }
}

// a short line in the run's colour (set through the CSSOM: the page's CSP refuses style attributes)
function swatch(r) {
  const s = el("span", { class: "swatch" + (r.dashed ? " dashed" : "") });
  s.style.borderTopColor = r.colour;
  return s;
}
