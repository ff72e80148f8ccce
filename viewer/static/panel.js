// A card showing one layer (or one layer's kernels) of one run at the step cursor: title, the grid, the
// colour bar with the scale's rule, counts of clipped and NaN values, and the value under the pointer.

import { Colourer } from "./colour.js";
import { FrameStore } from "./data.js";
import { GridView, colourBar, probeStrip } from "./grid.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function formatTick(v) {
  if (v === 0) return "0";
  const t = Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? String(Number(v.toPrecision(3))) : v.toExponential(2);
  return v > 0 ? `+${t}` : t;
}

export class LayerPanel {
  // run: the run's answer; info: one of run.layers or run.kernels; opts: {zoom, probes, channels, probeBytes,
  // tag (a label before the title, e.g. "A"), kernels}
  // store: a FrameStore already made for this layer, or none
  constructor(run, info, opts, store = null) {
    this.run = run;
    this.info = info;
    this.kernels = !!opts.kernels;
    this.store = store || FrameStore.forLayer(run.id, info, this.kernels);
    this.store.setTotal(run.steps.length);
    this.opts = opts;
    this.drawnStep = null;
    this.root = el("section", { class: "panel", "data-layer": info.name, "data-run": run.id });
    this.title = el("h3");
    this.status = el("span", { class: "panel-status" });
    this.counts = el("span", { class: "counts" });
    this.barBox = el("div", { class: "barbox" });
    this.gridBox = el("div", { class: "gridbox" });
    this.root.append(el("div", { class: "panel-head" }, this.title, this.status), this.gridBox, this.barBox, this.counts);
    this.setScale(info.scale);
    this.layout();
  }

  setScale(scale) {
    this.colourer = new Colourer(scale, this.run.palettes);
    const lo = scale.one_sided ? 0 : scale.lo;
    const [left, mid, right] = scale.ticks || [lo, (lo + scale.hi) / 2, scale.hi]; // the server's (symlog-aware)
    const ticks = el("div", { class: "ticks" },
      el("span", { text: formatTick(left) }),
      el("span", { text: formatTick(mid) }),
      el("span", { text: formatTick(right) }));
    const rule = scale.provisional
      ? el("span", { class: "rule provisional", text: `provisional: the run is still recording; covers the ${scale.covers} frames recorded so far and changes as it records (each change announced above). ${scale.describe}` })
      : el("span", { class: "rule", text: scale.describe });
    this.barBox.replaceChildren(el("div", { class: "barwrap" }, colourBar(this.colourer, scale.one_sided), ticks), rule);
    this.scaleKey = JSON.stringify(scale.thresholds);
    const name = this.info.name;
    const what = this.kernels ? `${name} kernels` : `${name} · ${this.info.activation}`;
    this.title.textContent = `${this.opts.tag ? this.opts.tag + " " : ""}${what} · [${this.info.shape.join(", ")}] ${this.info.dtype}`;
  }

  // the per-step rule: frame `pos` on its own scale [−S_t, S_t], its ticks under the bar (the rule says so)
  setFrameScale(row, pos) {
    const base = this.info.scale, s = row[0];
    this.setScale({ ...base, lo: -s, hi: s, thresholds: Array.from(row.subarray(1)),
      ticks: base.one_sided ? [0, s / 2, s] : [-s, 0, s] });
    this.scaleKey = JSON.stringify(base.thresholds); // the run's scale (the rule) is unchanged
    this.scalePos = pos;
  }

  layout() {
    const { info, run, opts } = this;
    if (this.kernels) {
      const [kh, kw, cin, cout] = info.shape;
      this.rows = [...Array(cin).keys()];
      this.cols = [...Array(cout).keys()];
      this.grid = new GridView({
        rows: cin, cols: cout, H: kh, W: kw, cellH: 24, cellW: 24, zoom: opts.zoom,
        rowLabels: this.rows.map((i) => `in ${i}`), colLabels: this.cols.map((j) => `F${j}`), header: null,
        index: (r, c, y, x) => ((y * kw + x) * cin + r) * cout + c,
      });
    } else {
      const [P, H, W, C] = info.shape;
      const [, Hi, Wi] = run.probes.shape;
      this.rows = pick(opts.channels, C);
      this.cols = pick(opts.probes, P);
      const rows = this.rows, cols = this.cols;
      const labels = cols.map((p) => run.class_names[run.probes.labels[p]] ?? String(run.probes.labels[p]));
      this.grid = new GridView({
        rows: rows.length, cols: cols.length, H, W, cellH: Hi, cellW: Wi, zoom: opts.zoom,
        rowLabels: rows.map((c) => `C${info.channels ? info.channels[c] : c}`), colLabels: labels,
        header: opts.probeBytes ? probeStrip(opts.probeBytes, run.probes.shape, cols) : null,
        index: (r, c, y, x) => ((cols[c] * H + y) * W + x) * C + rows[r],
      });
    }
    this.gridBox.replaceChildren(this.grid.canvas);
    this.grid.canvas.addEventListener("mousemove", (e) => this._hover(e));
    this.grid.canvas.addEventListener("mouseleave", () => tip(null));
    this.drawnStep = null;
    this.frame = null;
  }

