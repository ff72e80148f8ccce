// Two views of every layer over training, on the page's step cursor:
// * DistributionPanel: the layer's (or one chosen channel's) histogram at every recorded step (x: step, y: value,
//   colour: the share of the step's values in the bin, log), its 5/25/50/75/95% quantiles as lines, and the
//   cursor's step;
// * GeometryPanel: the analysis images on the first two principal components at the analysed step at or before
//   the cursor, coloured by class, with the share of variance explained and the between-class share.
// Both are computed by the server from the run file (replay/distributions.py, replay/geometry.py).

import { el } from "./panel.js";

const CLASS_RGB = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const PAD = { l: 40, r: 8, t: 6, b: 18 };

// the share of a step's values in a bin (0 < share ≤ 1) as a Blues colour on a log scale from 1e-4 to 1
const BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]]; // matplotlib's Blues
function blues(share) {
  const f = Math.min(1, Math.max(0, (Math.log10(share) + 4) / 4)) * (BLUES.length - 1);
  const i = Math.min(BLUES.length - 2, Math.floor(f)), w = f - i;
  return BLUES[i].map((v, c) => Math.round(v + (BLUES[i + 1][c] - v) * w));
}

function position(steps, step) { // the last index with steps[i] <= step (0 if none)
  let lo = 0, hi = steps.length - 1;
  if (hi < 0) return -1;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (steps[mid] <= step) lo = mid; else hi = mid - 1; }
  return lo;
}

function short(v) { return v === null ? "–" : String(Number(v.toPrecision(3))); }

// one layer's panel of a view: a titled canvas and a caption, redrawn for the server's data and the cursor's step
class ViewPanel {
  constructor(view, name, tag, width, height) {
    this.name = name;
    this.canvas = el("canvas", { class: view, width: String(width), height: String(height) });
    this.caption = el("div", { class: "counts" });
    this.root = el("div", { class: "view-panel", "data-view": view, "data-layer": name },
      el("h3", { text: `${tag}${name}` }), this.canvas, this.caption);
    this.data = null;
    this.step = null;
  }

  set(data) {
    this.data = data;
    this.base = null; // a drawing cached for the previous data
    this.draw();
  }

  setStep(step) {
    this.step = step;
    this.draw();
  }
}

export class DistributionPanel extends ViewPanel {
  // `channels`: the model's numbers of the layer's stored channels; `choose(channel or null)` loads that
  // channel's distribution (or the whole layer's) and hands it to set()
  constructor(name, tag = "", channels = [], choose = null) {
    super("distribution", name, tag, 420, 150);
    if (channels.length > 1 && choose) {
      this.channel = el("select", { class: "channel", "aria-label": `${tag}${name}: channel` },
        el("option", { value: "", text: "all channels" }), ...channels.map((c) => el("option", { value: String(c), text: `channel ${c}` })));
      this.channel.addEventListener("change", () => choose(this.channel.value === "" ? null : Number(this.channel.value)));
      this.root.querySelector("h3").append(" ", this.channel);
    }
  }

  drawBase() {
    const d = this.data, c = document.createElement("canvas");
    c.width = this.canvas.width; c.height = this.canvas.height;
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    const W = c.width - PAD.l - PAD.r, H = c.height - PAD.t - PAD.b, T = d.steps.length, B = d.bins;
    if (!T) { this.base = c; return; }
    const img = ctx.createImageData(W, H);
    const totals = d.steps.map((_, t) => { let s = 0; for (let b = 0; b < B; b++) s += d.counts[t * B + b]; return Math.max(1, s); });
    for (let x = 0; x < W; x++) {
      const t = Math.min(T - 1, Math.floor((x * T) / W));
      for (let y = 0; y < H; y++) {
        const b = Math.min(B - 1, Math.floor(((H - 1 - y) * B) / H));
        const n = d.counts[t * B + b];
        const rgb = n ? blues(n / totals[t]) : [255, 255, 255];
        const i = (y * W + x) * 4;
        img.data[i] = rgb[0]; img.data[i + 1] = rgb[1]; img.data[i + 2] = rgb[2]; img.data[i + 3] = 255;
      }
    }
    ctx.putImageData(img, PAD.l, PAD.t);
    const lo = d.edges[0], hi = d.edges[d.edges.length - 1];
    const X = (t) => PAD.l + ((t + 0.5) / T) * W;
    const Y = (v) => PAD.t + H - ((v - lo) / (hi - lo)) * H;
    ctx.strokeStyle = "#000";
    d.quantile_levels.forEach((q, k) => {
      ctx.lineWidth = q === 0.5 ? 1.3 : 0.8;
      ctx.setLineDash(q === 0.5 ? [] : q === 0.25 || q === 0.75 ? [4, 2] : [1, 2]);
      ctx.beginPath();
      let pen = false;
      d.quantiles.forEach((row, t) => {
        if (row[k] === null) { pen = false; return; }
        const y = Y(Math.min(hi, Math.max(lo, row[k])));
        if (pen) ctx.lineTo(X(t), y); else ctx.moveTo(X(t), y);
        pen = true;
      });
      ctx.stroke();
    });
    ctx.setLineDash([]);
    ctx.fillStyle = "#333";
    ctx.font = "10px sans-serif";
    ctx.fillText(short(hi), 2, PAD.t + 8);
    ctx.fillText(short(lo), 2, PAD.t + H);
    ctx.fillText(String(d.steps[0]), PAD.l, c.height - 4);
    ctx.textAlign = "right";
    ctx.fillText(String(d.steps[T - 1]), c.width - PAD.r, c.height - 4);
    this.frame = { X, T, top: PAD.t, bottom: PAD.t + H };
    this.base = c;
  }

