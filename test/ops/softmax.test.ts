// softmax on the CPU: y = exp(s·x - max) / sum over the last axis, sums in f32, one rounding
// to x's dtype; stable for large inputs; a fully masked (all -inf) row gives zeros, not NaN.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { UNIT_ROUNDOFF, held, worstError } from '../support/tolerance.js';

/** float64 softmax of s·x over rows of `cols`. */
function reference(x: ArrayLike<number>, cols: number, scale: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let m = -Infinity;
    for (let j = 0; j < cols; j++) m = Math.max(m, scale * x[r * cols + j]!);
    let sum = 0;
    for (let j = 0; j < cols; j++) sum += Math.exp(scale * x[r * cols + j]! - m);
    for (let j = 0; j < cols; j++) out[r * cols + j] = Math.exp(scale * x[r * cols + j]! - m) / sum;
  }
  return out;
}

// Tolerance relative to each value: one rounding to the output dtype (its unit roundoff) plus
// 1e-5 for f32 arithmetic (exp within ~1 ulp, s·x rounded once, the f32 sum of up to 32000
// terms); absolute: half the smallest f16 subnormal (2^-25), where f16 results lose precision.
const ATOL: Record<FloatDType, number> = { f32: 1e-30, f16: 2 ** -25, bf16: 1e-30 };

const shapes: number[][] = [[1, 1], [1, 7], [3, 64], [64, 1000], [2, 3, 33], [1, 32000]];

describe('softmax', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const scale of [1, 0.125]) {
      for (const shape of shapes) {
        it(`matches a float64 reference, ${dtype} scale ${scale} [${shape.join(', ')}]`, async () => {
          const cols = shape[shape.length - 1]!;
          const size = shape.reduce((a, b) => a * b, 1);
          const x = held(dtype, rand(size, size + cols, 8));
          const got = await ops.softmax(Tensor.from(x, { shape, dtype }), { scale }).toArray();
          expect(worstError(got, reference(x, cols, scale), UNIT_ROUNDOFF[dtype] + 1e-5, ATOL[dtype])).toBeLessThanOrEqual(1);
        });
      }
    }
  }

  it('rows sum to 1', async () => {
    const [rows, cols] = [5, 333];
    const got = (await ops.softmax(Tensor.from(rand(rows * cols, 3, 20), { shape: [rows, cols] })).toArray()) as Float32Array;
    for (let r = 0; r < rows; r++) {
      const sum = got.subarray(r * cols, (r + 1) * cols).reduce((a, b) => a + b, 0);
      expect(Math.abs(sum - 1)).toBeLessThan(1e-5);
    }
  });

  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    it(`gives zeros for a fully masked row and ignores masked entries, ${dtype}`, async () => {
      const x = new Float32Array([-Infinity, -Infinity, -Infinity, -Infinity, -Infinity, 0, -Infinity, Math.log(3)]);
      const got = await ops.softmax(Tensor.from(x, { shape: [2, 4], dtype })).toArray();
      expect(Array.from(got.subarray(0, 4))).toEqual([0, 0, 0, 0]);
      expect(worstError(got.subarray(4), [0, 0.25, 0, 0.75], UNIT_ROUNDOFF[dtype] + 1e-6, 0)).toBeLessThanOrEqual(1);
    });
  }

  it('is stable for large inputs: softmax([1000, 1001, 1002]) = softmax([0, 1, 2])', async () => {
    const got = await ops.softmax(Tensor.from(new Float32Array([1000, 1001, 1002, -1000, -1001, -1002]), { shape: [2, 3] })).toArray();
    const want = reference([0, 1, 2, 0, -1, -2], 3, 1);
    expect(worstError(got, want, 1e-6, 0)).toBeLessThanOrEqual(1);
  });

  it('applies the scale before taking the max: softmax([2, 4], scale 0.5) = softmax([1, 2])', async () => {
    const got = await ops.softmax(Tensor.from(new Float32Array([2, 4]), { shape: [1, 2] }), { scale: 0.5 }).toArray();
    expect(worstError(got, [1 / (1 + Math.E), Math.E / (1 + Math.E)], 1e-6, 0)).toBeLessThanOrEqual(1);
  });
});
