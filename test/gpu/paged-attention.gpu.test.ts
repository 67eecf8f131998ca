// pagedAttention on CUDA against its CPU twin (which test/ops checks against float64): outputs
// and the scores (attnSum, kvAttnSum, rangeMass), over prefill, decode (including the
// split-over-slots path), GQA, every head size the CUDA kernel has a variant for, every pool
// dtype, holes and sliding windows.
import { describe, expect, it } from 'vitest';

import { type SlotRange, Tensor, ops } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { rand, rng } from '../support/random.js';
import { hasCuda } from './gpu.js';

type FloatDType = 'f32' | 'f16' | 'bf16';

interface Setup {
  heads: number;
  kvHeads: number;
  d: number;
  seqs: { queries: number; kvLength: number }[];
  kvDtype?: FloatDType;
  qDtype?: FloatDType;
  pageSize?: number;
  seed: number;
}

/** Inputs on the CPU: pools with shuffled, non-contiguous page tables (and two unused pages). */
function inputs(s: Setup) {
  const pageSize = s.pageSize ?? 16;
  const needs = s.seqs.map((q) => Math.ceil(q.kvLength / pageSize));
  const numPages = needs.reduce((a, b) => a + b, 0) + 2;
  const order = Array.from({ length: numPages }, (_, i) => i);
  const r = rng(s.seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  let next = 0;
  const sequences = s.seqs.map((q, i) => ({ ...q, pages: order.slice(next, (next += needs[i]!)) }));
  const totalQ = s.seqs.reduce((a, q) => a + q.queries, 0);
  const poolShape = [numPages, pageSize, s.kvHeads, s.d];
  const poolSize = numPages * pageSize * s.kvHeads * s.d;
  return {
    sequences,
    q: Tensor.from(rand(totalQ * s.heads * s.d, s.seed + 1), { shape: [totalQ, s.heads, s.d], dtype: s.qDtype ?? 'f32' }),
    kPool: Tensor.from(rand(poolSize, s.seed + 2, 2), { shape: poolShape, dtype: s.kvDtype ?? 'f32' }),
    vPool: Tensor.from(rand(poolSize, s.seed + 3), { shape: poolShape, dtype: s.kvDtype ?? 'f32' }),
  };
}

interface Options {
  visible?: Int32Array;
  attnSum?: boolean;
  kvAttnSum?: boolean;
  rangeMass?: readonly SlotRange[] | readonly (readonly SlotRange[])[];
  window?: number;
  scoreDecay?: number | readonly number[];
  scoreRows?: number | readonly number[];
}

async function both(
  s: Setup,
  options: Options = {},
  // Sequences over stored documents: a value page table and rows per page, from the key pages.
  stored?: (pages: number[], i: number) => { valuePages: number[]; pageRows: number[] },
) {
  const x = inputs(s);
  const sequences = stored ? x.sequences.map((q, i) => ({ ...q, ...stored(q.pages, i) })) : x.sequences;
  const res = [];
  const read = async (t: Tensor | undefined) => (t ? ((await t.toArray()) as Float32Array) : undefined);
  for (const device of ['cpu', 'cuda'] as const) {
    const r = ops.pagedAttention(x.q.to(device), x.kPool.to(device), x.vPool.to(device), { sequences, ...options });
    res.push({
      out: (await r.out.toArray()) as Float32Array,
      attnSum: await read(r.attnSum),
      kvAttnSum: await read(r.kvAttnSum),
      rangeMass: await read(r.rangeMass),
    });
  }
  return { cpu: res[0]!, cuda: res[1]! };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

// Both sides compute in f32 with different summation orders (and expf vs a 1-ulp polynomial):
// outputs, convex combinations of values in [-1, 1], agree to a few f32 ulps of the scores.
const F32_TOL = 5e-6;
const mixed = [
  { queries: 21, kvLength: 21 },
  { queries: 1, kvLength: 53 },
  { queries: 16, kvLength: 100 },
  { queries: 3, kvLength: 48 },
];

describe.skipIf(!hasCuda)('pagedAttention (CUDA vs CPU)', () => {
  for (const d of [16, 64, 96, 128, 256]) {
    for (const [heads, kvHeads] of [[4, 4], [8, 2], [4, 1]] as const) {
      for (const kvDtype of ['f32', 'f16', 'bf16'] as const) {
        it(`mixed batch, ${heads}/${kvHeads} heads, d=${d}, ${kvDtype} pools`, async () => {
          const { cpu, cuda } = await both({ heads, kvHeads, d, seqs: mixed, kvDtype, seed: d + heads });
          expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
        });
      }
    }
  }

  it('decode over long caches (the split-over-slots path) for a batch of sequences', async () => {
    const seqs = [4096, 1, 777, 2048].map((kvLength) => ({ queries: 1, kvLength }));
    const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs, kvDtype: 'bf16', seed: 5 });
    expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
  });

  it('a 512-token prefill over 512 cached tokens', async () => {
    const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs: [{ queries: 512, kvLength: 1024 }], seed: 6 });
    expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
  });

  for (const dtype of ['f16', 'bf16'] as const) {
    it(`${dtype} queries and outputs agree within one ${dtype} rounding`, async () => {
      const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 64, seqs: mixed, qDtype: dtype, kvDtype: dtype, seed: 7 });
      const ulp = dtype === 'bf16' ? 2 ** -7 : 2 ** -10;
      for (let i = 0; i < cpu.out.length; i++) expect(Math.abs(cuda.out[i]! - cpu.out[i]!)).toBeLessThanOrEqual(Math.abs(cpu.out[i]!) * ulp + F32_TOL);
    });
  }

  it('attnSum, custom visibility and rows that see nothing', async () => {
    const seqs = [...mixed, { queries: 40, kvLength: 600 }, { queries: 1, kvLength: 3000 }];
    const r = rng(8);
    const visible: number[] = [];
    for (const s of seqs) for (let i = 0; i < s.queries; i++) visible.push(Math.floor(r() * (s.kvLength + 1)));
    visible[0] = 0;
    visible[21] = 0;
    for (const [heads, kvHeads, d] of [[8, 2, 128], [4, 4, 64], [2, 1, 256]] as const) {
      const { cpu, cuda } = await both({ heads, kvHeads, d, seqs, seed: 9 + d }, { visible: Int32Array.from(visible), attnSum: true });
      expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
      // A column sums up to 40 probabilities.
      expect(maxAbsDiff(cuda.attnSum!, cpu.attnSum!)).toBeLessThan(40 * F32_TOL);
      expect(cuda.out.subarray(0, heads * d).every((x) => x === 0)).toBe(true);
    }
  });

  it('value page tables and holes (sequences over stored documents), prefill and split decode, with attnSum', async () => {
    const seqs = [...mixed, { queries: 1, kvLength: 3000 }];
    const stored = (pages: number[]) => ({
      valuePages: [...pages].reverse(),
      pageRows: pages.map((_, i) => (i === pages.length - 1 ? 16 : [16, 5, 0, 11][i % 4]!)),
    });
    for (const kvDtype of ['f32', 'bf16'] as const) {
      const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs, kvDtype, seed: 13 }, { attnSum: true }, stored);
      expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(cuda.attnSum!, cpu.attnSum!)).toBeLessThan(21 * F32_TOL);
    }
  });

  it('attnSum of decode steps (the split path hands the final max and sum to the second pass)', async () => {
    const seqs = [5000, 300].map((kvLength) => ({ queries: 1, kvLength }));
    const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs, seed: 11 }, { attnSum: true });
    expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(cuda.attnSum!, cpu.attnSum!)).toBeLessThan(F32_TOL);
  });

  it('never reads outside the pool for a bad page id (skipped on CUDA; the CPU rejects it)', async () => {
    const [heads, kvHeads, d, pageSize, numPages] = [2, 1, 16, 16, 4];
    const dev = (x: Float32Array | Int32Array, shape?: number[]) => Tensor.from(x, { device: 'cuda', ...(shape ? { shape } : {}) });
    const out = Tensor.empty([1, heads, d], { device: 'cuda' });
    const pool = rand(numPages * pageSize * kvHeads * d, 2);
    const idx = [[0, 1], [20], [0, 2], [3, 1 << 30], [20]].map((a) => dev(Int32Array.from(a)));
    const [qs, kl, ts, pt, vis] = idx.map((t) => t.handle());
    native().ops.pagedAttention(
      dev(rand(heads * d, 1), [1, heads, d]).handle(), dev(pool, [numPages, pageSize, kvHeads, d]).handle(),
      dev(pool, [numPages, pageSize, kvHeads, d]).handle(), out.handle(), qs!, kl!, ts!, pt!, vis!, null,
      { heads, kvHeads, headDim: d, pageSize, numPages, seqs: 1, totalQ: 1, maxKv: 20, scale: 0.25 },
    );
    const got = (await out.toArray()) as Float32Array;
    expect(got.every((x) => Number.isFinite(x))).toBe(true);
  });

  // Sliding window (HF: a query at position i sees keys at positions > i - window): the warps,
  // the decode split and attnSum all cover only [visible - window, visible).
  for (const window of [1, 8, 100, 4096]) {
    it(`sliding window ${window}: mixed batch with attnSum, and long decodes on the split path`, async () => {
      const seqs = [...mixed, { queries: 40, kvLength: 600 }];
      const a = await both({ heads: 8, kvHeads: 2, d: 128, seqs, kvDtype: 'bf16', seed: 20 + window }, { window, attnSum: true });
      expect(maxAbsDiff(a.cuda.out, a.cpu.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(a.cuda.attnSum!, a.cpu.attnSum!)).toBeLessThan(40 * F32_TOL);
      const decode = [5000, 300, 1].map((kvLength) => ({ queries: 1, kvLength }));
      const b = await both({ heads: 8, kvHeads: 2, d: 64, seqs: decode, seed: 30 + window }, { window, attnSum: true });
      expect(maxAbsDiff(b.cuda.out, b.cpu.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(b.cuda.attnSum!, b.cpu.attnSum!)).toBeLessThan(F32_TOL);
    });
  }

  it('sliding window with a custom visible per row', async () => {
    const r = rng(40);
    const visible: number[] = [];
    for (const s of mixed) for (let i = 0; i < s.queries; i++) visible.push(Math.floor(r() * (s.kvLength + 1)));
    const { cpu, cuda } = await both({ heads: 4, kvHeads: 4, d: 64, seqs: mixed, seed: 41 }, { visible: Int32Array.from(visible), window: 7 });
    expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
  });

  it('attnSum of a causal prefill with the default visibility', async () => {
    const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs: [{ queries: 300, kvLength: 700 }, { queries: 1, kvLength: 5000 }], seed: 10 }, { attnSum: true });
    expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(cuda.attnSum!, cpu.attnSum!)).toBeLessThan(300 * F32_TOL);
  });
});

