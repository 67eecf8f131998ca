// rope on the CPU: each pair of x [tokens, heads, headDim] rotated by angle float(p) · invFreq[i]
// computed in f32 (as HF transformers computes it), cos and sin scaled by attnFactor, one
// rounding to x's dtype. The float64 reference takes the same f32 angle, so what remains is
// the kernel's own arithmetic: f32 sin/cos and two products, a few ulp of |x|.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, ropeInvFreq, type FloatDType } from '../../lib/index.js';
import { rand, randInts } from '../support/random.js';
import { UNIT_ROUNDOFF, held, worstError } from '../support/tolerance.js';

type Layout = 'half' | 'adjacent';

/** The kernel's angle: float(p) * invFreq[i], rounded to f32. */
function f32Angle(p: number, f: number): number {
  return Math.fround(Math.fround(p) * f);
}

/** float64 rotation of every pair of x [tokens, heads, d] by angle(t, i), cos/sin scaled by `attn`. */
function reference(
  x: Float32Array,
  [tokens, heads, d]: readonly number[],
  layout: Layout,
  angle: (t: number, i: number) => number,
  attn = 1,
): Float64Array {
  const out = new Float64Array(x.length);
  const half = d! / 2;
  for (let t = 0; t < tokens!; t++) {
    for (let h = 0; h < heads!; h++) {
      const base = (t * heads! + h) * d!;
      for (let i = 0; i < half; i++) {
        const lo = base + (layout === 'adjacent' ? 2 * i : i);
        const hi = base + (layout === 'adjacent' ? 2 * i + 1 : i + half);
        const c = Math.cos(angle(t, i)) * attn;
        const s = Math.sin(angle(t, i)) * attn;
        out[lo] = x[lo]! * c - x[hi]! * s;
        out[hi] = x[lo]! * s + x[hi]! * c;
      }
    }
  }
  return out;
}

// Tolerance: one rounding to the output dtype (unit roundoff u) relative to the value, plus 1e-6
// absolute for the f32 arithmetic on |x| <= 1 (about 16 ulp of 1.0; a wrong angle is off by O(1)).

const shapes: [number, number, number][] = [
  [1, 1, 2],
  [3, 1, 6],
  [5, 3, 16],
  [17, 2, 64],
  [7, 4, 128],
];

