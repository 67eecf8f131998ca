// Seeded test data for the scripts: a 32-bit LCG, so runs are repeatable without dependencies.

/** n floats uniform in [-1, 1) from `seed`. */
export function uniformF32(n, seed) {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296) * 2 - 1;
  }
  return out;
}
