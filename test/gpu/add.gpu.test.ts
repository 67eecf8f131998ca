// add on CUDA against its CPU twin: the same f32 formula, so equal to the bit.
import { describe, expect, it } from 'vitest';

import { Tensor, ops } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { hasCuda } from './gpu.js';

describe.skipIf(!hasCuda)('add (CUDA vs CPU)', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const bDtype of ['f32', 'bf16'] as const) {
      for (const broadcast of [false, true]) {
        it(`a ${dtype} + b ${bDtype}${broadcast ? ' (broadcast row)' : ''}`, async () => {
          const [rows, cols] = [513, 1031];
          const a = Tensor.from(rand(rows * cols, 1, 100), { shape: [rows, cols], dtype });
          const b = broadcast
            ? Tensor.from(rand(cols, 2, 100), { shape: [cols], dtype: bDtype })
            : Tensor.from(rand(rows * cols, 2, 100), { shape: [rows, cols], dtype: bDtype });
          const cpu = await ops.add(a, b).raw();
          const cuda = await ops.add(a.to('cuda'), b.to('cuda')).raw();
          expect(cuda).toEqual(cpu);
        });
      }
    }
  }
});
