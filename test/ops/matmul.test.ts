// matmul on the CPU against a float64 reference: C = A @ op(B), f32 accumulation, one rounding
// to C's dtype. Shapes cover both kernel paths (at most 4 rows of A: the GEMV path; more: the
// blocked GEMM), sizes of 1, odd sizes that leave partial register tiles, k beyond one 256 block,
// batches with and without a broadcast B, both B layouts and every dtype combination.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand } from '../support/random.js';
import { held } from '../support/tolerance.js';

interface Case {
  batch: number;
  m: number;
  n: number;
  k: number;
  /** B is [k, n] (or [n, k] with transposeB) shared by every batch entry, else [batch, ...]. */
  broadcastB: boolean;
}

/** float64 C = A @ op(B), and sum_p |A[i,p]| |op(B)[p,j]| per element (the scale of its error). */
function reference(a: Float32Array, b: Float32Array, c: Case, transB: boolean): { want: Float64Array; scale: Float64Array } {
  const { batch, m, n, k } = c;
  const want = new Float64Array(batch * m * n);
  const scale = new Float64Array(batch * m * n);
  for (let e = 0; e < batch; e++) {
    const bb = c.broadcastB ? 0 : e * k * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        let t = 0;
        for (let p = 0; p < k; p++) {
          const x = a[(e * m + i) * k + p]!;
          const y = b[bb + (transB ? j * k + p : p * n + j)]!;
          s += x * y;
          t += Math.abs(x * y);
        }
        want[(e * m + i) * n + j] = s;
        scale[(e * m + i) * n + j] = t;
      }
    }
  }
  return { want, scale };
}

/**
 * Largest error in units of the allowed error. f32 accumulation of k products in any order is
 * within ~k * 2^-24 of sum |a||b| in the worst case and far less in practice; 1e-5 of it is a
 * real bound for k up to a few hundred. A 16-bit C adds one rounding: at most 2^-8 (bf16) or
 * 2^-11 (f16) of |C|.
 */
function worstError(got: Float32Array, want: Float64Array, scale: Float64Array, out: FloatDType): number {
  const rounding = out === 'bf16' ? 2 ** -8 : out === 'f16' ? 2 ** -11 : 0;
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const allowed = 1e-5 * scale[i]! + rounding * Math.abs(want[i]!) + 1e-30;
    worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / allowed);
  }
  return worst;
}

async function check(c: Case, transB: boolean, dt: { a: FloatDType; b: FloatDType; out: FloatDType }, seed: number) {
  const { batch, m, n, k } = c;
  const a = held(dt.a, rand(batch * m * k, seed));
  const bShape = transB ? [n, k] : [k, n];
  const b = held(dt.b, rand((c.broadcastB ? 1 : batch) * k * n, seed + 1));
  const ta = Tensor.from(a, { shape: batch === 1 && c.broadcastB ? [m, k] : [batch, m, k], dtype: dt.a });
  const tb = Tensor.from(b, { shape: c.broadcastB ? bShape : [batch, ...bShape], dtype: dt.b });
  const tc = ops.matmul(ta, tb, { transposeB: transB, dtype: dt.out });
  expect(tc.dtype).toBe(dt.out);
  const got = (await tc.toArray()) as Float32Array;
  for (const t of [ta, tb, tc]) t.dispose();
  const { want, scale } = reference(a, b, c, transB);
  expect(got.length).toBe(want.length);
  expect(worstError(got, want, scale, dt.out)).toBeLessThanOrEqual(1);
}

const name = (c: Case) => `[${c.batch}] ${c.m}x${c.k} @ ${c.k}x${c.n}${c.broadcastB ? '' : ' batched B'}`;

const F32 = { a: 'f32', b: 'f32', out: 'f32' } as const;

const shapes: Case[] = [
  { batch: 1, m: 1, n: 1, k: 1, broadcastB: true },
  { batch: 1, m: 1, n: 7, k: 3, broadcastB: true },
  { batch: 1, m: 1, n: 130, k: 257, broadcastB: true },
  { batch: 1, m: 2, n: 65, k: 9, broadcastB: true },
  { batch: 1, m: 3, n: 5, k: 17, broadcastB: true },
  { batch: 1, m: 2, n: 1100, k: 33, broadcastB: true },
  { batch: 1, m: 4, n: 33, k: 70, broadcastB: true },
  { batch: 1, m: 5, n: 1, k: 9, broadcastB: true },
  { batch: 1, m: 7, n: 19, k: 1, broadcastB: true },
  { batch: 1, m: 13, n: 37, k: 300, broadcastB: true },
  { batch: 1, m: 64, n: 48, k: 64, broadcastB: true },
  { batch: 1, m: 37, n: 130, k: 513, broadcastB: true },
  { batch: 1, m: 530, n: 41, k: 20, broadcastB: true },
  { batch: 1, m: 9, n: 700, k: 31, broadcastB: true },
  { batch: 3, m: 2, n: 9, k: 11, broadcastB: true },
  { batch: 3, m: 2, n: 9, k: 11, broadcastB: false },
  { batch: 2, m: 6, n: 17, k: 40, broadcastB: true },
  { batch: 2, m: 6, n: 17, k: 40, broadcastB: false },
  { batch: 4, m: 1, n: 65, k: 129, broadcastB: false },
  { batch: 5, m: 3, n: 20, k: 8, broadcastB: false },
];

