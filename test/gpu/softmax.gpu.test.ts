// softmax on CUDA against its CPU twin on the same inputs.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { worstError } from '../support/tolerance.js';
import { hasCuda, onBoth } from './gpu.js';

// CUDA's expf (2 ulp) against the CPU's exp_f32 (1 ulp), and f32 sums in different orders:
// under 1e-5 relative. In f16/bf16 that can flip one rounding: one ulp, and f16's subnormal ulp.
const RTOL: Record<FloatDType, number> = { f32: 1e-5, f16: 2 ** -10, bf16: 2 ** -7 };
const ATOL: Record<FloatDType, number> = { f32: 1e-30, f16: 2 ** -24, bf16: 1e-30 };

describe.skipIf(!hasCuda)('softmax (CUDA vs CPU)', () => {
  const cases = [[1, 1], [7, 33], [64, 4097], [1, 152064], [600_000, 2]] as const;
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const [rows, cols] of cases) {
      it(`${dtype} [${rows}, ${cols}] scale 0.125`, async () => {
        const x = Tensor.from(rand(rows * cols, rows + cols, 30), { shape: [rows, cols], dtype });
        const { cpu, cuda } = await onBoth([x], (x) => ops.softmax(x!, { scale: 0.125 }));
        expect(worstError(cuda, cpu, RTOL[dtype], ATOL[dtype])).toBeLessThanOrEqual(1);
      });
    }
  }

  it('fully masked rows give zeros and masked entries exact zeros, on both', async () => {
    const cols = 3000;
    const data = rand(3 * cols, 5, 4);
    data.fill(-Infinity, 0, cols); // row 0 fully masked
    for (let j = cols + 1; j < 2 * cols; j += 2) data[j] = -Infinity; // row 1 half masked
    const x = Tensor.from(data, { shape: [3, cols] });
    const { cpu, cuda } = await onBoth([x], (x) => ops.softmax(x!));
    expect(cuda.subarray(0, cols).every((v) => v === 0)).toBe(true);
    for (let j = cols + 1; j < 2 * cols; j += 2) expect(cuda[j]).toBe(0);
    expect(worstError(cuda, cpu, RTOL.f32, 1e-30)).toBeLessThanOrEqual(1);
  });
});
