// One picture of a layer at one step, laid out as replay's GIF frames: the probe images on top, then one row
// per channel and one column per probe; each map is enlarged by whole-pixel replication (never interpolated).
// Tiles are written once per value into a small canvas at the map's own resolution and copied to the
// visible canvas with image smoothing off, so a value covers an exact factor × factor block.

import { CLIPPED, NOT_A_NUMBER, packRGBA, unpackRGBA } from "./colour.js";

const GAP = 2;
const PROBE_GAP = 6;
const LABEL_W = 34;
const HEAD_H = 14;
const FONT = "10px sans-serif";

export class GridView {
  // spec: {rows, cols, H, W, cellH, cellW, zoom, rowLabels, colLabels, header (a probeStrip canvas | null),
  //        index(r, c, y, x) -> position of that value in a frame's array}
  constructor(spec) {
    this.spec = spec;
    const z = spec.zoom;
    this.fy = Math.max(1, Math.floor(spec.cellH / spec.H)) * z;
    this.fx = Math.max(1, Math.floor(spec.cellW / spec.W)) * z;
    this.cellH = Math.max(spec.cellH * z, spec.H * this.fy);
    this.cellW = Math.max(spec.cellW * z, spec.W * this.fx);
    // column labels are never cut: when one is wider than its column, all stand upright (read bottom to top)
    const widest = Math.max(0, ...spec.colLabels.map((t) => textWidth(t)));
    this.uprightLabels = widest > this.cellW;
    this.headH = this.uprightLabels ? Math.ceil(widest) + 4 : HEAD_H;
    this.top = this.headH + (spec.header ? this.cellH + PROBE_GAP : 0);
    const width = LABEL_W + spec.cols * (this.cellW + GAP);
    const height = this.top + spec.rows * (this.cellH + GAP);
    this.canvas = document.createElement("canvas");
    this.canvas.width = width;
    this.canvas.height = height;
    this.canvas.className = "grid";
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: false });
    this.ctx.imageSmoothingEnabled = false;
    // the maps at their own resolution: tile (r, c) at (c * W, r * H)
    this.small = document.createElement("canvas");
    this.small.width = spec.cols * spec.W;
    this.small.height = spec.rows * spec.H;
    this.smallCtx = this.small.getContext("2d");
    this.image = this.smallCtx.createImageData(this.small.width, this.small.height);
    this.pixels = new Uint32Array(this.image.data.buffer);
    this._drawFrame();
  }

  tileOrigin(r, c) {
    const x = LABEL_W + c * (this.cellW + GAP) + Math.floor((this.cellW - this.spec.W * this.fx) / 2);
    const y = this.top + r * (this.cellH + GAP) + Math.floor((this.cellH - this.spec.H * this.fy) / 2);
    return [x, y];
  }

  // centre pixel (canvas coordinates) of map position (y, x) of tile (r, c): what tests sample
  pixelOf(r, c, y, x) {
    const [ox, oy] = this.tileOrigin(r, c);
    return [ox + x * this.fx + (this.fx >> 1), oy + y * this.fy + (this.fy >> 1)];
  }

  _drawFrame() {
    const { ctx, spec } = this;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.fillStyle = "#c8c8c8"; // rules between tiles, as in the GIFs
    ctx.fillRect(LABEL_W - 1, this.top - 1, spec.cols * (this.cellW + GAP), spec.rows * (this.cellH + GAP));
    ctx.fillStyle = "#000";
    ctx.font = FONT;
    ctx.textBaseline = "top";
    spec.colLabels.forEach((t, c) => {
      const x = LABEL_W + c * (this.cellW + GAP);
      if (!this.uprightLabels) return ctx.fillText(t, x, 1);
      ctx.save();
      ctx.translate(x + Math.floor((this.cellW - 10) / 2), this.headH - 2);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(t, 0, 0);
      ctx.restore();
    });
    spec.rowLabels.forEach((t, r) => {
      const y = this.top + r * (this.cellH + GAP) + this.cellH / 2 - 5;
      ctx.fillText(fit(ctx, t, LABEL_W - 3), 1, y);
    });
    if (spec.header) {
      const strip = spec.header, ph = strip.height, pw = strip.width / spec.cols;
      for (let c = 0; c < spec.cols; c++) {
        const x = LABEL_W + c * (this.cellW + GAP) + Math.floor((this.cellW - pw * spec.zoom) / 2);
        ctx.drawImage(strip, c * pw, 0, pw, ph, x, this.headH + Math.floor((this.cellH - ph * spec.zoom) / 2),
          pw * spec.zoom, ph * spec.zoom);
      }
    }
  }

  // frame: the stored values of one step; colourer: a Colourer; bits: the raw float16 bits (or null)
  draw(frame, colourer, bits) {
    const { spec, pixels } = this;
    const Wt = spec.cols * spec.W;
    const counts = [0, 0, 0]; // NORMAL, CLIPPED, NOT_A_NUMBER
    // a table of every float16 pattern pays off for a scale used frame after frame, not for one frame's own
    const half = bits && !colourer.scale.per_step ? colourer.halfTable() : null;
    const zero = colourer.rgba(0); // the colour of 0: a frame drawn only in it looks empty
    let blank = true;
    for (let r = 0; r < spec.rows; r++) {
      for (let c = 0; c < spec.cols; c++) {
        for (let y = 0; y < spec.H; y++) {
          let o = (r * spec.H + y) * Wt + c * spec.W;
          for (let x = 0; x < spec.W; x++, o++) {
            const i = spec.index(r, c, y, x);
            if (half) {
              const b = bits[i];
              pixels[o] = half.colours[b];
              counts[half.flags[b]]++;
            } else {
              const v = frame[i];
              pixels[o] = colourer.rgba(v);
              counts[colourer.flag(v)]++;
            }
            if (pixels[o] !== zero) blank = false;
          }
        }
      }
    }
    const clipped = counts[CLIPPED], nan = counts[NOT_A_NUMBER];
    this.smallCtx.putImageData(this.image, 0, 0);
    const ctx = this.ctx;
    for (let r = 0; r < spec.rows; r++) {
      for (let c = 0; c < spec.cols; c++) {
        const [x, y] = this.tileOrigin(r, c);
        ctx.drawImage(this.small, c * spec.W, r * spec.H, spec.W, spec.H, x, y, spec.W * this.fx, spec.H * this.fy);
      }
    }
    let maxAbs = null; // only for a frame that looks empty: how far below the colour resolution its values are
    if (blank) {
      maxAbs = 0;
      for (let r = 0; r < spec.rows; r++) for (let c = 0; c < spec.cols; c++) for (let y = 0; y < spec.H; y++) {
        for (let x = 0; x < spec.W; x++) { const v = Math.abs(frame[spec.index(r, c, y, x)]); if (v > maxAbs) maxAbs = v; }
      }
    }
    return { clipped, nan, shown: spec.rows * spec.cols * spec.H * spec.W, maxAbs };
  }

  // canvas pixel -> {r, c, y, x} of a tile, {header: c} for a probe image, or null
  locate(px, py) {
    const { spec } = this;
    const c = Math.floor((px - LABEL_W) / (this.cellW + GAP));
    if (c < 0 || c >= spec.cols) return null;
    if (spec.header && py >= this.headH && py < this.headH + this.cellH) return { header: c };
    const r = Math.floor((py - this.top) / (this.cellH + GAP));
    if (r < 0 || r >= spec.rows) return null;
    const [ox, oy] = this.tileOrigin(r, c);
    const x = Math.floor((px - ox) / this.fx), y = Math.floor((py - oy) / this.fy);
    if (x < 0 || y < 0 || x >= spec.W || y >= spec.H) return null;
    return { r, c, y, x };
  }
}