describe('matmul (CPU) matches a float64 reference', () => {
  for (const transB of [false, true]) {
    const layout = transB ? 'transposeB' : 'plain B';
    describe(`f32, ${layout}`, () => {
      shapes.forEach((c, i) => {
        it(name(c), () => check(c, transB, F32, 100 + i));
      });
    });
  }

  // Every dtype combination, on a GEMV-sized and a GEMM-sized problem.
  const mixed: Case[] = [
    { batch: 1, m: 3, n: 37, k: 45, broadcastB: true },
    { batch: 2, m: 11, n: 35, k: 270, broadcastB: false },
  ];
  const dtypes = ['f32', 'f16', 'bf16'] as const;
  for (const a of dtypes) {
    for (const b of dtypes) {
      for (const out of dtypes) {
        for (const transB of [false, true]) {
          for (const c of mixed) {
            it(`A ${a}, B ${b}, C ${out}, ${transB ? 'transposeB' : 'plain B'} ${name(c)}`, () =>
              check(c, transB, { a, b, out }, 7));
          }
        }
      }
    }
  }
});

describe('matmul (CPU) edge cases', () => {
  it('k = 0 gives zeros (the empty sum) in every output dtype', async () => {
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      for (const m of [1, 6]) {
        const c = ops.matmul(Tensor.zeros([m, 0]), Tensor.zeros([0, 5]), { dtype });
        expect(Array.from(await c.toArray())).toEqual(new Array(m * 5).fill(0));
      }
    }
  });

  it('m = 0 or n = 0 gives an empty result', async () => {
    expect((await ops.matmul(Tensor.zeros([0, 4]), Tensor.zeros([4, 3])).toArray()).length).toBe(0);
    expect((await ops.matmul(Tensor.zeros([6, 4]), Tensor.zeros([0, 4]), { transposeB: true }).toArray()).length).toBe(0);
  });

  it('small integers multiply exactly', async () => {
    // [[1, 2, 3], [4, 5, 6]] @ [[7, 8], [9, 10], [11, 12]]
    const a = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3] });
    const b = Tensor.from(new Float32Array([7, 8, 9, 10, 11, 12]), { shape: [3, 2] });
    expect(Array.from(await ops.matmul(a, b).toArray())).toEqual([58, 64, 139, 154]);
    const bt = Tensor.from(new Float32Array([7, 9, 11, 8, 10, 12]), { shape: [2, 3] });
    expect(Array.from(await ops.matmul(a, bt, { transposeB: true }).toArray())).toEqual([58, 64, 139, 154]);
  });

  it('propagates infinities and NaN (GEMV and GEMM paths)', async () => {
    for (const m of [2, 8]) {
      const a = new Float32Array(m * 3).fill(1);
      a[0] = Infinity; // row 0
      a[3 * (m - 1) + 1] = NaN; // last row
      const b = Tensor.from(new Float32Array([1, 2, 3]), { shape: [3, 1] });
      const got = await ops.matmul(Tensor.from(a, { shape: [m, 3] }), b).toArray();
      expect(got[0]).toBe(Infinity);
      expect(got[m - 1]).toBeNaN();
      expect(Array.from(got.slice(1, m - 1))).toEqual(new Array(m - 2).fill(6));
    }
  });

  // Widening of 16-bit inputs is exact: every finite f16 (and bf16) value, passed through an
  // identity on each path: A packed by the GEMM, B packed (both layouts), and B streamed by
  // the GEMV (both layouts). With transposeB the GEMV reads weight rows in 32-blocks (split
  // into even and odd elements) and then one 16-block: rows of 16 take the 16-block alone,
  // rows of 48 both.
  for (const [dtype, W] of [['f16', 16], ['bf16', 16], ['f16', 48], ['bf16', 48]] as const) {
    it(`widens every finite ${dtype} value exactly on every path (rows of ${W})`, async () => {
      const bits: number[] = [];
      for (let h = 0; h < 0x10000; h++) {
        const exp = dtype === 'f16' ? (h >> 10) & 0x1f : (h >> 7) & 0xff;
        if (exp !== (dtype === 'f16' ? 0x1f : 0xff)) bits.push(h);
      }
      while (bits.length % W !== 0) bits.push(0);
      const values = (await Tensor.from(Uint16Array.from(bits), { dtype }).toArray()) as Float32Array;
      const n = bits.length / W;
      /** rows x W: row i is the unit vector e_(from + i). */
      const identity = (rows: number, from = 0) => {
        const e = new Float32Array(rows * W);
        for (let i = 0; i < rows; i++) e[i * W + from + i] = 1;
        return Tensor.from(e, { shape: [rows, W] });
      };
      const plain = Tensor.from(Uint16Array.from(bits), { shape: [W, n], dtype }); // row i: values[i*n ..]
      const trans = Tensor.from(Uint16Array.from(bits), { shape: [n, W], dtype }); // column i: values[i], values[W+i], ..
      const expectExact = async (c: Tensor, want: (i: number) => number) => {
        const got = (await c.toArray()) as Float32Array;
        let bad = 0;
        for (let i = 0; i < got.length; i++) if (got[i] !== want(i)) bad++;
        expect(bad).toBe(0);
      };
      // GEMM, B packed.
      await expectExact(ops.matmul(identity(W), plain), (i) => values[i]!);
      await expectExact(ops.matmul(identity(W), trans, { transposeB: true }), (i) => values[(i % n) * W + Math.floor(i / n)]!);
      // GEMM, A packed: the values as an [n, W] matrix times the identity.
      await expectExact(ops.matmul(trans, identity(W), { transposeB: true }), (i) => values[i]!);
      // GEMV (4 rows of A), B streamed.
      for (let from = 0; from < W; from += 4) {
        await expectExact(ops.matmul(identity(4, from), plain), (i) => values[from * n + i]!);
        await expectExact(ops.matmul(identity(4, from), trans, { transposeB: true }), (i) => values[(i % n) * W + from + Math.floor(i / n)]!);
      }
    });
  }

  it('a row of C does not depend on the other rows of A (batch invariance, GEMM path)', async () => {
    const [m, n, k] = [29, 70, 300];
    const a = rand(m * k, 31);
    const w = Tensor.from(rand(n * k, 32), { shape: [n, k] });
    const all = (await ops.matmul(Tensor.from(a, { shape: [m, k] }), w, { transposeB: true }).toArray()) as Float32Array;
    for (const [start, rows] of [[0, 5], [7, 6], [13, 16], [24, 5]] as const) {
      const part = Tensor.from(a.slice(start * k, (start + rows) * k), { shape: [rows, k] });
      const got = await ops.matmul(part, w, { transposeB: true }).toArray();
      expect(got).toEqual(all.slice(start * n, (start + rows) * n));
    }
  });

  it('a row of C does not depend on the other rows of A (GEMV path, both layouts)', async () => {
    const [n, k] = [45, 85];
    const a = rand(4 * k, 33);
    for (const transB of [false, true]) {
      const w = Tensor.from(rand(n * k, 34), { shape: transB ? [n, k] : [k, n] });
      const all = (await ops.matmul(Tensor.from(a, { shape: [4, k] }), w, { transposeB: transB }).toArray()) as Float32Array;
      for (let i = 0; i < 4; i++) {
        const row = Tensor.from(a.slice(i * k, (i + 1) * k), { shape: [1, k] });
        expect(await ops.matmul(row, w, { transposeB: transB }).toArray()).toEqual(all.slice(i * n, (i + 1) * n));
      }
      w.dispose();
    }
  });
});

// Decode's matmul: one to four rows of A against weights [n, k] (transposeB), read a weight row
// at a time in 32-blocks, then a 16-block, then the k % 16 tail. Every k below lands in a
// different mix of those; the weights come in every dtype.
describe('matmul (CPU) GEMV with transposeB covers every split of k', () => {
  const ks = [1, 15, 16, 17, 31, 32, 33, 47, 48, 53, 64, 80, 111, 768];
  for (const b of ['f32', 'bf16', 'f16'] as const) {
    for (const m of [1, 4]) {
      it(`B ${b}, ${m} row(s) of A, k in ${ks.join(', ')}`, async () => {
        for (const k of ks) await check({ batch: 1, m, n: 37, k, broadcastB: true }, true, { a: 'f32', b, out: 'f32' }, 40 + k);
      });
    }
  }
});
