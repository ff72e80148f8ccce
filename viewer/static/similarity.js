// The measured side of a comparison (computed by compare/cross.py on the server): same-layer similarity over
// the analysed steps, with the step cursor, and the A × B layer map coloured on the fixed scale [0, 1].

import { Colourer } from "./colour.js";
import { cssColour } from "./grid.js";
import { el } from "./panel.js";

const LINE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

export function similarityPlot(sim, layers) {
  const canvas = el("canvas", { class: "simplot" });
  canvas.width = 920;
  canvas.height = 200;
  const ctx = canvas.getContext("2d");
  const pad = { l: 40, r: 110, t: 10, b: 24 };
  const maxStep = Math.max(1, sim.steps[sim.steps.length - 1]);
  const X = (s) => pad.l + (s / maxStep) * (canvas.width - pad.l - pad.r);
  const Y = (v) => canvas.height - pad.b - Math.max(-0.1, Math.min(1.05, v)) / 1.05 * (canvas.height - pad.t - pad.b);
  let cursor = null;
  const draw = () => {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.font = "11px sans-serif";
    ctx.strokeStyle = "#ddd";
    ctx.strokeRect(pad.l, pad.t, canvas.width - pad.l - pad.r, canvas.height - pad.t - pad.b);
    ctx.fillStyle = "#333";
    for (const v of [0, 0.5, 1]) ctx.fillText(v.toFixed(1), 8, Y(v) + 4);
    for (const s of [0, Math.round(maxStep / 2), maxStep]) ctx.fillText(String(s), X(s) - 8, canvas.height - 8);
    layers.forEach((name, k) => {
      const ys = sim.same_layer[name] || [];
      ctx.strokeStyle = LINE_COLOURS[k % LINE_COLOURS.length];
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      let pen = false;
      ys.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        if (pen) ctx.lineTo(X(sim.steps[i]), Y(v)); else ctx.moveTo(X(sim.steps[i]), Y(v));
        pen = true;
      });
      ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillText(name, canvas.width - pad.r + 8, pad.t + 12 + 13 * k);
    });
    if (cursor !== null) {
      ctx.strokeStyle = "#000";
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(X(cursor) + 0.5, pad.t);
      ctx.lineTo(X(cursor) + 0.5, canvas.height - pad.b);
      ctx.stroke();
      ctx.setLineDash([]);
    }
  };
  draw();
  return { canvas, setCursor: (s) => { cursor = s; draw(); } };
}

export function layerMap(map, palettes) {
  const colourer = new Colourer({ thresholds: map.thresholds, lo: 0, hi: 1, kind: "sequential" }, palettes);
  const head = el("tr", {}, el("th"), ...map.cols.map((c) => el("th", { text: `B ${c}` })));
  const rows = map.rows.map((r, i) => el("tr", {}, el("th", { text: `A ${r}` }), ...map.matrix[i].map((v) => {
    const cell = el("td", { text: v === null ? "NaN" : v.toFixed(2) });
    const colour = colourer.rgba(v === null ? NaN : v);
    cell.style.background = cssColour(colour);
    cell.style.color = v !== null && v < 0.55 ? "#fff" : "#000";
    return cell;
  })));
  const box = el("div", {}, el("table", { class: "layermap" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  if (map.flags.length) box.append(el("p", { class: "muted", text: `flags: ${map.flags.join("; ")}` }));
  return box;
}
