// rerotate and cast on CUDA against their CPU twins.
import { describe, expect, it } from 'vitest';

import { Tensor, ops } from '../../lib/index.js';
import { rand, randInts } from '../support/random.js';
import { hasCuda, maxRelDiff, onBoth } from './gpu.js';

describe.skipIf(!hasCuda)('rerotate (CUDA vs CPU)', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const [tokens, heads, d] of [[1, 1, 2], [37, 8, 128], [300, 4, 64]] as const) {
        it(`${dtype} ${layout} [${tokens}, ${heads}, ${d}]`, async () => {
          const keys = Tensor.from(rand(tokens * heads * d, d + tokens), { shape: [tokens, heads, d], dtype });
          const from = Tensor.from(randInts(tokens, 0, 100_000, 1));
          const to = Tensor.from(randInts(tokens, 0, 100_000, 2));
          const { cpu, cuda } = await onBoth([keys, from, to], (k, f, t) => ops.rerotate(k!, f!, t!, { base: 500000, layout }));
          // Same f32 formula on both sides; sinf/cosf of angles up to 1e5 rad may differ by an ulp.
          const tol = dtype === 'f32' ? 1e-4 : 1e-2;
          expect(maxRelDiff(cuda, cpu, 1e-2)).toBeLessThan(tol);
        });
      }
    }
  }
});

describe.skipIf(!hasCuda)('cast (CUDA vs CPU)', () => {
  it('rounds identically to the bit', async () => {
    const xs = rand(100_003, 3, 70000);
    for (const dtype of ['f16', 'bf16'] as const) {
      const cpu = await Tensor.from(xs).cast(dtype).raw();
      const cuda = await Tensor.from(xs, { device: 'cuda' }).cast(dtype).raw();
      expect(cuda).toEqual(cpu);
    }
  });
});
