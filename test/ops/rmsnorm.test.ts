// rmsnorm on the CPU: y = x / sqrt(mean(x²) + eps) · weight over the last axis, mean and scale
// in f32, the product rounded once to x's dtype; weight may have another float dtype.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { UNIT_ROUNDOFF, held, worstError } from '../support/tolerance.js';

/** float64 rmsnorm of x [rows, dim]. */
function reference(x: Float32Array, w: Float32Array, dim: number, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / dim; r++) {
    let ss = 0;
    for (let j = 0; j < dim; j++) ss += x[r * dim + j]! ** 2;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let j = 0; j < dim; j++) out[r * dim + j] = x[r * dim + j]! * inv * w[j]!;
  }
  return out;
}

// Tolerance relative to each value: one rounding to the output dtype (its unit roundoff) plus
// 1e-5 for the f32 sum of squares (rounding grows like sqrt(dim) · 2^-24, about 4e-6 at dim
// 4096), and 1e-7 absolute for f16 results in the subnormal range.

const shapes: number[][] = [[1, 1], [1, 7], [3, 64], [5, 257], [2, 3, 33], [16, 4096]];

describe('rmsnorm', () => {
  it('normalises a hand-computed row: [3, 4] · [1, 2] / rms 3.5355', async () => {
    const x = Tensor.from(new Float32Array([3, 4]), { shape: [1, 2] });
    const w = Tensor.from(new Float32Array([1, 2]));
    const got = await ops.rmsnorm(x, w, { eps: 0 }).toArray();
    expect(worstError(got, [0.848528137423857, 2.262741699796952], 1e-6, 0)).toBeLessThanOrEqual(1);
  });

  for (const [dtype, wdtype] of [['f32', 'f32'], ['f16', 'f16'], ['bf16', 'bf16'], ['bf16', 'f32'], ['f32', 'bf16']] as const) {
    for (const shape of shapes) {
      it(`matches a float64 reference, x ${dtype} weight ${wdtype} [${shape.join(', ')}]`, async () => {
        const dim = shape[shape.length - 1]!;
        const size = shape.reduce((a, b) => a * b, 1);
        const x = held(dtype, rand(size, size + dim, 3));
        const w = held(wdtype, rand(dim, dim, 2));
        const eps = 1e-5;
        const got = await ops.rmsnorm(Tensor.from(x, { shape, dtype }), Tensor.from(w, { dtype: wdtype }), { eps }).toArray();
        expect(got.length).toBe(size);
        expect(worstError(got, reference(x, w, dim, eps), UNIT_ROUNDOFF[dtype] + 1e-5, 1e-7)).toBeLessThanOrEqual(1);
      });
    }
  }

  it('gives zeros, not NaN, for an all-zero row (eps keeps the scale finite)', async () => {
    const x = Tensor.from(new Float32Array(2 * 8).fill(0).fill(1, 8), { shape: [2, 8] });
    const got = await ops.rmsnorm(x, Tensor.from(new Float32Array(8).fill(3)), { eps: 1e-6 }).toArray();
    expect(Array.from(got.subarray(0, 8))).toEqual(new Array(8).fill(0));
    expect(worstError(got.subarray(8), new Array(8).fill(3 / Math.sqrt(1 + 1e-6)), 1e-6, 0)).toBeLessThanOrEqual(1);
  });

  it('does not overflow for large values whose squares exceed f16 but not f32', async () => {
    const x = held('f16', new Float32Array([60000, -30000, 1000, 0]));
    const got = await ops.rmsnorm(Tensor.from(x, { shape: [1, 4], dtype: 'f16' }), Tensor.from(new Float32Array(4).fill(1)), { eps: 1e-6 }).toArray();
    expect(worstError(got, reference(x, new Float32Array(4).fill(1), 4, 1e-6), 2 ** -11 + 1e-5, 1e-7)).toBeLessThanOrEqual(1);
  });
});
