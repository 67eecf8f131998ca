// rmsnorm on CUDA against its CPU twin on the same inputs.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { worstError } from '../support/tolerance.js';
import { hasCuda, onBoth } from './gpu.js';

// The f32 sums of squares are added in different orders (16 CPU lanes, a block tree on CUDA):
// about sqrt(dim) · 2^-24 apart, under 1e-5. In f16/bf16 that can flip one rounding: one ulp.
const RTOL: Record<FloatDType, number> = { f32: 1e-5, f16: 2 ** -10, bf16: 2 ** -7 };

describe.skipIf(!hasCuda)('rmsnorm (CUDA vs CPU)', () => {
  const cases = [[1, 1], [7, 33], [300, 4096], [2, 5000], [600_000, 3]] as const;
  for (const [dtype, wdtype] of [['f32', 'f32'], ['f16', 'f16'], ['bf16', 'bf16'], ['bf16', 'f32']] as const) {
    for (const [rows, dim] of cases) {
      it(`x ${dtype} weight ${wdtype} [${rows}, ${dim}]`, async () => {
        const x = Tensor.from(rand(rows * dim, rows + dim, 4), { shape: [rows, dim], dtype });
        const w = Tensor.from(rand(dim, dim, 2), { dtype: wdtype });
        const { cpu, cuda } = await onBoth([x, w], (x, w) => ops.rmsnorm(x!, w!, { eps: 1e-6 }));
        expect(worstError(cuda, cpu, RTOL[dtype], 1e-7)).toBeLessThanOrEqual(1);
      });
    }
  }

  it('gives zeros for an all-zero row on both', async () => {
    const x = Tensor.zeros([3, 1500]);
    const w = Tensor.from(rand(1500, 1));
    const { cpu, cuda } = await onBoth([x, w], (x, w) => ops.rmsnorm(x!, w!));
    expect(cuda).toEqual(cpu);
    expect(cuda.every((v) => v === 0)).toBe(true);
  });
});
