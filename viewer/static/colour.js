// Colours stored values with the server's scale: a value's palette level is the number of the scale's
// thresholds at or below it (the thresholds come from replay.palette.level_thresholds, which derives them
// from replay's own value_to_index, so this file holds no colour rule of its own). NaN gets the NaN colour.

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// RGBA packed as the Uint32 that ImageData's bytes read as on this machine
export function packRGBA(r, g, b) {
  return LITTLE_ENDIAN ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
}

export function unpackRGBA(c) {
  return LITTLE_ENDIAN ? [c & 255, (c >>> 8) & 255, (c >>> 16) & 255] : [c >>> 24, (c >>> 16) & 255, (c >>> 8) & 255];
}

// float16 bits -> number, exactly (used where Float16Array is missing)
function halfToNumber(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

let allHalves = null; // [65536] every float16 value, in bit order (decoded once: element reads of a
// Float16Array are far slower than of a Float64Array, so hot loops index tables by the stored bits instead)
const halfTables = new Map(); // scale -> {colours, flags} for every float16 bit pattern: one per distinct scale
function halves() {
  if (!allHalves) {
    const bits = new Uint16Array(65536).map((_, i) => i);
    allHalves = typeof Float16Array === "function" ? new Float64Array(new Float16Array(bits.buffer)) : Float64Array.from(bits, halfToNumber);
  }
  return allHalves;
}

export const NORMAL = 0, CLIPPED = 1, NOT_A_NUMBER = 2;

// The values of a frame block as stored: a typed array over the response bytes (little-endian on the wire).
export function decode(buffer, dtype) {
  if (!LITTLE_ENDIAN) throw new Error("this viewer needs a little-endian machine");
  if (dtype === "float32") return new Float32Array(buffer);
  if (dtype === "float16") {
    if (typeof Float16Array === "function") return new Float16Array(buffer);
    return Float64Array.from(new Uint16Array(buffer), halfToNumber);
  }
  throw new Error(`unknown frame dtype ${dtype}`);
}

// level of a non-NaN value: how many thresholds are <= v (thresholds ascending)
function levelOf(v, thresholds) {
  let lo = 0, hi = thresholds.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (thresholds[mid] <= v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

export class Colourer {
  // scale: {thresholds, lo, hi, kind}; palettes: {diverging: [[r,g,b]...], sequential: [...], nan: [r,g,b]}
  constructor(scale, palettes) {
    this.scale = scale;
    this.thresholds = Float64Array.from(scale.thresholds);
    this.lo = scale.lo;
    this.hi = scale.hi;
    const colours = palettes[scale.kind];
    this.levels = Uint32Array.from(colours, ([r, g, b]) => packRGBA(r, g, b));
    this.nan = packRGBA(...palettes.nan);
    this._half = null;
  }

  level(v) { return Number.isNaN(v) ? -1 : levelOf(v, this.thresholds); }

  rgba(v) { return Number.isNaN(v) ? this.nan : this.levels[levelOf(v, this.thresholds)]; }

  // {colours: [65536] packed colour, flags: [65536] NORMAL | CLIPPED | NOT_A_NUMBER} of every float16 bit
  // pattern: one lookup per stored half
  halfTable() {
    if (!this._half) {
      const key = `${this.scale.kind} ${this.lo} ${this.hi} ${this.scale.thresholds.join(",")}`;
      this._half = halfTables.get(key);
      if (!this._half) {
        const h = halves();
        const colours = new Uint32Array(65536), flags = new Uint8Array(65536);
        for (let i = 0; i < 65536; i++) {
          colours[i] = this.rgba(h[i]);
          flags[i] = this.flag(h[i]);
        }
        this._half = { colours, flags };
        halfTables.set(key, this._half);
      }
    }
    return this._half;
  }

  // whether a value lies beyond the scale (drawn in an end colour) or is NaN
  flag(v) { return Number.isNaN(v) ? NOT_A_NUMBER : v < this.lo || v > this.hi ? CLIPPED : NORMAL; }
}