let measurer = null; // one 2-D context for measuring label widths, made when first needed
function textWidth(text) {
  if (!measurer) {
    measurer = document.createElement("canvas").getContext("2d");
    measurer.font = FONT;
  }
  return measurer.measureText(text).width;
}

const fitted = new Map(); // "width text" -> the text shortened to fit, measured once

function fit(ctx, text, width) {
  const key = `${width} ${text}`;
  if (fitted.has(key)) return fitted.get(key);
  let t = text;
  if (ctx.measureText(t).width > width) {
    while (t.length > 1 && ctx.measureText(t + "…").width > width) t = t.slice(0, -1);
    t += "…";
  }
  fitted.set(key, t);
  return t;
}

const strips = new WeakMap(); // probe bytes -> Map(probes key -> canvas): drawn once, shared by every panel

// probe pixels (uint8 [P, H, W, C]) of the chosen probes as one canvas strip, probes side by side
export function probeStrip(bytes, shape, probes) {
  if (!strips.has(bytes)) strips.set(bytes, new Map());
  const cache = strips.get(bytes), key = probes.join(",");
  if (cache.has(key)) return cache.get(key);
  const [, H, W, C] = shape;
  const img = new ImageData(W * probes.length, H);
  const out = new Uint32Array(img.data.buffer);
  probes.forEach((p, k) => {
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const i = ((p * H + y) * W + x) * C;
        const [r, g, b] = C === 1 ? [bytes[i], bytes[i], bytes[i]] : [bytes[i], bytes[i + 1], bytes[i + 2]];
        out[y * W * probes.length + k * W + x] = packRGBA(r, g, b);
      }
    }
  });
  const canvas = document.createElement("canvas");
  canvas.width = img.width;
  canvas.height = img.height;
  canvas.getContext("2d").putImageData(img, 0, 0);
  cache.set(key, canvas);
  return canvas;
}

// a horizontal colour bar of the scale's levels, 2 px per level; a one-sided scale (relu: never negative)
// shows only its upper half, [0, hi], stretched over the same width
export function colourBar(colourer, oneSided = false) {
  const all = colourer.levels;
  const centre = Math.floor(all.length / 2);
  const levels = oneSided ? Array.from({ length: all.length }, (_, i) => all[centre + Math.floor(i * (all.length - centre) / all.length)]) : all;
  const canvas = document.createElement("canvas");
  canvas.width = levels.length * 2;
  canvas.height = 10;
  canvas.className = "bar";
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  const px = new Uint32Array(img.data.buffer);
  for (let y = 0; y < canvas.height; y++) for (let x = 0; x < canvas.width; x++) px[y * canvas.width + x] = levels[x >> 1];
  ctx.putImageData(img, 0, 0);
  return canvas;
}

export function cssColour(packed) {
  const [r, g, b] = unpackRGBA(packed);
  return `rgb(${r},${g},${b})`;
}