describe('rope', () => {
  it('rotates pairs (i, i + d/2) in the half layout: a hand-computed example', async () => {
    // x = [1, 2, 3, 4] at position 1 with invFreq [1, 0.5]: pair (x0, x2) by 1 rad, (x1, x3) by 0.5 rad.
    const x = Tensor.from(new Float32Array([1, 2, 3, 4]), { shape: [1, 1, 4] });
    const got = await ops.rope(x, [1], { layout: 'half', invFreq: new Float32Array([1, 0.5]) }).toArray();
    const want = [-1.9841106485555495, -0.1625370306360665, 2.4623779024123156, 4.469181324769897];
    expect(worstError(got, want, 0, 1e-6)).toBeLessThanOrEqual(1);
  });

  it('rotates pairs (2i, 2i + 1) in the adjacent layout: a hand-computed example', async () => {
    // x = [1, 2, 3, 4] at position 1 with invFreq [1, 0.5]: pair (x0, x1) by 1 rad, (x2, x3) by 0.5 rad.
    const x = Tensor.from(new Float32Array([1, 2, 3, 4]), { shape: [1, 1, 4] });
    const got = await ops.rope(x, [1], { layout: 'adjacent', invFreq: new Float32Array([1, 0.5]) }).toArray();
    const want = [-1.1426396637476532, 1.922075596544176, 0.7150455312543063, 4.9486068633741];
    expect(worstError(got, want, 0, 1e-6)).toBeLessThanOrEqual(1);
  });

  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const shape of shapes) {
        it(`matches a float64 reference at f32 angles, ${dtype} ${layout} [${shape.join(', ')}]`, async () => {
          const [tokens, heads, d] = shape;
          const x = held(dtype, rand(tokens * heads * d, tokens * 31 + d));
          const positions = randInts(tokens, 0, 65536, tokens + heads);
          const invFreq = ropeInvFreq(d, 500000);
          const got = await ops.rope(Tensor.from(x, { shape, dtype }), positions, { layout, invFreq }).toArray();
          const want = reference(x, shape, layout, (t, i) => f32Angle(positions[t]!, invFreq[i]!));
          expect(worstError(got, want, UNIT_ROUNDOFF[dtype], 1e-6)).toBeLessThanOrEqual(1);
        });
      }
    }
  }

  it('takes the angle in f32 as HF does, not in float64', async () => {
    // At p = 100003 the f32 product p · invFreq[i] is off from the exact angle by up to ~4e-3 rad:
    // the kernel must match the f32 angle to 1e-6 and so visibly miss the exact one.
    const [tokens, heads, d] = [1, 2, 64];
    const x = rand(tokens * heads * d, 77);
    const invFreq = ropeInvFreq(d, 10000);
    const got = await ops.rope(Tensor.from(x, { shape: [tokens, heads, d] }), [100003], { invFreq }).toArray();
    const atF32 = reference(x, [tokens, heads, d], 'half', (_t, i) => f32Angle(100003, invFreq[i]!));
    const exact = reference(x, [tokens, heads, d], 'half', (_t, i) => 100003 * invFreq[i]!);
    expect(worstError(got, atF32, 0, 1e-6)).toBeLessThanOrEqual(1);
    expect(worstError(got, exact, 0, 1e-4)).toBeGreaterThan(1);
  });

  for (const layout of ['half', 'adjacent'] as const) {
    it(`rope at p then rope at q - p equals rope at q (${layout})`, async () => {
      const [tokens, heads, d] = [24, 4, 64];
      const x = Tensor.from(rand(tokens * heads * d, 5), { shape: [tokens, heads, d] });
      const p = randInts(tokens, 0, 2000, 3);
      const q = randInts(tokens, 0, 2000, 4);
      const qMinusP = q.map((qi, t) => qi - p[t]!);
      const twice = await ops.rope(ops.rope(x, p, { layout }), qMinusP, { layout }).toArray();
      const once = await ops.rope(x, q, { layout }).toArray();
      // Each f32 angle below 2000 rad carries up to half an ulp (6e-5 rad); three of them differ
      // between the two sides, on |x| <= 1. A wrong layout or sign is off by O(1).
      expect(worstError(twice, once, 0, 5e-4)).toBeLessThanOrEqual(1);
    });
  }

  it('is the identity at position 0, bit for bit', async () => {
    const x = rand(4 * 3 * 32, 12);
    const got = await ops.rope(Tensor.from(x, { shape: [4, 3, 32] }), [0, 0, 0, 0]).toArray();
    expect(got).toEqual(x);
  });

  it('scales cos and sin by attnFactor', async () => {
    const [tokens, heads, d] = [6, 2, 32];
    const x = rand(tokens * heads * d, 21);
    const positions = randInts(tokens, 0, 4096, 8);
    const invFreq = ropeInvFreq(d, 10000);
    const got = await ops.rope(Tensor.from(x, { shape: [tokens, heads, d] }), positions, { invFreq, attnFactor: 1.25 }).toArray();
    const want = reference(x, [tokens, heads, d], 'half', (t, i) => f32Angle(positions[t]!, invFreq[i]!), 1.25);
    expect(worstError(got, want, UNIT_ROUNDOFF.f32, 1.25e-6)).toBeLessThanOrEqual(1);
  });

  it('takes positions as an i32 tensor, one per token shared by its heads', async () => {
    const [tokens, heads, d] = [3, 5, 8];
    const x = rand(tokens * heads * d, 4);
    const positions = new Int32Array([7, 0, 123456]);
    const invFreq = ropeInvFreq(d, 10000);
    const got = await ops.rope(Tensor.from(x, { shape: [tokens, heads, d] }), Tensor.from(positions), { invFreq }).toArray();
    const want = reference(x, [tokens, heads, d], 'half', (t, i) => f32Angle(positions[t]!, invFreq[i]!));
    expect(worstError(got, want, UNIT_ROUNDOFF.f32, 1e-6)).toBeLessThanOrEqual(1);
  });
});
