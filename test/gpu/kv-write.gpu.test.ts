// kvWrite on CUDA against its CPU twin: the same scatter and conversion, so pools equal to the bit.
import { describe, expect, it } from 'vitest';

import { Tensor, ops } from '../../lib/index.js';
import { rand, randInts } from '../support/random.js';
import { hasCuda } from './gpu.js';

describe.skipIf(!hasCuda)('kvWrite (CUDA vs CPU)', () => {
  for (const src of ['f32', 'bf16'] as const) {
    for (const pool of ['f32', 'f16', 'bf16'] as const) {
      it(`${src} rows into a ${pool} pool`, async () => {
        const [tokens, kvHeads, d, pageSize, numPages] = [300, 4, 128, 16, 40];
        const k = Tensor.from(rand(tokens * kvHeads * d, 1, 8), { shape: [tokens, kvHeads, d], dtype: src });
        const v = Tensor.from(rand(tokens * kvHeads * d, 2, 8), { shape: [tokens, kvHeads, d], dtype: src });
        // Distinct slots: a random permutation's prefix.
        const perm = Array.from({ length: numPages * pageSize }, (_, i) => i);
        const r = randInts(perm.length, 0, 1 << 30, 3);
        for (let i = perm.length - 1; i > 0; i--) {
          const j = r[i]! % (i + 1);
          [perm[i], perm[j]] = [perm[j]!, perm[i]!];
        }
        const slots = perm.slice(0, tokens);
        const start = Tensor.from(rand(numPages * pageSize * kvHeads * d, 4), { shape: [numPages, pageSize, kvHeads, d], dtype: pool });
        const results = [];
        for (const device of ['cpu', 'cuda'] as const) {
          const kPool = start.to(device);
          const vPool = start.to(device);
          ops.kvWrite(k.to(device), v.to(device), kPool, vPool, slots);
          results.push([await kPool.raw(), await vPool.raw()]);
        }
        expect(results[1]).toEqual(results[0]);
      });
    }
  }
});
