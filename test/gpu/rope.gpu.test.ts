// rope on CUDA against its CPU twin on the same inputs.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand, randInts } from '../support/random.js';
import { worstError } from '../support/tolerance.js';
import { hasCuda, onBoth } from './gpu.js';

// Both sides take the same f32 angle; CUDA's sincosf (2 ulp) and glibc's (< 1 ulp) may differ by
// a few ulp, then the same products on |x| <= 1: 2e-6 absolute. In f16/bf16 that difference can
// flip one rounding: one ulp of the dtype relative.
const RTOL: Record<FloatDType, number> = { f32: 1e-6, f16: 2 ** -10, bf16: 2 ** -7 };

describe.skipIf(!hasCuda)('rope (CUDA vs CPU)', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const [tokens, heads, d] of [[1, 1, 2], [5, 3, 6], [37, 8, 128], [300, 4, 64], [2, 40, 256]] as const) {
        it(`${dtype} ${layout} [${tokens}, ${heads}, ${d}]`, async () => {
          const x = Tensor.from(rand(tokens * heads * d, d + tokens), { shape: [tokens, heads, d], dtype });
          const positions = Tensor.from(randInts(tokens, 0, 131072, 1));
          const { cpu, cuda } = await onBoth([x, positions], (x, p) => ops.rope(x!, p!, { base: 500000, layout, attnFactor: 1.1 }));
          expect(worstError(cuda, cpu, RTOL[dtype], 2e-6)).toBeLessThanOrEqual(1);
        });
      }
    }
  }

  it('covers more tokens than one grid (grid-stride over tokens)', async () => {
    const tokens = 600_000;
    const x = Tensor.from(rand(tokens * 2, 3), { shape: [tokens, 1, 2] });
    const positions = Tensor.from(randInts(tokens, 0, 4096, 2));
    const { cpu, cuda } = await onBoth([x, positions], (x, p) => ops.rope(x!, p!));
    expect(worstError(cuda, cpu, RTOL.f32, 2e-6)).toBeLessThanOrEqual(1);
  });
});
