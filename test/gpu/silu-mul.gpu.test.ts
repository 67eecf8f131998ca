// siluMul on CUDA against its CPU twin on the same inputs.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { worstError } from '../support/tolerance.js';
import { hasCuda, onBoth } from './gpu.js';

// CUDA's expf (2 ulp) against the CPU's exp_f32 (1 ulp), then the same add, divide and multiply:
// a few ulp, under 1e-6. In f16/bf16 that can flip one rounding: one ulp, and f16's subnormal ulp.
const RTOL: Record<FloatDType, number> = { f32: 1e-6, f16: 2 ** -10, bf16: 2 ** -7 };
const ATOL: Record<FloatDType, number> = { f32: 1e-37, f16: 2 ** -24, bf16: 1e-37 };

describe.skipIf(!hasCuda)('siluMul (CUDA vs CPU)', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const n of [1, 1000, 1_000_003]) {
      it(`${dtype} n = ${n}`, async () => {
        const gate = Tensor.from(rand(n, n, 12), { dtype });
        const up = Tensor.from(rand(n, n + 1, 3), { dtype });
        const { cpu, cuda } = await onBoth([gate, up], (g, u) => ops.siluMul(g!, u!));
        expect(worstError(cuda, cpu, RTOL[dtype], ATOL[dtype])).toBeLessThanOrEqual(1);
      });
    }
  }

  it('agrees at the extremes: 0, +-100, +-1e4, +-3e38', async () => {
    const gate = Tensor.from(new Float32Array([0, 1, -1, 100, -100, 1e4, -1e4, 3e38, -3e38]));
    const up = Tensor.from(new Float32Array(9).fill(0.5));
    const { cpu, cuda } = await onBoth([gate, up], (g, u) => ops.siluMul(g!, u!));
    expect(worstError(cuda, cpu, RTOL.f32, 1e-37)).toBeLessThanOrEqual(1);
  });
});
