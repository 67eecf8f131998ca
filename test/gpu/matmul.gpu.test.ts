// matmul on CUDA against its CPU twin (which test/ops/matmul.test.ts checks against float64):
// both kernel paths (GEMV for at most 4 rows of A, tiled GEMM with 64x64 and, once the tiles
// fill the GPU, 128x128 blocks), partial tiles, k beyond a tile, batches with and without a
// broadcast B, both B layouts, aligned and unaligned rows, and every dtype combination.
import { describe, expect, it } from 'vitest';

import { Tensor, ops, type FloatDType } from '../../lib/index.js';
import { rand, roundTo } from '../support/random.js';
import { hasCuda, onBoth } from './gpu.js';

interface Case {
  batch: number;
  m: number;
  n: number;
  k: number;
  broadcastB: boolean;
}

/** sum_p |A[i,p]| |op(B)[p,j]| per element: the scale of an f32 accumulation error. */
function errorScale(a: Float32Array, b: Float32Array, c: Case, transB: boolean): Float64Array {
  const { batch, m, n, k } = c;
  const scale = new Float64Array(batch * m * n);
  for (let e = 0; e < batch; e++) {
    const bb = c.broadcastB ? 0 : e * k * n;
    for (let i = 0; i < m; i++) {
      const row = (e * m + i) * k;
      for (let j = 0; j < n; j++) {
        let t = 0;
        for (let p = 0; p < k; p++) t += Math.abs(a[row + p]! * b[bb + (transB ? j * k + p : p * n + j)]!);
        scale[(e * m + i) * n + j] = t;
      }
    }
  }
  return scale;
}

/**
 * CPU and CUDA each sum in f32 in their own order, each within well under 1e-5 of the scale of
 * the exact value, so they differ by at most 2e-5 of it; a 16-bit C adds a rounding on each side.
 */
async function check(c: Case, transB: boolean, dt: { a: FloatDType; b: FloatDType; out: FloatDType }, seed: number) {
  const { batch, m, n, k } = c;
  const a = rand(batch * m * k, seed);
  const b = rand((c.broadcastB ? 1 : batch) * k * n, seed + 1);
  const bShape = transB ? [n, k] : [k, n];
  const ta = Tensor.from(a, { shape: [batch, m, k], dtype: dt.a });
  const tb = Tensor.from(b, { shape: c.broadcastB ? bShape : [batch, ...bShape], dtype: dt.b });
  const { cpu, cuda } = await onBoth([ta, tb], (x, y) => ops.matmul(x!, y!, { transposeB: transB, dtype: dt.out }));
  ta.dispose();
  tb.dispose();
  const held = (d: FloatDType, x: Float32Array) => (d === 'f32' ? x : roundTo(d, x));
  const scale = errorScale(held(dt.a, a), held(dt.b, b), c, transB);
  const rounding = dt.out === 'bf16' ? 2 ** -8 : dt.out === 'f16' ? 2 ** -11 : 0;
  let worst = 0;
  for (let i = 0; i < cpu.length; i++) {
    const allowed = 2e-5 * scale[i]! + 2 * rounding * Math.abs(cpu[i]!) + 1e-30;
    worst = Math.max(worst, Math.abs(cuda[i]! - cpu[i]!) / allowed);
  }
  expect(cuda.length).toBe(cpu.length);
  expect(worst).toBeLessThanOrEqual(1);
}

const name = (c: Case) => `[${c.batch}] ${c.m}x${c.k} @ ${c.k}x${c.n}${c.broadcastB ? '' : ' batched B'}`;

