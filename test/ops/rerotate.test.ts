// rerotate: moving RoPE'd keys from positions p to q equals rotating the raw keys at q.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, Tensor, ops, ropeInvFreq } from '../../lib/index.js';
import { rand, randInts, roundTo } from '../support/random.js';

type Layout = 'half' | 'adjacent';

// float64 RoPE reference: rotate each pair of x [tokens, heads, d] by angle(t, i).
function rotate(x: Float64Array, tokens: number, heads: number, d: number, layout: Layout, angle: (t: number, i: number) => number): Float64Array {
  const out = new Float64Array(x.length);
  const half = d / 2;
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * d;
      for (let i = 0; i < half; i++) {
        const lo = layout === 'adjacent' ? 2 * i : i;
        const hi = layout === 'adjacent' ? 2 * i + 1 : i + half;
        const a = angle(t, i);
        const x0 = x[base + lo]!;
        const x1 = x[base + hi]!;
        out[base + lo] = x0 * Math.cos(a) - x1 * Math.sin(a);
        out[base + hi] = x0 * Math.sin(a) + x1 * Math.cos(a);
      }
    }
  }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const shapes: [number, number, number][] = [
  [1, 1, 2],
  [5, 3, 16],
  [17, 2, 64],
  [33, 8, 128],
];

describe('rerotate', () => {
  for (const layout of ['half', 'adjacent'] as const) {
    for (const [tokens, heads, d] of shapes) {
      it(`matches a float64 rotation by (q - p) in f32 [${tokens}, ${heads}, ${d}] ${layout}`, async () => {
        const x = rand(tokens * heads * d, tokens + d);
        const from = randInts(tokens, 0, 4096, 1);
        const to = randInts(tokens, 0, 4096, 2);
        const invFreq = ropeInvFreq(d, 10000);
        const got = await ops.rerotate(Tensor.from(x, { shape: [tokens, heads, d] }), from, to, { invFreq, layout }).toArray();
        const want = rotate(Float64Array.from(x), tokens, heads, d, layout, (t, i) => (to[t]! - from[t]!) * invFreq[i]!);
        // The angle is carried to f32 accuracy (hi + lo, rerotate_math.h), sin/cos to an ulp or
        // two, the rotation in f32: |x| <= 1 leaves errors near 1e-7.
        expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
      });
    }
  }

  it('keys rotated at p then moved to q equal keys rotated at q (the CacheFocus identity)', async () => {
    const [tokens, heads, d] = [24, 4, 64];
    const raw = rand(tokens * heads * d, 5);
    const p = randInts(tokens, 0, 2000, 3);
    const q = randInts(tokens, 0, 2000, 4);
    const x = Tensor.from(raw, { shape: [tokens, heads, d] });
    const atP = ops.rope(x, p, { base: 10000 });
    const moved = await ops.rerotate(atP, p, q, { base: 10000 }).toArray();
    const atQ = await ops.rope(x, q, { base: 10000 }).toArray();
    expect(maxAbsDiff(moved, atQ)).toBeLessThan(1e-3);
  });

  // 16-bit keys are widened to f32, rotated, and rounded once (to nearest even): within one
  // rounding (bf16: 2^-8 relative, f16: 2^-11) of the f32 result; in place gives the same bits.
  for (const [dtype, rel] of [['bf16', 2 ** -8], ['f16', 2 ** -11]] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      it(`keeps ${dtype} keys within one ${dtype} rounding of the f32 result, in place too (${layout})`, async () => {
        const [tokens, heads, d] = [9, 3, 64];
        const x = roundTo(dtype, rand(tokens * heads * d, 9));
        const from = randInts(tokens, 0, 512, 5);
        const to = randInts(tokens, 0, 512, 6);
        const f32 = await ops.rerotate(Tensor.from(x, { shape: [tokens, heads, d] }), from, to, { layout }).toArray();
        const got = await ops.rerotate(Tensor.from(x, { shape: [tokens, heads, d], dtype }), from, to, { layout }).toArray();
        for (let i = 0; i < f32.length; i++) expect(Math.abs(got[i]! - f32[i]!)).toBeLessThanOrEqual(Math.abs(f32[i]!) * rel + 1e-6);
        // The rotation itself is the f32 path's arithmetic: the result is its rounding, exactly.
        expect(got).toEqual(roundTo(dtype, f32));
        const k = Tensor.from(x, { shape: [tokens, heads, d], dtype });
        ops.rerotate(k, from, to, { layout, inPlace: true });
        expect(await k.toArray()).toEqual(got);
      });
    }
  }

  it('moving by zero leaves keys bit-identical, and inPlace rewrites the tensor', async () => {
    const x = rand(3 * 2 * 8, 11);
    const k = Tensor.from(x, { shape: [3, 2, 8] });
    const same = await ops.rerotate(k, [5, 6, 7], [5, 6, 7]).toArray();
    expect(same).toEqual(x);
    const r = ops.rerotate(k, [0, 0, 0], [1, 2, 3], { inPlace: true });
    expect(r).toBe(k);
    expect(await k.toArray()).not.toEqual(x);
  });

  it('names the argument that is wrong', () => {
    const k = Tensor.zeros([4, 2, 8]);
    expect(() => ops.rerotate(k, [0, 1, 2], [0, 1, 2, 3])).toThrow(/rerotate: from has 3 entries but keys has 4 tokens/);
    expect(() => ops.rerotate(Tensor.zeros([4, 8]), [0], [0])).toThrow(/rerotate: x: expected rank 3/);
    expect(() => ops.rerotate(Tensor.zeros([1, 1, 7]), [0], [0])).toThrow(/head size \(x.shape\[2\] = 7\) must be even/);
    expect(() => ops.rerotate(k, [0, 1, 2, 3], [0, 1, 2, 3], { invFreq: new Float32Array(3) })).toThrow(/invFreq: expected 4 values/);
    expect(() => ops.rerotate(k, [0, 1, 2, 3], [0, 1, 2, 3], { layout: 'interleaved' as 'half' })).toThrow(InvalidArgumentError);
    expect(() => ops.rerotate(Tensor.zeros([1, 1, 2], { dtype: 'i32' }), [0], [0])).toThrow(/expected dtype f32, f16 or bf16/);
  });
});
