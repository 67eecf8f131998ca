// Seeded test data. Mulberry32: small, fast, and the same sequence on every machine.

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n uniform values in [-scale, scale). */
export function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

/** n integers in [lo, hi). */
export function randInts(n: number, lo: number, hi: number, seed: number): Int32Array {
  const r = rng(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + Math.floor(r() * (hi - lo));
  return out;
}

/**
 * The values a tensor of `dtype` holds for x (round to nearest even), computed in JavaScript so
 * that references see exactly what the kernels see.
 */
export function roundTo(dtype: 'f16' | 'bf16', x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = dtype === 'bf16' ? bf16(x[i]!) : f16(x[i]!);
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function bf16(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return NaN;
  u32[0] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
  return f32[0];
}
function f16(x: number): number {
  const a = Math.abs(x);
  if (!Number.isFinite(a) || a === 0) return x;
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  const q = a < 2 ** -14 ? 2 ** -24 : 2 ** (e - 10);
  const v = a / q;
  const fl = Math.floor(v);
  const r = v - fl > 0.5 || (v - fl === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  return Math.sign(x) * (r * q > 65504 ? Infinity : r * q);
}
