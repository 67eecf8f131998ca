// topk on CUDA against its CPU twin: both rank by the same total order (value descending, lower
// index first on ties, NaN last), so indices and values must agree exactly.
import { describe, expect, it } from 'vitest';

import { Tensor, ops } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { hasCuda } from './gpu.js';

async function bothTopk(data: Float32Array, shape: number[], k: number, dtype: 'f32' | 'f16' | 'bf16' = 'f32') {
  const run = async (device: 'cpu' | 'cuda') => {
    const { values, indices } = ops.topk(Tensor.from(data, { shape, dtype, device }), k);
    return { values: await values.toArray(), indices: await indices.toArray() };
  };
  return { cpu: await run('cpu'), cuda: await run('cuda') };
}

describe.skipIf(!hasCuda)('topk (CUDA vs CPU)', () => {
  const cases = [
    { shape: [1, 1], k: 1 },
    { shape: [7, 33], k: 5 },
    { shape: [4, 152064], k: 1 },
    { shape: [4, 152064], k: 50 },
    { shape: [1000, 64], k: 8 },
    { shape: [3, 5000], k: 5000 },
    { shape: [600_000, 2], k: 1 },
  ];
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const { shape, k } of cases) {
      it(`${dtype} [${shape.join(', ')}] k = ${k}`, async () => {
        const size = shape.reduce((a, b) => a * b, 1);
        // bf16/f16 rounding leaves many exact ties, so the tie rule is exercised too.
        const { cpu, cuda } = await bothTopk(rand(size, size + k, 3), shape, k, dtype);
        expect(cuda.indices).toEqual(cpu.indices);
        expect(cuda.values).toEqual(cpu.values);
      });
    }
  }

  it('agrees on ties, NaN, infinities and signed zeros', async () => {
    const row = new Float32Array([NaN, 1, 3, -0, 3, -Infinity, 0, NaN, Infinity, 3, -1e-45]);
    const { cpu, cuda } = await bothTopk(row, [1, row.length], row.length);
    expect(Array.from(cpu.indices)).toEqual([8, 2, 4, 9, 1, 3, 6, 10, 5, 0, 7]);
    expect(cuda.indices).toEqual(cpu.indices);
    expect(cuda.values).toEqual(cpu.values);
  });

  it('argmax agrees', async () => {
    const x = rand(9 * 40000, 4);
    const cpu = await ops.argmax(Tensor.from(x, { shape: [9, 40000] })).toArray();
    const cuda = await ops.argmax(Tensor.from(x, { shape: [9, 40000], device: 'cuda' })).toArray();
    expect(cuda).toEqual(cpu);
  });
});
