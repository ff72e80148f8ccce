// Talking to the server: JSON, and frame ranges kept in blocks (one request per block, never per frame).

import { decode } from "./colour.js";

export async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

export async function getBytes(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) {
    const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
    throw new Error(body.error || `${r.status}`);
  }
  return { buffer: await r.arrayBuffer(), headers: r.headers };
}

const MAX_BYTES = 48 << 20; // per store: older blocks are dropped beyond this

// Frames of one layer (or its kernels) of one run, fetched `block` frames at a time.
export class FrameStore {
  // stepScales (its row length, or 0): each frame also gets its own scale row (S_t, then the level thresholds of
  // [−S_t, S_t]) from the server's per-step rule, fetched beside it and handed out with it as `scaleRow`
  constructor(runId, layer, { dtype, shape, maxFrames, kernels = false, stepScales = 0 }) {
    this.url = `/api/runs/${runId}/${kernels ? "kernels" : "frames"}?layer=${encodeURIComponent(layer)}`;
    this.scalesUrl = stepScales ? `/api/runs/${runId}/step_scales?layer=${encodeURIComponent(layer)}` : null;
    this.row = stepScales;
    this.dtype = dtype;
    this.frameSize = shape.reduce((a, b) => a * b, 1);
    this.block = Math.max(1, Math.min(32, maxFrames));
    this.blocks = new Map(); // block number -> {start, count, values, bits} or a pending promise
    this.singles = new Map(); // position -> one frame fetched on its own (the first frame a view shows)
    this.total = 0; // frames the run has (updated by the caller as the run grows)
    this.bytes = 0;
  }

  // the store of one layer (or its kernels) as the run's answer describes it, with per-step scale rows when the
  // layer's scale is the per-step rule
  static forLayer(runId, info, kernels = false) {
    return new FrameStore(runId, info.name, { dtype: info.dtype, shape: info.shape, maxFrames: info.max_frames, kernels,
      stepScales: info.scale.per_step ? info.scale.thresholds.length + 1 : 0 });
  }

  setTotal(total) {
    this.total = total;
    // a block fetched while it was the run's incomplete last block is fetched again when asked for
    for (const [k, b] of this.blocks) {
      if (!(b instanceof Promise) && b.count < this.block && b.start + b.count < total) this._drop(k);
    }
  }

  _drop(k) {
    const b = this.blocks.get(k);
    if (b && !(b instanceof Promise)) this.bytes -= b.values.byteLength;
    this.blocks.delete(k);
  }

  // Float32Array [count × row] of the per-step scales of frames start …, or null when the store has none
  _scales(start, count) {
    if (!this.scalesUrl) return Promise.resolve(null);
    return getBytes(`${this.scalesUrl}&start=${start}&count=${count}`).then(({ buffer }) => new Float32Array(buffer));
  }

  // {values, bits, scaleRow} of frame `pos` if loaded, else null
  get(pos) {
    const b = this.blocks.get(Math.floor(pos / this.block));
    if (!b || b instanceof Promise || pos >= b.start + b.count) {
      const one = this.singles.get(pos);
      return one && !(one instanceof Promise) ? one : null;
    }
    this.blocks.delete(Math.floor(pos / this.block)); // move to the end: most recently used
    this.blocks.set(Math.floor(pos / this.block), b);
    const o = (pos - b.start) * this.frameSize;
    return { values: b.values.subarray(o, o + this.frameSize), bits: b.bits ? b.bits.subarray(o, o + this.frameSize) : null,
      scaleRow: b.scales ? b.scales.subarray((pos - b.start) * this.row, (pos - b.start + 1) * this.row) : null };
  }

  // resolves when frame `pos` alone is loaded: the quickest way to a first picture (its block is fetched
  // when asked for, after the first pictures are up)
  ensureOne(pos) {
    if (this.get(pos)) return Promise.resolve();
    if (this.singles.get(pos) instanceof Promise) return this.singles.get(pos);
    const p = Promise.all([getBytes(`${this.url}&start=${pos}&count=1`), this._scales(pos, 1)]).then(([{ buffer }, scales]) => {
      this.singles.set(pos, { values: decode(buffer, this.dtype), bits: this.dtype === "float16" ? new Uint16Array(buffer) : null,
        scaleRow: scales });
    }, (e) => { this.singles.delete(pos); throw e; });
    this.singles.set(pos, p);
    return p;
  }

  // resolves when frame `pos` is loaded (or rejects with the server's reason)
  ensure(pos) {
    if (pos < 0 || pos >= this.total) return Promise.reject(new Error(`frame ${pos} is not recorded yet`));
    const k = Math.floor(pos / this.block);
    const have = this.blocks.get(k);
    if (have instanceof Promise) return have;
    if (have && pos < have.start + have.count) return Promise.resolve();
    const single = this.singles.get(pos);
    if (single instanceof Promise) return single; // the first frame is on its way alone
    const start = k * this.block;
    const count = Math.min(this.block, this.total - start);
    const p = Promise.all([getBytes(`${this.url}&start=${start}&count=${count}`), this._scales(start, count)]).then(([{ buffer, headers }, scales]) => {
      const got = Math.min(Number(headers.get("X-Frame-Count")), scales ? scales.length / this.row : Infinity);
      const values = decode(buffer, this.dtype);
      const bits = this.dtype === "float16" ? new Uint16Array(buffer) : null;
      this.blocks.set(k, { start, count: got, values, bits, scales });
      this.bytes += values.byteLength;
      for (const key of this.blocks.keys()) {
        if (this.bytes <= MAX_BYTES) break;
        if (key !== k) this._drop(key);
      }
    }, (e) => { this.blocks.delete(k); throw e; });
    this.blocks.set(k, p);
    return p;
  }
}
