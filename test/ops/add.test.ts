// add: out = a + b in f32, rounded once to a's dtype; b is a's shape or one row broadcast over
// a's rows (a bias). The sum of two f32 values rounded once is exactly Math.fround of the exact
// sum, so every expectation here is exact.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, Tensor, ops, type FloatDType } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { rand } from '../support/random.js';
import { held } from '../support/tolerance.js';

/** What the kernel must give: the f32 sum, then one rounding to a's dtype. */
function expected(dtype: FloatDType, a: Float32Array, b: Float32Array, cols: number, broadcast: boolean): Float32Array {
  const sum = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) sum[i] = a[i]! + b[broadcast ? i % cols : i]!;
  return held(dtype, sum);
}

const dtypes = ['f32', 'f16', 'bf16'] as const;

describe('add', () => {
  for (const dtype of dtypes) {
    for (const bDtype of dtypes) {
      it(`a ${dtype} + b ${bDtype}, elementwise and as a broadcast row`, async () => {
        const [rows, cols] = [37, 129];
        const a = held(dtype, rand(rows * cols, 1, 4));
        const b = held(bDtype, rand(rows * cols, 2, 4));
        const bias = held(bDtype, rand(cols, 3, 4));
        const ta = Tensor.from(a, { shape: [rows, cols], dtype });
        const full = ops.add(ta, Tensor.from(b, { shape: [rows, cols], dtype: bDtype }));
        const row = ops.add(ta, Tensor.from(bias, { shape: [cols], dtype: bDtype }));
        expect(full.dtype).toBe(dtype);
        expect(await full.toArray()).toEqual(expected(dtype, a, b, cols, false));
        expect(await row.toArray()).toEqual(expected(dtype, a, bias, cols, true));
      });
    }
  }

  it('broadcasts a bias over every row of a rank-3 tensor, across many threads chunks', async () => {
    const shape = [7, 300, 96];
    const a = rand(7 * 300 * 96, 4);
    const bias = rand(96, 5);
    const got = await ops.add(Tensor.from(a, { shape }), Tensor.from(bias)).toArray();
    expect(got).toEqual(expected('f32', a, bias, 96, true));
  });

  it('adds two 1-D tensors elementwise (a [n] and b [n] is not a broadcast)', async () => {
    const a = rand(100_003, 6);
    const b = rand(100_003, 7);
    expect(await ops.add(Tensor.from(a), Tensor.from(b)).toArray()).toEqual(expected('f32', a, b, 1, false));
  });

  it('rounds to nearest even once (bf16: 1 + 2^-8 is a tie that stays at 1; 1 + 3 * 2^-9 rounds up)', async () => {
    const a = Tensor.from(Float32Array.of(1, 1), { dtype: 'bf16' });
    const b = Tensor.from(Float32Array.of(2 ** -8, 3 * 2 ** -9));
    expect(Array.from(await ops.add(a, b).toArray())).toEqual([1, 1 + 2 ** -7]);
  });

  it('may write its result over a (a residual added in place)', async () => {
    const x = rand(4 * 8, 8);
    const r = rand(4 * 8, 9);
    const a = Tensor.from(x, { shape: [4, 8] });
    native().ops.add(a.handle(), Tensor.from(r, { shape: [4, 8] }).handle(), a.handle(), { rows: 4, cols: 8, broadcastB: false });
    expect(await a.toArray()).toEqual(expected('f32', x, r, 8, false));
  });

  it('handles empty tensors', async () => {
    expect((await ops.add(Tensor.zeros([0, 4]), Tensor.zeros([4])).toArray()).length).toBe(0);
  });

  it('names the argument that is wrong', () => {
    expect(() => ops.add(Tensor.zeros([2, 3]), Tensor.zeros([2]))).toThrow(/add: b \[2\] must have a's shape \[2, 3\] or be one row \[3\]/);
    expect(() => ops.add(Tensor.zeros([2, 3]), Tensor.zeros([3], { dtype: 'i32' }))).toThrow(InvalidArgumentError);
  });
});