const shapes: Case[] = [
  { batch: 1, m: 1, n: 1, k: 1, broadcastB: true },
  { batch: 1, m: 1, n: 7, k: 3, broadcastB: true },
  { batch: 1, m: 1, n: 130, k: 257, broadcastB: true },
  { batch: 1, m: 2, n: 300, k: 256, broadcastB: true },
  { batch: 1, m: 3, n: 5, k: 17, broadcastB: true },
  { batch: 1, m: 2, n: 1100, k: 33, broadcastB: true },
  { batch: 1, m: 4, n: 70, k: 1000, broadcastB: true },
  { batch: 1, m: 5, n: 1, k: 9, broadcastB: true },
  { batch: 1, m: 7, n: 19, k: 1, broadcastB: true },
  { batch: 1, m: 13, n: 37, k: 300, broadcastB: true },
  { batch: 1, m: 64, n: 64, k: 64, broadcastB: true },
  { batch: 1, m: 130, n: 200, k: 513, broadcastB: true },
  { batch: 1, m: 1537, n: 1409, k: 37, broadcastB: true }, // 13 x 12 tiles of 128: the big config
  { batch: 3, m: 2, n: 9, k: 11, broadcastB: true },
  { batch: 3, m: 2, n: 9, k: 11, broadcastB: false },
  { batch: 2, m: 6, n: 17, k: 40, broadcastB: true },
  { batch: 2, m: 6, n: 17, k: 40, broadcastB: false },
  { batch: 4, m: 1, n: 65, k: 128, broadcastB: false },
  { batch: 3, m: 70, n: 90, k: 50, broadcastB: false },
];

describe.skipIf(!hasCuda)('matmul (CUDA vs CPU)', () => {
  for (const transB of [false, true]) {
    describe(`f32, ${transB ? 'transposeB' : 'plain B'}`, () => {
      shapes.forEach((c, i) => {
        it(name(c), () => check(c, transB, { a: 'f32', b: 'f32', out: 'f32' }, 200 + i));
      });
    });
  }

  const mixed: Case[] = [
    { batch: 1, m: 3, n: 37, k: 48, broadcastB: true },
    { batch: 1, m: 4, n: 37, k: 45, broadcastB: true },
    { batch: 2, m: 11, n: 35, k: 270, broadcastB: false },
  ];
  const dtypes = ['f32', 'f16', 'bf16'] as const;
  for (const a of dtypes) {
    for (const b of dtypes) {
      for (const out of dtypes) {
        for (const transB of [false, true]) {
          for (const c of mixed) {
            it(`A ${a}, B ${b}, C ${out}, ${transB ? 'transposeB' : 'plain B'} ${name(c)}`, () =>
              check(c, transB, { a, b, out }, 9));
          }
        }
      }
    }
  }

  it('k = 0 gives zeros', async () => {
    for (const m of [1, 6]) {
      const c = ops.matmul(Tensor.zeros([m, 0], { device: 'cuda' }), Tensor.zeros([0, 5], { device: 'cuda' }));
      expect(Array.from(await c.toArray())).toEqual(new Array(m * 5).fill(0));
    }
  });

  // Identity products are exact, so they pin the 16-bit widening bit for bit on every path
  // (rows of 16 elements take the GEMV's 16-byte loads).
  for (const dtype of ['f16', 'bf16'] as const) {
    it(`widens every finite ${dtype} value exactly as the CPU does`, async () => {
      const W = 16;
      const bits: number[] = [];
      for (let h = 0; h < 0x10000; h++) {
        const exp = dtype === 'f16' ? (h >> 10) & 0x1f : (h >> 7) & 0xff;
        if (exp !== (dtype === 'f16' ? 0x1f : 0xff)) bits.push(h);
      }
      while (bits.length % W !== 0) bits.push(0);
      const n = bits.length / W;
      const identity = (rows: number) => {
        const e = new Float32Array(rows * W);
        for (let i = 0; i < rows; i++) e[i * W + i] = 1;
        return Tensor.from(e, { shape: [rows, W] });
      };
      const plain = Tensor.from(Uint16Array.from(bits), { shape: [W, n], dtype });
      const trans = Tensor.from(Uint16Array.from(bits), { shape: [n, W], dtype });
      for (const rows of [4, W]) {
        const id = identity(rows);
        for (const [x, y, transposeB] of [[id, plain, false], [id, trans, true], [trans, id, true]] as const) {
          const { cpu, cuda } = await onBoth([x, y], (p, q) => ops.matmul(p!, q!, { transposeB }));
          let bad = 0;
          for (let i = 0; i < cpu.length; i++) if (cuda[i] !== cpu[i]) bad++;
          expect(bad).toBe(0);
        }
      }
    });
  }
});
