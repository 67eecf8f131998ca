// siluMul on the CPU: out = gate / (1 + exp(-gate)) · up elementwise (the SwiGLU gate), in f32
// with one rounding to the dtype.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { UNIT_ROUNDOFF, held, worstError } from '../support/tolerance.js';

function reference(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = (gate[i]! / (1 + Math.exp(-gate[i]!))) * up[i]!;
  return out;
}

// Tolerance relative to each value: one rounding to the dtype (its unit roundoff) plus 1e-6 for
// the f32 arithmetic (exp within ~1 ulp, then an add, a divide and a multiply: ~4 ulp = 2.4e-7);
// absolute: half the smallest f16 subnormal (2^-25), where f16 results lose precision.
const ATOL: Record<FloatDType, number> = { f32: 1e-37, f16: 2 ** -25, bf16: 1e-37 };

const shapes: number[][] = [[1], [7], [2, 33], [1000], [3, 40001]];

describe('siluMul', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const shape of shapes) {
      it(`matches a float64 reference, ${dtype} [${shape.join(', ')}]`, async () => {
        const n = shape.reduce((a, b) => a * b, 1);
        const gate = held(dtype, rand(n, n, 12));
        const up = held(dtype, rand(n, n + 1, 3));
        const got = await ops.siluMul(Tensor.from(gate, { shape, dtype }), Tensor.from(up, { shape, dtype })).toArray();
        expect(worstError(got, reference(gate, up), UNIT_ROUNDOFF[dtype] + 1e-6, ATOL[dtype])).toBeLessThanOrEqual(1);
      });
    }
  }

  it('silu(0) = 0, silu(x) -> x for large x, -> -0 for very negative x, never NaN', async () => {
    const gate = new Float32Array([0, 1, -1, 20, -20, 100, -100, 1e4, -1e4, 3e38, -3e38]);
    const up = new Float32Array(gate.length).fill(0.5);
    const got = await ops.siluMul(Tensor.from(gate), Tensor.from(up)).toArray();
    // exp(-g) overflows f32 below g = -88.7: the result is 0 where float64 has a tiny subnormal.
    expect(worstError(got, reference(gate, up), 1e-6, 1e-37)).toBeLessThanOrEqual(1);
    expect(got.every((v) => !Number.isNaN(v))).toBe(true);
  });
});
