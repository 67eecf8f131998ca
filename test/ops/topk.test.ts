// topk on the CPU: the k largest values of each row (last axis) in descending order with their
// indices; equal values keep the lower index first; NaN is never selected over a number
// (NaNs rank last, by index); -0 and +0 are equal. argmax is topk with k = 1.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { held } from '../support/tolerance.js';

/** Reference: a stable sort of each row by value, descending, NaN last. */
function reference(x: Float32Array, cols: number, k: number): { values: Float32Array; indices: Int32Array } {
  const rows = x.length / cols;
  const values = new Float32Array(rows * k);
  const indices = new Int32Array(rows * k);
  const rank = (v: number) => (Number.isNaN(v) ? -Infinity : v);
  for (let r = 0; r < rows; r++) {
    const order = Array.from({ length: cols }, (_, j) => j);
    const v = (j: number) => x[r * cols + j]!;
    order.sort((a, b) => {
      const nanA = Number.isNaN(v(a));
      const nanB = Number.isNaN(v(b));
      if (nanA !== nanB) return nanA ? 1 : -1;
      return rank(v(b)) - rank(v(a)) || a - b;
    });
    for (let j = 0; j < k; j++) {
      indices[r * k + j] = order[j]!;
      values[r * k + j] = v(order[j]!);
    }
  }
  return { values, indices };
}

async function topk(x: Float32Array, shape: number[], k: number, dtype: FloatDType = 'f32') {
  const { values, indices } = ops.topk(Tensor.from(x, { shape, dtype }), k);
  expect(values.shape).toEqual([...shape.slice(0, -1), k]);
  return { values: (await values.toArray()) as Float32Array, indices: (await indices.toArray()) as Int32Array };
}

const cases: { shape: number[]; k: number }[] = [
  { shape: [1, 1], k: 1 },
  { shape: [1, 7], k: 3 },
  { shape: [5, 100], k: 1 },
  { shape: [5, 100], k: 10 },
  { shape: [3, 33], k: 33 },
  { shape: [2, 3, 50], k: 5 },
  { shape: [2, 32000], k: 50 },
];

describe('topk', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const { shape, k } of cases) {
      it(`matches a stable descending sort, ${dtype} [${shape.join(', ')}] k = ${k}`, async () => {
        const cols = shape[shape.length - 1]!;
        const size = shape.reduce((a, b) => a * b, 1);
        // bf16 and f16 rounding of 32000 values leaves many exact ties: the tie rule is exercised.
        const x = held(dtype, rand(size, size + k, 4));
        const got = await topk(x, shape, k, dtype);
        const want = reference(x, cols, k);
        expect(got.indices).toEqual(want.indices);
        expect(got.values).toEqual(want.values);
      });
    }
  }

  it('breaks ties by the lower index', async () => {
    const got = await topk(new Float32Array([1, 3, 3, 2, 3]), [1, 5], 4);
    expect(Array.from(got.indices)).toEqual([1, 2, 4, 3]);
    expect(Array.from(got.values)).toEqual([3, 3, 3, 2]);
  });

  it('never selects NaN over a number; NaNs come last, by index', async () => {
    const got = await topk(new Float32Array([NaN, 1, NaN, -Infinity, 0]), [1, 5], 5);
    expect(Array.from(got.indices)).toEqual([1, 4, 3, 0, 2]);
    expect(Array.from(got.values)).toEqual([1, 0, -Infinity, NaN, NaN]);
    const first = await topk(new Float32Array([NaN, -Infinity, NaN]), [1, 3], 1);
    expect(Array.from(first.indices)).toEqual([1]);
  });

  it('treats -0 and +0 as equal (a tie: lower index first), returning each as stored', async () => {
    const got = await topk(new Float32Array([-0, 0, -0]), [1, 3], 3);
    expect(Array.from(got.indices)).toEqual([0, 1, 2]);
    expect(Object.is(got.values[0], -0) && Object.is(got.values[1], 0)).toBe(true);
  });

  it('orders infinities and extremes', async () => {
    const got = await topk(new Float32Array([-3.4e38, Infinity, 3.4e38, -Infinity, 1e-45, -1e-45]), [1, 6], 6);
    expect(Array.from(got.indices)).toEqual([1, 2, 4, 5, 0, 3]);
  });

  it('argmax: the index of the largest value per row, ties to the lower index', async () => {
    const x = Tensor.from(new Float32Array([0, 5, 5, 1, -5, -7, -2, -2, NaN, -1, NaN, -2]), { shape: [3, 4] });
    const idx = ops.argmax(x);
    expect(idx.dtype).toBe('i32');
    expect(Array.from((await idx.toArray()) as Int32Array)).toEqual([1, 2, 1]);
  });
});