  draw() {
    if (!this.data) return;
    if (!this.base) this.drawBase();
    const ctx = this.canvas.getContext("2d");
    ctx.drawImage(this.base, 0, 0);
    const d = this.data;
    if (this.step === null || !this.frame) { this.caption.textContent = d.describe; return; }
    const t = position(d.steps, this.step);
    const x = Math.round(this.frame.X(t)) + 0.5;
    ctx.strokeStyle = "#d62728";
    ctx.beginPath(); ctx.moveTo(x, this.frame.top); ctx.lineTo(x, this.frame.bottom); ctx.stroke();
    const q = d.quantiles[t];
    const beyond = d.beyond[t] ? ` · ${(d.beyond[t] / d.per_step * 100).toFixed(2)}% beyond the range` : "";
    const bad = d.nonfinite[t] ? ` · ${d.nonfinite[t]} non-finite` : "";
    this.caption.textContent = `step ${d.steps[t]}: median ${short(q[2])}, 25–75% [${short(q[1])}, ${short(q[3])}], ` +
      `5–95% [${short(q[0])}, ${short(q[4])}]${beyond}${bad} · ${d.describe}`;
    this.shownStep = d.steps[t];
    this.root.dataset.step = String(d.steps[t]);
  }
}

export class GeometryPanel extends ViewPanel {
  constructor(name, tag = "") { super("geometry", name, tag, 240, 240); }

  draw() {
    const d = this.data;
    if (!d) return;
    const ctx = this.canvas.getContext("2d"), S = this.canvas.width;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, S, S);
    ctx.strokeStyle = "#ccc"; ctx.strokeRect(0.5, 0.5, S - 1, S - 1);
    const k = position(d.steps, this.step ?? d.steps[d.steps.length - 1]);
    if (k < 0) return;
    const e = d.extent * 1.05;
    const pts = d.coords[k];
    pts.forEach((p, i) => {
      if (p[0] === null || p[1] === null) return;
      ctx.fillStyle = CLASS_RGB[d.labels[i] % CLASS_RGB.length];
      ctx.beginPath();
      ctx.arc(((p[0] / e + 1) / 2) * (S - 8) + 4, (1 - (p[1] / e + 1) / 2) * (S - 8) + 4, 2.6, 0, 2 * Math.PI);
      ctx.fill();
    });
    const before = this.step !== null && d.steps[k] !== this.step ? ` (the analysed step at or before ${this.step})` : "";
    this.caption.textContent = d.explained[k] === null ? `step ${d.steps[k]}: non-finite Gram, not embedded`
      : `step ${d.steps[k]}${before}: PC1+PC2 explain ${(d.explained[k] * 100).toFixed(0)}% · between-class share ${d.class_share[k].toFixed(2)} (step ${d.steps[0]}: ${d.class_share[0] === null ? "–" : d.class_share[0].toFixed(2)})`;
    this.shownStep = d.steps[k];
    this.root.dataset.step = String(d.steps[k]);
  }
}

// the classes' colours and full names, once per page
export function classLegend(classNames, labels) {
  const present = [...new Set(labels)].sort((a, b) => a - b);
  return el("div", { class: "curves-legend class-legend" }, ...present.map((c) => {
    const s = el("span", { class: "swatch" });
    s.style.borderTopColor = CLASS_RGB[c % CLASS_RGB.length];
    return el("span", {}, s, el("span", { text: classNames[c] ?? `class ${c}` }));
  }));
}