  // draws frame `pos` (recorded step `step`) if it is loaded; returns whether it was
  show(pos, step) {
    const f = this.store.get(pos);
    if (!f) {
      this.root.classList.add("loading");
      this.status.textContent = `loading step ${step}…`;
      return false;
    }
    if (f.scaleRow && this.scalePos !== pos) this.setFrameScale(f.scaleRow, pos); // per step: this frame's own
    const n = this.grid.draw(f.values, this.colourer, f.bits);
    this.frame = f;
    this.drawnStep = step;
    this.root.dataset.step = String(step);
    this.root.classList.remove("loading");
    this.status.textContent = `step ${step}`;
    const parts = [`clipped ${n.clipped}`, `NaN ${n.nan}`, `of ${n.shown} shown values`];
    const top = Math.max(...[].concat(this.colourer.hi).map(Math.abs), ...[].concat(this.colourer.lo).map(Math.abs));
    // a panel drawn entirely in 0's colour is not called dead when its values are merely below the resolution
    const faint = n.maxAbs !== null && n.maxAbs > 0 && n.nan === 0;
    if (faint) parts.unshift(`every value is within 0's colour: max |a| at this step = ${n.maxAbs.toPrecision(2)}, ${(n.maxAbs / top).toPrecision(2)} of the scale`);
    if (n.maxAbs === 0) parts.unshift("every value is exactly 0 at this step");
    this.counts.textContent = parts.join(" · ");
    this.counts.classList.toggle("warn", n.nan > 0 || faint);
    return true;
  }

  _hover(e) {
    if (!this.frame) return;
    const g = this.grid, c = g.canvas;
    const px = Math.floor(e.offsetX * (c.width / c.clientWidth));
    const py = Math.floor(e.offsetY * (c.height / c.clientHeight));
    const at = g.locate(px, py);
    if (!at) return tip(null);
    const run = this.run;
    if (at.header !== undefined) {
      const p = this.cols[at.header];
      return tip(e, `probe ${p}: ${run.class_names[run.probes.labels[p]] ?? run.probes.labels[p]} (${run.probes.indices[p] >= 0 ? `test image ${run.probes.indices[p]}` : 'index not given'})`);
    }
    const v = this.frame.values[g.spec.index(at.r, at.c, at.y, at.x)];
    const level = this.colourer.level(v);
    const where = this.kernels
      ? `${this.info.name} kernel · input ${this.rows[at.r]} · filter ${this.cols[at.c]} · (${at.y}, ${at.x})`
      : `${this.info.name} · probe ${this.cols[at.c]} (${run.class_names[run.probes.labels[this.cols[at.c]]] ?? ""}) · channel ${this.rows[at.r]} · y ${at.y}, x ${at.x}`;
    tip(e, `${where}\nstep ${this.drawnStep} · value ${String(v)} (stored ${this.info.dtype})${level < 0 ? " · NaN" : ` · level ${level}`}`);
  }
}

function pick(selection, n) {
  const all = [...Array(n).keys()];
  if (!selection) return all;
  const picked = selection.filter((i) => i < n);
  return picked.length ? picked : all;
}

// "0,3,5" or "0:8" (end exclusive) -> [indices], or null when empty or malformed
export function parseList(text) {
  if (!text) return null;
  const out = [];
  for (const part of text.split(",")) {
    const m = part.trim().match(/^(\d*)(?::(\d*))?$/);
    if (!m) return null;
    if (part.includes(":")) {
      const a = m[1] ? Number(m[1]) : 0, b = m[2] ? Number(m[2]) : a + 64;
      for (let i = a; i < Math.min(b, a + 1024); i++) out.push(i);
    } else if (m[1]) out.push(Number(m[1]));
  }
  return out.length ? [...new Set(out)] : null;
}

export function tip(e, text) {
  const t = document.getElementById("tip");
  if (!e) { t.hidden = true; return; }
  t.textContent = text;
  t.hidden = false;
  t.style.left = `${e.clientX + 14}px`;
  t.style.top = `${e.clientY + 14}px`;
}