/** Ranges that cut [0, kvLength) into consecutive pieces at the given lengths (the last takes the rest). */
function cover(kvLength: number, lengths: number[]): SlotRange[] {
  const out: SlotRange[] = [];
  let b = 0;
  for (const n of lengths) {
    if (b >= kvLength) break;
    out.push([b, Math.min(kvLength, b + n)]);
    b += n;
  }
  if (b < kvLength) out.push([b, kvLength]);
  return out;
}

/** Largest |1 - sum of a row's masses| over the rows and heads that see a slot (mass list R long, all covering). */
function coverError(mass: Float32Array, R: number): number {
  let worst = 0;
  for (let th = 0; th < mass.length / R; th++) {
    let sum = 0;
    for (let r = 0; r < R; r++) sum += mass[th * R + r]!;
    if (sum !== 0) worst = Math.max(worst, Math.abs(sum - 1));
  }
  return worst;
}

describe.skipIf(!hasCuda)('pagedAttention scores (CUDA vs CPU): rangeMass and kvAttnSum', () => {
  // Masses are sums of probabilities within one row: f32 accuracy, like the outputs.
  for (const d of [16, 64, 128, 256]) {
    for (const [heads, kvHeads] of [[4, 4], [8, 2], [4, 1]] as const) {
      it(`rangeMass over a mixed batch, ${heads}/${kvHeads} heads, d=${d}`, async () => {
        const seqs = [...mixed, { queries: 40, kvLength: 600 }];
        const rangeMass = seqs.map((q) => cover(q.kvLength, [5, 17, 3, 30, 11, 100]));
        const { cpu, cuda } = await both({ heads, kvHeads, d, seqs, kvDtype: 'bf16', seed: 50 + d + heads }, { rangeMass });
        expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
        expect(maxAbsDiff(cuda.rangeMass!, cpu.rangeMass!)).toBeLessThan(F32_TOL);
        expect(coverError(cuda.rangeMass!, 7)).toBeLessThan(2e-6);
      });
    }
  }

  it('rangeMass of long decodes (the split path merges the masses), many ranges (lanes own several each)', async () => {
    const seqs = [4096, 1, 777, 2048].map((kvLength) => ({ queries: 1, kvLength }));
    const rangeMass = seqs.map((q) => cover(q.kvLength, Array.from({ length: 99 }, (_, i) => 1 + ((i * 37) % 61))));
    const R = Math.max(...rangeMass.map((l) => l.length));
    expect(R).toBeGreaterThan(64);
    const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs, seed: 60 }, { rangeMass });
    expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(cuda.rangeMass!, cpu.rangeMass!)).toBeLessThan(F32_TOL);
    expect(coverError(cuda.rangeMass!, R)).toBeLessThan(2e-6);
  });

  it('rangeMass with overlapping ranges, custom visibility and rows that see nothing', async () => {
    const seqs = [...mixed, { queries: 1, kvLength: 3000 }];
    const r = rng(61);
    const visible: number[] = [];
    for (const s of seqs) for (let i = 0; i < s.queries; i++) visible.push(Math.floor(r() * (s.kvLength + 1)));
    visible[0] = 0;
    visible[21] = 0;
    const rangeMass: SlotRange[] = [[0, 16], [10, 40], [7, 7], [0, 5000], [50, 60], [2999, 3000], [4000, 5000]];
    const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 64, seqs, seed: 62 }, { visible: Int32Array.from(visible), rangeMass });
    expect(maxAbsDiff(cuda.rangeMass!, cpu.rangeMass!)).toBeLessThan(F32_TOL);
    expect(cuda.rangeMass!.subarray(0, 8 * 7).every((x) => x === 0)).toBe(true);
  });

  it('rangeMass and kvAttnSum over value page tables and holes, prefill and split decode', async () => {
    const seqs = [...mixed, { queries: 1, kvLength: 3000 }];
    const stored = (pages: number[]) => ({
      valuePages: [...pages].reverse(),
      pageRows: pages.map((_, i) => (i === pages.length - 1 ? 16 : [16, 5, 0, 11][i % 4]!)),
    });
    const rangeMass = seqs.map((q) => cover(q.kvLength, [16, 16, 16, 16, 21, 9]));
    for (const kvDtype of ['f32', 'f16'] as const) {
      const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs, kvDtype, seed: 63 }, { rangeMass, kvAttnSum: true }, stored);
      expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(cuda.rangeMass!, cpu.rangeMass!)).toBeLessThan(F32_TOL);
      expect(coverError(cuda.rangeMass!, 7)).toBeLessThan(2e-6);
      // A column sums up to 21 rows x 4 heads.
      expect(maxAbsDiff(cuda.kvAttnSum!, cpu.kvAttnSum!)).toBeLessThan(4 * 21 * F32_TOL);
    }
  });

  for (const window of [1, 100]) {
    it(`sliding window ${window}: rangeMass, attnSum and kvAttnSum, prefill and long decodes`, async () => {
      const seqs = [...mixed, { queries: 40, kvLength: 600 }, { queries: 1, kvLength: 5000 }];
      const rangeMass = seqs.map((q) => cover(q.kvLength, [9, 9, 9, 9, 9, 300]));
      const { cpu, cuda } = await both({ heads: 8, kvHeads: 2, d: 128, seqs, kvDtype: 'bf16', seed: 64 + window }, { window, rangeMass, attnSum: true, kvAttnSum: true });
      expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(cuda.rangeMass!, cpu.rangeMass!)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(cuda.attnSum!, cpu.attnSum!)).toBeLessThan(40 * F32_TOL);
      expect(maxAbsDiff(cuda.kvAttnSum!, cpu.kvAttnSum!)).toBeLessThan(4 * 40 * F32_TOL);
    });
  }

  for (const [heads, kvHeads, d] of [[8, 2, 128], [4, 4, 64], [4, 1, 32], [2, 1, 256]] as const) {
    it(`kvAttnSum is attnSum summed over each group (${heads}/${kvHeads} heads, d=${d}), prefill and decode`, async () => {
      const seqs = [{ queries: 300, kvLength: 700 }, { queries: 1, kvLength: 5000 }, ...mixed];
      const { cpu, cuda } = await both({ heads, kvHeads, d, seqs, seed: 70 + d }, { attnSum: true, kvAttnSum: true });
      expect(maxAbsDiff(cuda.attnSum!, cpu.attnSum!)).toBeLessThan(300 * F32_TOL);
      expect(maxAbsDiff(cuda.kvAttnSum!, cpu.kvAttnSum!)).toBeLessThan((heads / kvHeads) * 300 * F32_TOL);
      // Every query row puts one unit per head: the kv columns of a sequence add up to rows x group.
      const maxKv = 5000;
      seqs.forEach((q, si) => {
        for (let g = 0; g < kvHeads; g++) {
          let total = 0;
          for (let j = 0; j < maxKv; j++) total += cuda.kvAttnSum![(si * kvHeads + g) * maxKv + j]!;
          expect(total).toBeCloseTo(q.queries * (heads / kvHeads), 2);
        }
      });
    });
  }

  it('rangeMass is deterministic, and leaves the output bitwise as without it', async () => {
    const seqs = [...mixed, { queries: 1, kvLength: 3000 }];
    const rangeMass = seqs.map((q) => cover(q.kvLength, [7, 70, 700]));
    const plain = await both({ heads: 8, kvHeads: 2, d: 128, seqs, seed: 75 });
    const a = await both({ heads: 8, kvHeads: 2, d: 128, seqs, seed: 75 }, { rangeMass, attnSum: true, kvAttnSum: true });
    const b = await both({ heads: 8, kvHeads: 2, d: 128, seqs, seed: 75 }, { rangeMass, attnSum: true, kvAttnSum: true });
    expect(a.cuda.out).toEqual(plain.cuda.out);
    expect(b.cuda.rangeMass).toEqual(a.cuda.rangeMass);
    expect(b.cuda.kvAttnSum).toEqual(a.cuda.kvAttnSum);
  });

  it('rejects more ranges than the kernel keeps in shared memory', async () => {
    const x = inputs({ heads: 2, kvHeads: 1, d: 16, seqs: [{ queries: 1, kvLength: 4 }], seed: 76 });
    const rangeMass = Array.from({ length: 2049 }, (): SlotRange => [0, 1]);
    const r = ops.pagedAttention(x.q.to('cuda'), x.kPool.to('cuda'), x.vPool.to('cuda'), { sequences: x.sequences, rangeMass });
    await expect(r.out.toArray()).rejects.toThrow(/at most 2048/);
  });
});

