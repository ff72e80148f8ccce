// One clock for every animation of a replay's index.html: a step slider and play that show each GIF's frame
// at the same training step. index.html loads this file, then one script per GIF (clock/NAME.gif.js) that
// calls emergenceClock.add(file, steps, base64) with the GIF's bytes and the recorded step of each frame:
// a page opened from disk may not fetch() its neighbours, but it may load scripts.
//
// The GIFs are the ones replay writes (replay/gif.py): one global palette, every frame after the first a
// changed box whose unchanged pixels are the transparent index, drawn over the previous frame (disposal 1).
// This decoder reads any GIF of that kind (LZW, interlaced or not, disposal 0-2); a GIF it cannot read stays
// an ordinary <img> that plays on its own, and the page says so.
"use strict";

(function () {
  const KEYFRAME_EVERY = 16; // a whole frame kept every 16 frames: any frame is at most 15 boxes away

  function readGif(bytes) {
    const u16 = (p) => bytes[p] | (bytes[p + 1] << 8);
    const head = String.fromCharCode(...bytes.subarray(0, 6));
    if (head !== "GIF89a" && head !== "GIF87a") throw new Error("not a GIF");
    const width = u16(6), height = u16(8), flags = bytes[10];
    let p = 13;
    let palette = null;
    if (flags & 0x80) {
      const n = 2 << (flags & 7);
      palette = bytes.subarray(p, p + 3 * n);
      p += 3 * n;
    }
    const skip = (q) => {
      for (let size = bytes[q++]; size; size = bytes[q++]) q += size;
      return q;
    };
    const boxes = [];
    let control = { transparent: -1, disposal: 0 };
    while (p < bytes.length) {
      const block = bytes[p++];
      if (block === 0x3b) break; // trailer
      if (block === 0x21) {
        const label = bytes[p++];
        if (label === 0xf9) {
          const packed = bytes[p + 1];
          control = { transparent: packed & 1 ? bytes[p + 4] : -1, disposal: (packed >> 2) & 7 };
        }
        p = skip(p);
      } else if (block === 0x2c) {
        const box = { x: u16(p), y: u16(p + 2), w: u16(p + 4), h: u16(p + 6), interlaced: !!(bytes[p + 8] & 0x40),
                      palette: null, ...control };
        const local = bytes[p + 8];
        p += 9;
        if (local & 0x80) {
          const n = 2 << (local & 7);
          box.palette = bytes.subarray(p, p + 3 * n);
          p += 3 * n;
        }
        box.minCode = bytes[p++];
        box.start = p;
        p = skip(p);
        box.end = p;
        if (box.disposal === 3 || (box.palette && boxes.length)) throw new Error("a GIF this page does not step");
        boxes.push(box);
        control = { transparent: -1, disposal: 0 };
      } else {
        throw new Error("a damaged GIF");
      }
    }
    if (!boxes.length) throw new Error("a GIF without frames");
    return { width, height, palette: palette || boxes[0].palette, boxes, bytes };
  }

  // The box's palette indices, row by row (LZW as the GIF specification defines it).
  function decodeBox(gif, box) {
    const bytes = gif.bytes;
    let size = 0;
    for (let q = box.start; bytes[q]; q += bytes[q] + 1) size += bytes[q];
    const data = new Uint8Array(size);
    for (let q = box.start, o = 0; bytes[q]; q += bytes[q] + 1) {
      data.set(bytes.subarray(q + 1, q + 1 + bytes[q]), o);
      o += bytes[q];
    }
    const count = box.w * box.h;
    const out = new Uint8Array(count);
    const clear = 1 << box.minCode, eoi = clear + 1;
    const prefix = new Int16Array(4096), suffix = new Uint8Array(4096), first = new Uint8Array(4096);
    const stack = new Uint8Array(4097);
    for (let c = 0; c < clear; c++) { prefix[c] = -1; suffix[c] = c; first[c] = c; }
    let codeSize = box.minCode + 1, next = eoi + 1, previous = -1;
    let bits = 0, acc = 0, o = 0;
    for (let i = 0; i < data.length && o < count;) {
      while (bits < codeSize && i < data.length) { acc |= data[i++] << bits; bits += 8; }
      if (bits < codeSize) break;
      const code = acc & ((1 << codeSize) - 1);
      acc >>>= codeSize;
      bits -= codeSize;
      if (code === clear) { codeSize = box.minCode + 1; next = eoi + 1; previous = -1; continue; }
      if (code === eoi) break;
      let c = code, top = 0;
      if (code >= next) { // the code being defined: previous string + its own first index
        if (previous < 0) throw new Error("a damaged GIF");
        stack[top++] = first[previous];
        c = previous;
      }
      while (c >= 0) { stack[top++] = suffix[c]; c = prefix[c]; }
      const head = stack[top - 1];
      while (top && o < count) out[o++] = stack[--top];
      if (previous >= 0 && next < 4096) {
        prefix[next] = previous; suffix[next] = head; first[next] = first[previous];
        next++;
        if (next === 1 << codeSize && codeSize < 12) codeSize++;
      }
      previous = code;
    }
    if (!box.interlaced) return out;
    const rows = new Uint8Array(count);
    let r = 0;
    for (const [start, step] of [[0, 8], [4, 8], [2, 4], [1, 2]]) {
      for (let y = start; y < box.h; y += step, r++) rows.set(out.subarray(r * box.w, (r + 1) * box.w), y * box.w);
    }
    return rows;
  }

  // Draws box `k` over the whole frame `screen` (palette indices, width × height).
  function apply(gif, k, screen) {
    const box = gif.boxes[k];
    if (k > 0 && gif.boxes[k - 1].disposal === 2) {
      const before = gif.boxes[k - 1];
      for (let y = before.y; y < before.y + before.h; y++) screen.fill(0, y * gif.width + before.x, y * gif.width + before.x + before.w);
    }
    const pixels = decodeBox(gif, box);
    for (let y = 0; y < box.h; y++) {
      const row = (box.y + y) * gif.width + box.x;
      for (let x = 0; x < box.w; x++) {
        const v = pixels[y * box.w + x];
        if (v !== box.transparent) screen[row + x] = v;
      }
    }
  }

  class Animation {
    constructor(img, steps, bytes) {
      this.gif = readGif(bytes);
      if (steps.length !== this.gif.boxes.length) throw new Error(`${steps.length} steps for ${this.gif.boxes.length} frames`);
      this.steps = steps;
      const { width, height, palette } = this.gif;
      this.colours = new Uint32Array(256);
      const view = new DataView(this.colours.buffer);
      for (let i = 0; i < palette.length / 3; i++) {
        view.setUint8(4 * i, palette[3 * i]); view.setUint8(4 * i + 1, palette[3 * i + 1]);
        view.setUint8(4 * i + 2, palette[3 * i + 2]); view.setUint8(4 * i + 3, 255);
      }
      this.keyframes = [];
      const screen = new Uint8Array(width * height);
      for (let k = 0; k < this.gif.boxes.length; k++) {
        apply(this.gif, k, screen);
        if (k % KEYFRAME_EVERY === 0) this.keyframes.push(screen.slice());
      }
      this.screen = screen;
      this.shown = this.gif.boxes.length - 1;
      this.canvas = document.createElement("canvas");
      this.canvas.width = width;
      this.canvas.height = height;
      this.canvas.className = img.className;
      this.canvas.style.width = `${img.width || width}px`;
      this.canvas.style.height = `${img.height || height}px`;
      this.canvas.dataset.file = img.getAttribute("src");
      this.image = new ImageData(width, height);
      this.label = document.createElement("div");
      this.label.className = "clock-step";
      img.replaceWith(this.canvas);
      this.canvas.after(this.label);
    }

    frameAt(step) { // the last frame at or before `step` (the first when `step` is earlier)
      let lo = 0, hi = this.steps.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (this.steps[mid] <= step) lo = mid; else hi = mid - 1;
      }
      return lo;
    }

    show(step) {
      const k = this.frameAt(step);
      if (k !== this.shown) {
        let from = this.shown;
        if (k < this.shown || k - this.shown > KEYFRAME_EVERY) {
          from = Math.floor(k / KEYFRAME_EVERY) * KEYFRAME_EVERY;
          this.screen.set(this.keyframes[from / KEYFRAME_EVERY]);
        }
        for (let j = from + 1; j <= k; j++) apply(this.gif, j, this.screen);
        this.shown = k;
      }
      const out = new Uint32Array(this.image.data.buffer);
      for (let i = 0; i < out.length; i++) out[i] = this.colours[this.screen[i]];
      this.canvas.getContext("2d").putImageData(this.image, 0, 0);
      const at = this.steps[k];
      this.label.textContent = at === step ? `step ${at}` : `step ${at} (the last frame at or before ${step})`;
    }
  }

  const animations = [];
  const failures = [];
  let steps = [];
  let cursor = 0;
  let timer = null;

  function decodeBase64(text) {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function add(file, frameSteps, base64) {
    const img = [...document.querySelectorAll("img")].find((i) => i.getAttribute("src") === file);
    if (!img) return;
    try {
      animations.push(new Animation(img, frameSteps, decodeBase64(base64)));
    } catch (e) {
      failures.push(`${file}: ${e.message}`);
    }
  }

  function show(position) {
    cursor = Math.max(0, Math.min(steps.length - 1, position));
    const step = steps[cursor];
    for (const a of animations) a.show(step);
    const bar = document.getElementById("clock");
    bar.querySelector("input[type=range]").value = String(cursor);
    bar.querySelector(".clock-now").textContent = `step ${step}  (${cursor + 1} of ${steps.length})`;
  }

  function play(on) {
    const bar = document.getElementById("clock");
    clearInterval(timer);
    timer = null;
    bar.querySelector("button").textContent = on ? "pause" : "play";
    if (!on) return;
    if (cursor === steps.length - 1) show(0);
    const fps = Number(bar.querySelector("select").value);
    timer = setInterval(() => {
      if (cursor >= steps.length - 1) play(false); else show(cursor + 1);
    }, 1000 / fps);
  }

  function start() {
    const bar = document.getElementById("clock");
    if (failures.length) bar.querySelector(".clock-note").textContent = `Not on the clock (playing on their own): ${failures.join("; ")}`;
    if (!animations.length) return;
    steps = [...new Set(animations.flatMap((a) => a.steps))].sort((a, b) => a - b);
    const range = bar.querySelector("input[type=range]");
    range.max = String(steps.length - 1);
    range.addEventListener("input", () => { play(false); show(Number(range.value)); });
    bar.querySelector("button").addEventListener("click", () => play(timer === null));
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "SELECT") return;
      const moves = { ArrowLeft: -1, ArrowRight: 1, PageUp: -10, PageDown: 10, Home: -Infinity, End: Infinity };
      if (e.key in moves) {
        e.preventDefault();
        play(false);
        show(Number.isFinite(moves[e.key]) ? cursor + moves[e.key] : moves[e.key] < 0 ? 0 : steps.length - 1);
      } else if (e.key === " ") {
        e.preventDefault();
        play(timer === null);
      }
    });
    bar.hidden = false;
    show(steps.length - 1);
  }

  window.emergenceClock = { add, start, show: (step) => show(steps.indexOf(step)), steps: () => steps };
})();
