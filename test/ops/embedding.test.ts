// embedding on the CPU: out[t, :] = table[ids[t], :], converted to the output dtype with one
// rounding; an id outside [0, vocab) rejects the read with an InvalidArgumentError naming the
// token and the id.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand, randInts } from '../support/random.js';
import { held } from '../support/tolerance.js';

function gather(table: Float32Array, ids: Int32Array, dim: number): Float32Array {
  const out = new Float32Array(ids.length * dim);
  ids.forEach((id, t) => out.set(table.subarray(id * dim, (id + 1) * dim), t * dim));
  return out;
}

const DTYPES = ['f32', 'f16', 'bf16'] as const;
const cases: { vocab: number; dim: number; tokens: number }[] = [
  { vocab: 1, dim: 1, tokens: 1 },
  { vocab: 50, dim: 7, tokens: 13 },
  { vocab: 1000, dim: 64, tokens: 300 },
];

describe('embedding', () => {
  for (const tableDType of DTYPES) {
    for (const outDType of DTYPES) {
      for (const { vocab, dim, tokens } of cases) {
        it(`gathers rows exactly, table ${tableDType} -> ${outDType} [${vocab}, ${dim}] x ${tokens} ids`, async () => {
          const table = held(tableDType, rand(vocab * dim, vocab + dim));
          const ids = randInts(tokens, 0, vocab, tokens);
          ids[0] = vocab - 1; // both ends of the vocabulary
          ids[tokens - 1] = 0;
          const t = Tensor.from(table, { shape: [vocab, dim], dtype: tableDType });
          const out = ops.embedding(t, Tensor.from(ids), { dtype: outDType });
          expect(out.shape).toEqual([tokens, dim]);
          expect(out.dtype).toBe(outDType);
          // A copy, or one rounding of the stored value: bit-exact.
          expect(await out.toArray()).toEqual(held(outDType, gather(table, ids, dim)));
        });
      }
    }
  }

  it('repeats rows for repeated ids', async () => {
    const table = rand(4 * 3, 1);
    const ids = new Int32Array([2, 2, 0, 2]);
    const got = await ops.embedding(Tensor.from(table, { shape: [4, 3] }), Tensor.from(ids)).toArray();
    expect(got).toEqual(gather(table, ids, 3));
  });

  for (const bad of [-1, 10, 2 ** 31 - 1, -(2 ** 31)]) {
    it(`rejects the read when an id is out of range (${bad}), naming the token and the id`, async () => {
      const table = Tensor.from(rand(10 * 4, 2), { shape: [10, 4] });
      const out = ops.embedding(table, Tensor.from(new Int32Array([0, 9, bad, 3])));
      const err = await out.toArray().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toBe(`embedding: token 2 has id ${bad}, outside the vocabulary [0, 10)`);
    });
  }

  it('names the first bad token when several are bad', async () => {
    const table = Tensor.from(rand(10 * 4, 2), { shape: [10, 4] });
    const out = ops.embedding(table, Tensor.from(new Int32Array([0, 5, 4, 99, 1, -3])));
    await expect(out.toArray()).rejects.toThrow(/token 3 has id 99/);
  });

  it('checks ids even when rows are empty (dim 0)', async () => {
    const table = Tensor.zeros([10, 0]);
    await expect(ops.embedding(table, Tensor.from(new Int32Array([1, 10]))).toArray()).rejects.toThrow(/token 1 has id 10/);
    expect(await ops.embedding(table, Tensor.from(new Int32Array([1, 9]))).toArray()).toEqual(new Float32Array(0));
  });
});
