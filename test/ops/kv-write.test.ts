// kvWrite: token t's key and value rows land in pool slot slots[t] (page slots[t] / pageSize,
// row slots[t] % pageSize), converted once to the pool's dtype; every other slot is untouched.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, Tensor, ops, type FloatDType } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { rand, randInts } from '../support/random.js';
import { held } from '../support/tolerance.js';

/** n distinct slots of [0, total), shuffled. */
function distinctSlots(n: number, total: number, seed: number): Int32Array {
  const all = Int32Array.from({ length: total }, (_, i) => i);
  const r = randInts(total, 0, 1 << 30, seed);
  for (let i = total - 1; i > 0; i--) {
    const j = r[i]! % (i + 1);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, n);
}

const dtypes = ['f32', 'f16', 'bf16'] as const;

describe('kvWrite', () => {
  for (const src of dtypes) {
    for (const pool of dtypes) {
      it(`scatters ${src} rows into a ${pool} pool at the given slots, one rounding`, async () => {
        const [tokens, kvHeads, d, pageSize, numPages] = [23, 2, 64, 16, 5];
        const row = kvHeads * d;
        const k = held(src, rand(tokens * row, 1));
        const v = held(src, rand(tokens * row, 2));
        const before = held(pool, rand(numPages * pageSize * row, 3));
        const poolShape = [numPages, pageSize, kvHeads, d];
        const kPool = Tensor.from(before, { shape: poolShape, dtype: pool });
        const vPool = Tensor.from(before, { shape: poolShape, dtype: pool });
        const slots = distinctSlots(tokens, numPages * pageSize, 4);
        ops.kvWrite(Tensor.from(k, { shape: [tokens, kvHeads, d], dtype: src }), Tensor.from(v, { shape: [tokens, kvHeads, d], dtype: src }), kPool, vPool, slots);
        const wantK = Float32Array.from(before);
        const wantV = Float32Array.from(before);
        slots.forEach((s, t) => {
          wantK.set(held(pool, k.subarray(t * row, (t + 1) * row)), s * row);
          wantV.set(held(pool, v.subarray(t * row, (t + 1) * row)), s * row);
        });
        expect(await kPool.toArray()).toEqual(wantK);
        expect(await vPool.toArray()).toEqual(wantV);
      });
    }
  }

  it('copies bits unchanged when the dtypes match (f16 NaN and subnormals included)', async () => {
    const bits = Uint16Array.of(0x7e01, 0x0001, 0x8000, 0x7c00, 0x3c00, 0xfbff, 0x03ff, 0x1234);
    const k = Tensor.from(bits, { shape: [1, 1, 8], dtype: 'f16' });
    const kPool = Tensor.zeros([2, 4, 1, 8], { dtype: 'f16' });
    const vPool = Tensor.zeros([2, 4, 1, 8], { dtype: 'f16' });
    ops.kvWrite(k, k, kPool, vPool, [6]);
    const raw = (await kPool.raw()) as Uint16Array;
    expect(Array.from(raw.subarray(6 * 8, 7 * 8))).toEqual(Array.from(bits));
    expect(raw.subarray(0, 6 * 8).every((x) => x === 0)).toBe(true);
  });

  it('writes what pagedAttention then reads through a page table', async () => {
    // A 40-token sequence written through a shuffled 3-page table; attention with scale 0 is the
    // mean of the visible values, so the last query row must give the mean of all 40 v rows.
    const [tokens, kvHeads, d, pageSize] = [40, 1, 16, 16];
    const pages = [4, 0, 2];
    const kPool = Tensor.zeros([5, pageSize, kvHeads, d]);
    const vPool = Tensor.zeros([5, pageSize, kvHeads, d]);
    const v = rand(tokens * d, 5);
    const slots = Array.from({ length: tokens }, (_, j) => pages[Math.floor(j / pageSize)]! * pageSize + (j % pageSize));
    ops.kvWrite(Tensor.from(rand(tokens * d, 6), { shape: [tokens, 1, d] }), Tensor.from(v, { shape: [tokens, 1, d] }), kPool, vPool, slots);
    const q = Tensor.from(rand(d, 7), { shape: [1, 1, d] });
    const { out } = ops.pagedAttention(q, kPool, vPool, { sequences: [{ queries: 1, kvLength: tokens, pages }], scale: 0 });
    const got = await out.toArray();
    for (let i = 0; i < d; i++) {
      let mean = 0;
      for (let t = 0; t < tokens; t++) mean += v[t * d + i]! / tokens;
      expect(got[i]).toBeCloseTo(mean, 6);
    }
  });

  it('rejects a slot outside the pool on the CPU (through the raw binding)', async () => {
    const k = Tensor.from(rand(2 * 8, 8), { shape: [2, 1, 8] });
    const kPool = Tensor.zeros([2, 4, 1, 8]);
    const vPool = Tensor.zeros([2, 4, 1, 8]);
    const slots = Tensor.from(Int32Array.of(3, 8));
    native().ops.kvWrite(k.handle(), k.handle(), kPool.handle(), vPool.handle(), slots.handle(), { tokens: 2, kvHeads: 1, headDim: 8, pageSize: 4, numPages: 2 });
    const p = kPool.toArray();
    await expect(p).rejects.toThrow(InvalidArgumentError);
    await expect(p).rejects.toThrow(/slots\[1\] = 8 is outside the pool \[0, 8\)/);
  });

  it('names the argument that is wrong', () => {
    const k = Tensor.zeros([2, 1, 8]);
    const pool = Tensor.zeros([2, 4, 1, 8]);
    expect(() => ops.kvWrite(k, k, pool, pool, [0, 8])).toThrow(/slots\[1\] = 8 is outside the pool \[0, 8\)/);
    expect(() => ops.kvWrite(k, k, pool, pool, [1, 1])).toThrow(/slot 1 appears twice/);
    expect(() => ops.kvWrite(k, k, pool, pool, [0])).toThrow(/slots has 1 entries but k has 2 tokens/);
  });
});