// scoreDecay (the Cascading KV cache's EMA scores): the column sums weighted by row age, beta^(q-1-i)
// on cached slots and beta^(i-(j-c0)) on the chunk's own (test/ops checks the CPU against float64).
describe.skipIf(!hasCuda)('pagedAttention scoreDecay (CUDA vs CPU)', () => {
  for (const [heads, kvHeads, d] of [[8, 2, 128], [4, 4, 64], [4, 1, 32], [2, 1, 256]] as const) {
    it(`attnSum and kvAttnSum of prefill chunks, a fresh prefill and decodes, one beta each (${heads}/${kvHeads} heads, d=${d})`, async () => {
      const seqs = [{ queries: 300, kvLength: 700 }, { queries: 1, kvLength: 5000 }, ...mixed];
      const scoreDecay = [0.99, 0.5, 0.8, 0.3, 0.9, 1];
      const { cpu, cuda } = await both({ heads, kvHeads, d, seqs, kvDtype: 'bf16', seed: 80 + d }, { attnSum: true, kvAttnSum: true, scoreDecay });
      expect(maxAbsDiff(cuda.out, cpu.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(cuda.attnSum!, cpu.attnSum!)).toBeLessThan(300 * F32_TOL);
      expect(maxAbsDiff(cuda.kvAttnSum!, cpu.kvAttnSum!)).toBeLessThan((heads / kvHeads) * 300 * F32_TOL);
      // The weights are applied: the 300-row chunk's columns are far from the plain sums.
      const plain = await both({ heads, kvHeads, d, seqs, kvDtype: 'bf16', seed: 80 + d }, { attnSum: true, kvAttnSum: true });
      expect(maxAbsDiff(cuda.attnSum!.subarray(0, heads * 5000), plain.cuda.attnSum!.subarray(0, heads * 5000))).toBeGreaterThan(1e-2);
      expect(cuda.out).toEqual(plain.cuda.out);
    });
  }

  it('decode rows (q = 1, the split path) and beta = 1 are the plain sums, bit for bit', async () => {
    const decode = [5000, 300, 1].map((kvLength) => ({ queries: 1, kvLength }));
    const a = await both({ heads: 8, kvHeads: 2, d: 128, seqs: decode, seed: 90 }, { attnSum: true, kvAttnSum: true, scoreDecay: [0.5, 0.1, 0.9] });
    const plainA = await both({ heads: 8, kvHeads: 2, d: 128, seqs: decode, seed: 90 }, { attnSum: true, kvAttnSum: true });
    expect(a.cuda.attnSum).toEqual(plainA.cuda.attnSum);
    expect(a.cuda.kvAttnSum).toEqual(plainA.cuda.kvAttnSum);
    expect(maxAbsDiff(a.cuda.kvAttnSum!, a.cpu.kvAttnSum!)).toBeLessThan(4 * F32_TOL);
    const seqs = [...mixed, { queries: 40, kvLength: 600 }];
    const b = await both({ heads: 8, kvHeads: 2, d: 64, seqs, seed: 91 }, { attnSum: true, kvAttnSum: true, scoreDecay: 1 });
    const plainB = await both({ heads: 8, kvHeads: 2, d: 64, seqs, seed: 91 }, { attnSum: true, kvAttnSum: true });
    expect(b.cuda.attnSum).toEqual(plainB.cuda.attnSum);
    expect(b.cuda.kvAttnSum).toEqual(plainB.cuda.kvAttnSum);
  });

  it('with a sliding window, holes and value page tables, and a custom visible', async () => {
    const seqs = [...mixed, { queries: 40, kvLength: 600 }, { queries: 1, kvLength: 3000 }];
    const stored = (pages: number[]) => ({
      valuePages: [...pages].reverse(),
      pageRows: pages.map((_, i) => (i === pages.length - 1 ? 16 : [16, 5, 0, 11][i % 4]!)),
    });
    const scoreDecay = [0.6, 0.7, 0.8, 0.9, 0.95, 0.5];
    const a = await both({ heads: 8, kvHeads: 2, d: 128, seqs, kvDtype: 'f16', seed: 92 }, { window: 100, attnSum: true, kvAttnSum: true, scoreDecay }, stored);
    expect(maxAbsDiff(a.cuda.out, a.cpu.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(a.cuda.attnSum!, a.cpu.attnSum!)).toBeLessThan(40 * F32_TOL);
    expect(maxAbsDiff(a.cuda.kvAttnSum!, a.cpu.kvAttnSum!)).toBeLessThan(4 * 40 * F32_TOL);
    // Chunks whose first row sees less than the whole cache (slots past the chunk unseen).
    const chunks = [{ queries: 8, kvLength: 64 }, { queries: 37, kvLength: 400 }];
    const visible = Int32Array.from([...Array.from({ length: 8 }, (_, i) => 41 + i), ...Array.from({ length: 37 }, (_, i) => 201 + i)]);
    const b = await both({ heads: 4, kvHeads: 2, d: 64, seqs: chunks, seed: 93 }, { visible, attnSum: true, kvAttnSum: true, scoreDecay: [0.7, 0.4] });
    expect(maxAbsDiff(b.cuda.attnSum!, b.cpu.attnSum!)).toBeLessThan(40 * F32_TOL);
    expect(maxAbsDiff(b.cuda.kvAttnSum!, b.cpu.kvAttnSum!)).toBeLessThan(2 * 40 * F32_TOL);
  });
});

// scoreRows (SnapKV's observation window): only each sequence's last n rows add into the sums.
describe.skipIf(!hasCuda)('pagedAttention scoreRows (CUDA vs CPU)', () => {
  for (const [heads, kvHeads, d] of [[8, 2, 128], [4, 4, 64]] as const) {
    it(`the last rows of a prefill, a short chunk and decodes, with and without decay (${heads}/${kvHeads} heads, d=${d})`, async () => {
      const seqs = [{ queries: 300, kvLength: 700 }, { queries: 1, kvLength: 5000 }, ...mixed];
      const setup = { heads, kvHeads, d, seqs, kvDtype: 'bf16' as const, seed: 120 + d };
      const a = await both(setup, { attnSum: true, kvAttnSum: true, scoreRows: 32 });
      expect(maxAbsDiff(a.cuda.attnSum!, a.cpu.attnSum!)).toBeLessThan(40 * F32_TOL);
      expect(maxAbsDiff(a.cuda.kvAttnSum!, a.cpu.kvAttnSum!)).toBeLessThan((heads / kvHeads) * 40 * F32_TOL);
      const plain = await both(setup, { attnSum: true, kvAttnSum: true });
      expect(maxAbsDiff(a.cuda.attnSum!.subarray(0, heads * 5000), plain.cuda.attnSum!.subarray(0, heads * 5000))).toBeGreaterThan(1e-2);
      const b = await both(setup, { attnSum: true, scoreRows: [16, 1, 4, 1, 16, 2], scoreDecay: 0.9 });
      expect(maxAbsDiff(b.cuda.attnSum!, b.cpu.attnSum!)).toBeLessThan(20 * F32_TOL);
    });
  }
});
