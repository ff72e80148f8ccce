// Loss and accuracy over training, with the step cursor drawn on them; a click asks for the clicked step.
// Series are labelled for what they are: train = each batch with the parameters before its update (raw,
// light) and its centred mean (computed by the server with replay's own smoothing: no lag); eval = the held-out subset;
// test = the full test split at the end.

const PAD = { l: 44, r: 10, t: 18, b: 26 };
const COLOURS = { train: "rgba(31,119,180,0.28)", smooth: "rgb(31,119,180)", eval: "rgb(255,127,14)", test: "rgb(214,39,40)", cursor: "rgb(0,0,0)" };

export class Curves {
  // onPick(step): called with the step under a click
  constructor(onPick) {
    this.canvas = document.createElement("canvas");
    this.canvas.className = "curves";
    this.canvas.width = 920;
    this.canvas.height = 210;
    this.ctx = this.canvas.getContext("2d");
    this.metrics = null;
    this.cursor = null;
    this.maxStep = 1;
    this.canvas.addEventListener("click", (e) => {
      const panel = this._panels().find((p) => e.offsetX >= p.x0 && e.offsetX <= p.x1);
      if (!panel) return;
      const f = (e.offsetX * (this.canvas.width / this.canvas.clientWidth) - panel.x0) / (panel.x1 - panel.x0);
      onPick(Math.round(Math.min(1, Math.max(0, f)) * this.maxStep));
    });
  }

  _panels() {
    const w = this.canvas.width / 2;
    return [{ x0: PAD.l, x1: w - PAD.r, what: "loss" }, { x0: w + PAD.l, x1: 2 * w - PAD.r, what: "accuracy" }];
  }

  set(metrics, maxStep) {
    this.metrics = metrics;
    this.maxStep = Math.max(1, maxStep);
    this.base = null; // the curves are drawn once per metrics update; moving the cursor only copies them
    this.draw();
  }

  setCursor(step) {
    this.cursor = step;
    this.draw();
  }

  draw() {
    const { ctx, canvas } = this;
    if (!this.base) {
      this.base = document.createElement("canvas");
      this.base.width = canvas.width;
      this.base.height = canvas.height;
      this._drawCurves(this.base.getContext("2d"));
    }
    ctx.drawImage(this.base, 0, 0);
    if (this.cursor === null || !this.metrics) return;
    const y0 = PAD.t, y1 = canvas.height - PAD.b;
    ctx.strokeStyle = COLOURS.cursor;
    ctx.setLineDash([3, 3]);
    for (const p of this._panels()) {
      const x = p.x0 + (this.cursor / this.maxStep) * (p.x1 - p.x0);
      ctx.beginPath();
      ctx.moveTo(x + 0.5, y0);
      ctx.lineTo(x + 0.5, y1);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  _drawCurves(ctx) {
    const { canvas, metrics } = this;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!metrics) return;
    ctx.font = "11px sans-serif";
    for (const p of this._panels()) {
      const tr = metrics.train, ev = metrics.eval;
      const series = [tr[p.what], ev[p.what]].flat().filter((v) => v !== null);
      let lo = p.what === "accuracy" ? 0 : Math.min(0, ...series);
      let hi = p.what === "accuracy" ? 1 : Math.max(1e-9, ...series);
      const y0 = PAD.t, y1 = canvas.height - PAD.b;
      const X = (s) => p.x0 + (s / this.maxStep) * (p.x1 - p.x0);
      const Y = (v) => y1 - ((v - lo) / (hi - lo)) * (y1 - y0);
      ctx.strokeStyle = "#ddd";
      ctx.fillStyle = "#333";
      ctx.lineWidth = 1;
      ctx.strokeRect(p.x0, y0, p.x1 - p.x0, y1 - y0);
      for (const v of [lo, (lo + hi) / 2, hi]) ctx.fillText(v.toPrecision(2), 4 + p.x0 - PAD.l, Y(v) + 4);
      for (const s of [0, Math.round(this.maxStep / 2), this.maxStep]) ctx.fillText(String(s), X(s) - 8, y1 + 14);
      ctx.fillText(p.what, p.x0 + 4, y0 - 5);
      line(ctx, tr.step, tr[p.what], X, Y, COLOURS.train, 1);
      line(ctx, tr.step, tr[`${p.what}_smoothed`], X, Y, COLOURS.smooth, 1.8);
      line(ctx, ev.step, ev[p.what], X, Y, COLOURS.eval, 1.4, true);
      const t = metrics.test;
      if (t && t[p.what] !== null) {
        ctx.fillStyle = COLOURS.test;
        const last = tr.step.length ? tr.step[tr.step.length - 1] : this.maxStep;
        ctx.beginPath();
        ctx.arc(X(last), Y(t[p.what]), 4, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }
}

function line(ctx, xs, ys, X, Y, colour, width, dots = false) {
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = width;
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i < xs.length; i++) {
    if (ys[i] === null) { pen = false; continue; }
    const x = X(xs[i]), y = Y(ys[i]);
    if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    pen = true;
    if (dots) ctx.fillRect(x - 2, y - 2, 4, 4);
  }
  ctx.stroke();
}

export function legend(metrics) {
  const ev = metrics.eval;
  return `train: each batch, parameters before its update (light) and ${metrics.train.smoothing}; ` +
    `eval: ${ev.count} held-out test images (orange); test: the full test split at the end (red dot); ` +
    "dashed line: the step shown. Click a curve to go to that step.";
}
