// embedding on CUDA against its CPU twin: the same rows bit for bit, and the same error for an
// id outside the vocabulary (the kernel's device flag, copied back by the launcher).
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, Tensor, ops } from '../../lib/index.js';
import { rand, randInts } from '../support/random.js';
import { hasCuda, onBoth } from './gpu.js';

const DTYPES = ['f32', 'f16', 'bf16'] as const;

async function failure(t: Tensor): Promise<Error> {
  return (await t.toArray().then(
    () => new Error('expected the read to reject'),
    (e: unknown) => e,
  )) as Error;
}

describe.skipIf(!hasCuda)('embedding (CUDA vs CPU)', () => {
  for (const tableDType of DTYPES) {
    for (const outDType of DTYPES) {
      it(`table ${tableDType} -> ${outDType} [5000, 1024] x 300 ids`, async () => {
        const table = Tensor.from(rand(5000 * 1024, 7), { shape: [5000, 1024], dtype: tableDType });
        const ids = Tensor.from(randInts(300, 0, 5000, 8));
        const { cpu, cuda } = await onBoth([table, ids], (t, i) => ops.embedding(t!, i!, { dtype: outDType }));
        expect(cuda).toEqual(cpu);
      });
    }
  }

  it('one token, one column', async () => {
    const { cpu, cuda } = await onBoth([Tensor.from(new Float32Array([4.5]), { shape: [1, 1] }), Tensor.from(new Int32Array([0]))], (t, i) =>
      ops.embedding(t!, i!),
    );
    expect(Array.from(cuda)).toEqual([4.5]);
    expect(cuda).toEqual(cpu);
  });

  for (const ids of [[0, 9, -1, 3], [0, 9, 10, 3], [3, 3, 2147483647, -5, 77]]) {
    it(`rejects with the CPU's error for ids [${ids.join(', ')}] (the lowest bad token)`, async () => {
      const data = rand(10 * 4, 2);
      const cpu = await failure(ops.embedding(Tensor.from(data, { shape: [10, 4] }), Tensor.from(Int32Array.from(ids))));
      const cuda = await failure(
        ops.embedding(Tensor.from(data, { shape: [10, 4], device: 'cuda' }), Tensor.from(Int32Array.from(ids), { device: 'cuda' })),
      );
      expect(cuda).toBeInstanceOf(InvalidArgumentError);
      expect(cuda.message).toBe(cpu.message);
      expect(cuda.message).toMatch(/^embedding: token 2 has id /);
    });
  }

  it('checks ids even when rows are empty (dim 0)', async () => {
    const table = Tensor.zeros([10, 0], { device: 'cuda' });
    const err = await failure(ops.embedding(table, Tensor.from(new Int32Array([1, 10]), { device: 'cuda' })));
    expect(err.message).toMatch(/token 1 has id 10/);
  });

  it('keeps working after a rejected call (the stream is not poisoned)', async () => {
    const table = Tensor.from(rand(10 * 4, 2), { shape: [10, 4], device: 'cuda' });
    await failure(ops.embedding(table, Tensor.from(new Int32Array([11]), { device: 'cuda' })));
    const got = await ops.embedding(table, Tensor.from(new Int32Array([1]), { device: 'cuda' })).toArray();
    expect(Array.from(got)).toEqual(Array.from(rand(10 * 4, 2).subarray(4, 8)));
  });
});
