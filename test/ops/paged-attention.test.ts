// pagedAttention: softmax attention over a paged KV cache equals plain dense attention over the
// gathered slots, computed here in float64.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, type SlotRange, Tensor, ops } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { rand, rng, roundTo } from '../support/random.js';

type FloatDType = 'f32' | 'f16' | 'bf16';

interface SeqSpec {
  queries: number;
  kvLength: number;
  /** Pages in the table beyond those kvLength needs (allocated, not yet written). */
  sparePages?: number;
}

interface Case {
  heads: number;
  kvHeads: number;
  d: number;
  pageSize: number;
  numPages: number;
  sequences: { queries: number; kvLength: number; pages: number[]; valuePages?: number[]; pageRows?: number[] }[];
  q: Float32Array; // values as stored (already rounded to qDtype)
  k: Float32Array; // pool contents as stored
  v: Float32Array;
  qDtype: FloatDType;
  kvDtype: FloatDType;
}

function stored(dtype: FloatDType, x: Float32Array): Float32Array {
  return dtype === 'f32' ? x : roundTo(dtype, x);
}

/**
 * Random inputs: each sequence's pages are drawn from a shuffled pool (so a table is neither
 * contiguous nor ordered), two pool pages are left to no sequence, and values are rounded to
 * their storage dtypes first so that the reference sees what the kernel sees.
 */
function makeCase(opts: {
  heads: number;
  kvHeads: number;
  d: number;
  seqs: SeqSpec[];
  pageSize?: number;
  qDtype?: FloatDType;
  kvDtype?: FloatDType;
  seed: number;
}): Case {
  const { heads, kvHeads, d, seed } = opts;
  const pageSize = opts.pageSize ?? 16;
  const qDtype = opts.qDtype ?? 'f32';
  const kvDtype = opts.kvDtype ?? 'f32';
  const needs = opts.seqs.map((s) => Math.ceil(s.kvLength / pageSize) + (s.sparePages ?? 0));
  const numPages = needs.reduce((a, b) => a + b, 0) + 2;
  const order = Array.from({ length: numPages }, (_, i) => i);
  const r = rng(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  let next = 0;
  const sequences = opts.seqs.map((s, i) => ({ queries: s.queries, kvLength: s.kvLength, pages: order.slice(next, (next += needs[i]!)) }));
  const totalQ = opts.seqs.reduce((a, s) => a + s.queries, 0);
  const poolSize = numPages * pageSize * kvHeads * d;
  return {
    heads, kvHeads, d, pageSize, numPages, sequences, qDtype, kvDtype,
    q: stored(qDtype, rand(totalQ * heads * d, seed + 1)),
    // Keys scaled so that scores spread over a few units: softmax is neither flat nor one-hot.
    k: stored(kvDtype, rand(poolSize, seed + 2, 2)),
    v: stored(kvDtype, rand(poolSize, seed + 3)),
  };
}

/** Default visibility: the queries are the newest slots of their sequence's cache. */
function causalVisible(c: Case): Int32Array {
  const out: number[] = [];
  for (const s of c.sequences) for (let r = 0; r < s.queries; r++) out.push(s.kvLength - s.queries + r + 1);
  return Int32Array.from(out);
}

/**
 * float64 dense attention over each row's visible slots, gathered through the page tables; with a
 * window, only the last `window` of them (slots j >= visible - window). With the scores: the
 * probabilities summed over rows per head (attnSum) and per kv head (kvAttnSum), and each row's
 * mass over each of its sequence's ranges (rangeMass, R = the longest list). With betas (one per
 * sequence, scoreDecay), attnSum and kvAttnSum weigh row i of the sequence's q rows by row age:
 * beta^(q-1-i) on a cached slot j < c0 and beta^(i-(j-c0)) on the chunk's own slot j >= c0, with
 * c0 = visible[first row] - 1 (paged_attention.h, col_log_decay).
 */
function reference(
  c: Case,
  visible: Int32Array,
  scale: number,
  window = Infinity,
  ranges: readonly (readonly SlotRange[])[] = [],
  betas: readonly number[] = [],
  lastRows: readonly number[] = [],
): { out: Float64Array; attnSum: Float64Array; kvAttnSum: Float64Array; rangeMass: Float64Array; maxKv: number } {
  const { heads, kvHeads, d, pageSize } = c;
  const group = heads / kvHeads;
  const maxKv = Math.max(0, ...c.sequences.map((s) => s.kvLength));
  const totalQ = visible.length;
  const out = new Float64Array(totalQ * heads * d);
  const attnSum = new Float64Array(c.sequences.length * heads * maxKv);
  const kvAttnSum = new Float64Array(c.sequences.length * kvHeads * maxKv);
  const R = Math.max(0, ...ranges.map((l) => l.length));
  const rangeMass = new Float64Array(totalQ * heads * R);
  let t = 0;
  c.sequences.forEach((s, si) => {
    const beta = betas[si] ?? 1;
    const c0 = visible[t]! - 1; // the slot of the sequence's first query token
    for (let r = 0; r < s.queries; r++, t++) {
      const vis = visible[t]!;
      const first = Math.max(0, vis - window);
      for (let h = 0; h < heads; h++) {
        const kvh = Math.floor(h / group);
        const rowOf = (j: number, pages = s.pages) => ((pages[Math.floor(j / pageSize)]! * pageSize + (j % pageSize)) * kvHeads + kvh) * d;
        // Holes (rows past pageRows of their page) hold no token: weight 0.
        const hole = (j: number) => s.pageRows !== undefined && j % pageSize >= s.pageRows[Math.floor(j / pageSize)]!;
        const scores = new Float64Array(vis);
        let max = -Infinity;
        for (let j = first; j < vis; j++) {
          if (hole(j)) {
            scores[j] = -Infinity;
            continue;
          }
          const kb = rowOf(j);
          let dot = 0;
          for (let i = 0; i < d; i++) dot += c.q[(t * heads + h) * d + i]! * c.k[kb + i]!;
          scores[j] = dot * scale;
          max = Math.max(max, scores[j]!);
        }
        let sum = 0;
        for (let j = first; j < vis; j++) sum += (scores[j] = Math.exp(scores[j]! - max));
        for (let j = first; j < vis; j++) {
          const p = scores[j]! / sum;
          if (p === 0 && hole(j)) continue;
          const vb = rowOf(j, s.valuePages ?? s.pages);
          const ob = (t * heads + h) * d;
          for (let i = 0; i < d; i++) out[ob + i] = out[ob + i]! + p * c.v[vb + i]!;
          // scoreRows: only the sequence's last n rows count in the sums.
          const counted = lastRows[si] === undefined || r >= s.queries - lastRows[si]!;
          const w = counted ? beta ** (j < c0 ? s.queries - 1 - r : r - (j - c0)) : 0;
          const col = (si * heads + h) * maxKv + j;
          attnSum[col] = attnSum[col]! + w * p;
          const kvCol = (si * kvHeads + kvh) * maxKv + j;
          kvAttnSum[kvCol] = kvAttnSum[kvCol]! + w * p;
          (ranges[si] ?? []).forEach(([b, e], ri) => {
            if (j >= b && j < e) rangeMass[(t * heads + h) * R + ri] = rangeMass[(t * heads + h) * R + ri]! + p;
          });
        }
      }
    }
  });
  return { out, attnSum, kvAttnSum, rangeMass, maxKv };
}

function tensors(c: Case): { q: Tensor; kPool: Tensor; vPool: Tensor } {
  const totalQ = c.q.length / (c.heads * c.d);
  const poolShape = [c.numPages, c.pageSize, c.kvHeads, c.d];
  return {
    q: Tensor.from(c.q, { shape: [totalQ, c.heads, c.d], dtype: c.qDtype }),
    kPool: Tensor.from(c.k, { shape: poolShape, dtype: c.kvDtype }),
    vPool: Tensor.from(c.v, { shape: poolShape, dtype: c.kvDtype }),
  };
}

interface RunOptions {
  visible?: Int32Array;
  scale?: number;
  attnSum?: boolean;
  kvAttnSum?: boolean;
  window?: number;
  rangeMass?: readonly SlotRange[] | readonly (readonly SlotRange[])[];
  scoreDecay?: number | readonly number[];
  scoreRows?: number | readonly number[];
}

async function run(c: Case, options: RunOptions = {}) {
  const { q, kPool, vPool } = tensors(c);
  const res = ops.pagedAttention(q, kPool, vPool, { sequences: c.sequences, ...options });
  const read = async (t: Tensor | undefined) => (t ? ((await t.toArray()) as Float32Array) : undefined);
  const out = (await res.out.toArray()) as Float32Array;
  const [attnSum, kvAttnSum, rangeMass] = [await read(res.attnSum), await read(res.kvAttnSum), await read(res.rangeMass)];
  for (const t of [q, kPool, vPool, res.out, res.attnSum, res.kvAttnSum, res.rangeMass]) t?.dispose();
  // The reference takes one list per sequence (a shared list is every sequence's).
  const rm = options.rangeMass;
  const perSeq = rm === undefined ? [] : rm.every((x) => typeof x[0] === 'number') ? c.sequences.map(() => rm as readonly SlotRange[]) : (rm as readonly (readonly SlotRange[])[]);
  const sd = options.scoreDecay;
  const betas = sd === undefined ? [] : typeof sd === 'number' ? c.sequences.map(() => sd) : sd;
  const sr = options.scoreRows;
  const lastRows = sr === undefined ? [] : typeof sr === 'number' ? c.sequences.map(() => sr) : sr;
  const want = reference(c, options.visible ?? causalVisible(c), options.scale ?? 1 / Math.sqrt(c.d), options.window, perSeq, betas, lastRows);
  return { out, attnSum, kvAttnSum, rangeMass, want };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

// Outputs are convex combinations of values in [-1, 1], so absolute error is the right scale.
// With inputs exactly representable in every dtype, the kernel's only errors are f32 ones
// (score rounding amplified by the softmax, f32 sums): at most 5.3e-7 over these cases, so 5e-6
// is a 10x margin, and one bf16 or f16 rounding anywhere inside (2^-9, 2^-12) would fail it.
const F32_TOL = 5e-6;

// A batch that mixes every shape of work: a fresh prefill, a decode step, a prefill chunk over a
// cached prefix, a cache that ends exactly on a page boundary, and a table with a spare page.
const mixedBatch: SeqSpec[] = [
  { queries: 21, kvLength: 21 },
  { queries: 1, kvLength: 53 },
  { queries: 16, kvLength: 100, sparePages: 1 },
  { queries: 3, kvLength: 48 },
];

describe('pagedAttention (CPU) vs float64 dense attention', () => {
  const headConfigs: [number, number, string][] = [
    [4, 4, 'MHA'],
    [4, 2, 'GQA group 2'],
    [8, 2, 'GQA group 4'],
    [4, 1, 'MQA'],
  ];
  for (const d of [16, 64, 128]) {
    for (const [heads, kvHeads, name] of headConfigs) {
      for (const kvDtype of ['f32', 'f16', 'bf16'] as const) {
        it(`mixed prefill/decode batch, ${name} (${heads}/${kvHeads} heads), d=${d}, ${kvDtype} pools`, async () => {
          const c = makeCase({ heads, kvHeads, d, seqs: mixedBatch, kvDtype, seed: d * 7 + heads * 3 + kvHeads });
          const { out, want } = await run(c);
          expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
        });
      }
    }
  }

  it('a long decode (the split-over-slots path when threads outnumber rows x kv heads)', async () => {
    const c = makeCase({ heads: 4, kvHeads: 1, d: 64, seqs: [{ queries: 1, kvLength: 3001 }], seed: 11 });
    const { out, want } = await run(c);
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
  });

  it('decode steps of several sequences of different lengths in one batch', async () => {
    const seqs = [700, 1, 33, 256, 257].map((kvLength) => ({ queries: 1, kvLength }));
    const c = makeCase({ heads: 8, kvHeads: 2, d: 128, seqs, kvDtype: 'bf16', seed: 12 });
    const { out, want } = await run(c);
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
  });

  it('works with pages of another size (8 and 1 tokens)', async () => {
    for (const pageSize of [8, 1]) {
      const c = makeCase({ heads: 4, kvHeads: 2, d: 16, pageSize, seqs: mixedBatch, seed: 13 + pageSize });
      const { out, want } = await run(c);
      expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    }
  });

  for (const qDtype of ['f16', 'bf16'] as const) {
    it(`${qDtype} queries give ${qDtype} outputs within one ${qDtype} rounding`, async () => {
      const c = makeCase({ heads: 8, kvHeads: 2, d: 64, seqs: mixedBatch, qDtype, kvDtype: qDtype, seed: 14 });
      const { out, want } = await run(c);
      // One rounding of the output: half an ulp, at most 2^-8 (bf16) or 2^-11 (f16) relative.
      const rel = qDtype === 'bf16' ? 2 ** -8 : 2 ** -11;
      for (let i = 0; i < out.length; i++) expect(Math.abs(out[i]! - want.out[i]!)).toBeLessThanOrEqual(Math.abs(want.out[i]!) * rel + F32_TOL);
    });
  }

  it('uses the given scale', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 64, seqs: mixedBatch, seed: 15 });
    const { out, want } = await run(c, { scale: 0.5 });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    const flat = await run(c, { scale: 0 }); // uniform weights: the mean of the visible values
    expect(maxAbsDiff(flat.out, flat.want.out)).toBeLessThan(F32_TOL);
  });

  it('follows a custom visible per row, and a row that sees no slot gets zeros', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 64, seqs: mixedBatch, seed: 16 });
    const r = rng(17);
    const visible: number[] = [];
    for (const s of c.sequences) for (let i = 0; i < s.queries; i++) visible.push(Math.floor(r() * (s.kvLength + 1)));
    visible[0] = 0; // first row of the first sequence: nothing visible
    visible[21] = 0; // the decode row
    visible[22] = 100; // a prefill row that sees the whole cache
    const vis = Int32Array.from(visible);
    const { out, attnSum, want } = await run(c, { visible: vis, attnSum: true });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    const row = c.heads * c.d;
    for (const t of [0, 21]) expect(Array.from(out.subarray(t * row, (t + 1) * row)).every((x) => x === 0)).toBe(true);
    expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(F32_TOL);
  });
});

describe('pagedAttention over stored documents (value page table, holes) vs float64', () => {
  it('reads values through valuePages and masks the rows past pageRows, in outputs and attnSum', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 32, seqs: [{ queries: 3, kvLength: 64 }, { queries: 1, kvLength: 40 }], seed: 71 });
    // Each sequence's values come from another sequence's pages (any page of the pool will do).
    const [a, b] = c.sequences as [Case['sequences'][0], Case['sequences'][0]];
    a.valuePages = [...a.pages].reverse();
    a.pageRows = [16, 5, 16, 16]; // the prefix's page ends in holes
    b.valuePages = b.pages.map((_, i) => a.pages[i]!);
    b.pageRows = [9, 16, 16];
    const { out, attnSum, want } = await run(c, { attnSum: true });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(F32_TOL);
  });

  it('a block of slots that are all holes is passed over (long decode, split path)', async () => {
    const c = makeCase({ heads: 2, kvHeads: 1, d: 16, seqs: [{ queries: 1, kvLength: 700 }], seed: 72 });
    const s = c.sequences[0]!;
    s.pageRows = s.pages.map((_, i) => (i % 3 === 1 ? 0 : i % 3 === 2 ? 7 : 16));
    s.pageRows[s.pageRows.length - 1] = 16; // the query's own slot holds a token
    const { out, want } = await run(c);
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
  });
});

describe('pagedAttention with a sliding window (CPU) vs float64', () => {
  // HF's sliding-window mask: a query at position i sees keys at positions > i - window.
  for (const window of [1, 8, 16, 40]) {
    it(`window ${window}: each row sees only the last ${window} of its visible slots (prefill, decode, GQA, attnSum)`, async () => {
      const c = makeCase({ heads: 8, kvHeads: 2, d: 64, seqs: mixedBatch, kvDtype: 'bf16', seed: 30 + window });
      const { out, attnSum, want } = await run(c, { window, attnSum: true });
      expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(4 * F32_TOL);
      // Not the full causal result: the window changes what the late rows see.
      const full = reference(c, causalVisible(c), 1 / Math.sqrt(c.d));
      if (window < 100) expect(maxAbsDiff(out, full.out)).toBeGreaterThan(1e-3);
    });
  }

  it('a long decode with a window (the split-over-slots path covers only the window)', async () => {
    const c = makeCase({ heads: 4, kvHeads: 1, d: 64, seqs: [{ queries: 1, kvLength: 3001 }, { queries: 1, kvLength: 900 }], seed: 35 });
    const { out, attnSum, want } = await run(c, { window: 700, attnSum: true });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(F32_TOL);
  });

  it('combines with a custom visible per row', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 16, seqs: mixedBatch, seed: 36 });
    const r = rng(37);
    const visible: number[] = [];
    for (const s of c.sequences) for (let i = 0; i < s.queries; i++) visible.push(Math.floor(r() * (s.kvLength + 1)));
    const { out, want } = await run(c, { visible: Int32Array.from(visible), window: 5 });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
  });

  it('rejects a window that is not a positive integer', () => {
    const c = makeCase({ heads: 2, kvHeads: 1, d: 16, seqs: [{ queries: 1, kvLength: 4 }], seed: 38 });
    const { q, kPool, vPool } = tensors(c);
    for (const window of [0, -1, 2.5]) {
      expect(() => ops.pagedAttention(q, kPool, vPool, { sequences: c.sequences, window })).toThrow(InvalidArgumentError);
    }
  });
});

describe('pagedAttention attnSum', () => {
  for (const [heads, kvHeads] of [[4, 4], [8, 2]] as const) {
    it(`is the softmax probabilities summed over each sequence's query rows (${heads}/${kvHeads} heads)`, async () => {
      const c = makeCase({ heads, kvHeads, d: 64, seqs: [...mixedBatch, { queries: 40, kvLength: 600 }], kvDtype: 'bf16', seed: 18 });
      const { out, attnSum, want } = await run(c, { attnSum: true });
      expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
      // A column sums up to 40 probabilities, each of f32 accuracy.
      expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(4 * F32_TOL);
      // Row sums: every head of every sequence distributes exactly one unit per query row.
      c.sequences.forEach((s, si) => {
        for (let h = 0; h < heads; h++) {
          let total = 0;
          for (let j = 0; j < want.maxKv; j++) total += attnSum![(si * heads + h) * want.maxKv + j]!;
          expect(total).toBeCloseTo(s.queries, 3);
        }
      });
    });
  }

  it('leaves the columns beyond a sequence kvLength at zero, and is deterministic', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 16, seqs: [{ queries: 5, kvLength: 300 }, { queries: 2, kvLength: 17 }], seed: 19 });
    const a = await run(c, { attnSum: true });
    const b = await run(c, { attnSum: true });
    expect(b.attnSum).toEqual(a.attnSum);
    for (let h = 0; h < 4; h++) {
      const tail = a.attnSum!.subarray((1 * 4 + h) * 300 + 17, (1 * 4 + h + 1) * 300);
      expect(tail.every((x) => x === 0)).toBe(true);
    }
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

/** Per row and head, the sum of its masses over ranges [0, covering): 1 for a row that sees a slot. */
function coverSums(mass: Float32Array, rows: number, heads: number, R: number, covering: number): Float64Array {
  const sums = new Float64Array(rows * heads);
  for (let th = 0; th < rows * heads; th++) for (let r = 0; r < covering; r++) sums[th] = sums[th]! + mass[th * R + r]!;
  return sums;
}

describe('pagedAttention rangeMass (CPU) vs float64', () => {
  // Documents of uneven lengths, not aligned to pages, covering every slot of each sequence.
  const docs = (c: Case) => c.sequences.map((s) => cover(s.kvLength, [5, 17, 3, 30, 11]));

  for (const [heads, kvHeads, d, kvDtype] of [[4, 4, 64, 'f32'], [8, 2, 128, 'bf16'], [4, 1, 16, 'f16']] as const) {
    it(`is each row's probability over each range, and a full cover sums to 1 (${heads}/${kvHeads} heads, d=${d}, ${kvDtype})`, async () => {
      const c = makeCase({ heads, kvHeads, d, seqs: [...mixedBatch, { queries: 40, kvLength: 600 }], kvDtype, seed: 80 + d });
      const ranges = docs(c);
      const { out, rangeMass, want } = await run(c, { rangeMass: ranges });
      expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
      const R = Math.max(...ranges.map((l) => l.length));
      // Lists shorter than R are padded with empty ranges: mass 0, and the cover is the rest.
      for (const x of coverSums(rangeMass!, out.length / (heads * d), heads, R, R)) expect(Math.abs(x - 1)).toBeLessThan(1e-6);
    });
  }

  it('one list for every sequence: overlapping ranges, empty ones, and ranges past what a row sees', async () => {
    const c = makeCase({ heads: 8, kvHeads: 2, d: 64, seqs: mixedBatch, seed: 81 });
    const ranges: SlotRange[] = [[0, 16], [10, 40], [7, 7], [0, 1000], [50, 60], [99, 100], [2000, 3000]];
    const { rangeMass, want } = await run(c, { rangeMass: ranges });
    expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
    const R = ranges.length;
    for (let th = 0; th < rangeMass!.length / R; th++) {
      expect(rangeMass![th * R + 2]).toBe(0); // empty
      expect(Math.abs(rangeMass![th * R + 3]! - 1)).toBeLessThan(1e-6); // every slot
      expect(rangeMass![th * R + 6]).toBe(0); // beyond every cache
    }
  });

  it('causal masking: a prefill row puts no mass on the slots after its own', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 32, seqs: [{ queries: 21, kvLength: 21 }], seed: 82 });
    const ranges = Array.from({ length: 21 }, (_, j): SlotRange => [j, j + 1]); // one range per slot
    const { rangeMass, want } = await run(c, { rangeMass: ranges });
    expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
    for (let t = 0; t < 21; t++) {
      for (let h = 0; h < 4; h++) {
        const row = rangeMass!.subarray((t * 4 + h) * 21, (t * 4 + h + 1) * 21);
        expect(row.subarray(t + 1).every((x) => x === 0)).toBe(true);
        expect(row.subarray(0, t + 1).every((x) => x > 0)).toBe(true);
      }
    }
  });

  // One row x one kv head: fewer items than threads, so the slots are split over them.
  it('a long decode (the split-over-slots path merges the masses with the sums)', async () => {
    const c = makeCase({ heads: 4, kvHeads: 1, d: 64, seqs: [{ queries: 1, kvLength: 3001 }], seed: 83 });
    const ranges = cover(3001, [4, 300, 1000, 1, 255, 256]);
    const { out, rangeMass, want } = await run(c, { rangeMass: ranges });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
    for (const x of coverSums(rangeMass!, 1, 4, ranges.length, ranges.length)) expect(Math.abs(x - 1)).toBeLessThan(1e-6);
  });

  it('holes and value page tables (sequences over stored documents): holes weigh 0', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 32, seqs: [{ queries: 3, kvLength: 64 }, { queries: 1, kvLength: 700 }], seed: 84 });
    const [a, b] = c.sequences as [Case['sequences'][0], Case['sequences'][0]];
    a.valuePages = [...a.pages].reverse();
    a.pageRows = [16, 5, 16, 16];
    b.pageRows = b.pages.map((_, i) => (i === b.pages.length - 1 ? 16 : [16, 0, 7][i % 3]!));
    // Range 1 of the first sequence is exactly the holes of its second page.
    const ranges: SlotRange[][] = [[[0, 21], [21, 32], [32, 64]], cover(700, [16, 16, 16, 100])];
    const { out, rangeMass, want } = await run(c, { rangeMass: ranges });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
    const R = 5;
    for (let t = 0; t < 3; t++) for (let h = 0; h < 4; h++) expect(rangeMass![(t * 4 + h) * R + 1]).toBe(0);
    for (let h = 0; h < 4; h++) expect(rangeMass![(3 * 4 + h) * R + 1]).toBe(0); // the second page: all holes
    for (const x of coverSums(rangeMass!, 4, 4, R, R)) expect(Math.abs(x - 1)).toBeLessThan(1e-6);
  });

  for (const window of [1, 16, 40]) {
    it(`sliding window ${window}: the slots before the window weigh 0`, async () => {
      const c = makeCase({ heads: 8, kvHeads: 2, d: 64, seqs: [...mixedBatch, { queries: 1, kvLength: 3001 }], kvDtype: 'bf16', seed: 85 + window });
      const ranges = c.sequences.map((s) => cover(s.kvLength, [9, 9, 9, 9, 9]));
      const { out, rangeMass, want } = await run(c, { window, rangeMass: ranges });
      expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
      const R = Math.max(...ranges.map((l) => l.length));
      for (const x of coverSums(rangeMass!, out.length / (8 * 64), 8, R, R)) expect(Math.abs(x - 1)).toBeLessThan(1e-6);
    });
  }

  it('a row that sees no slot gets zeros; a custom visible per row', async () => {
    const c = makeCase({ heads: 4, kvHeads: 2, d: 16, seqs: mixedBatch, seed: 88 });
    const r = rng(89);
    const visible: number[] = [];
    for (const s of c.sequences) for (let i = 0; i < s.queries; i++) visible.push(Math.floor(r() * (s.kvLength + 1)));
    visible[0] = 0;
    visible[21] = 0;
    const ranges = c.sequences.map((s) => cover(s.kvLength, [3, 20]));
    const { rangeMass, want } = await run(c, { visible: Int32Array.from(visible), rangeMass: ranges });
    expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
    const R = Math.max(...ranges.map((l) => l.length));
    for (const t of [0, 21]) expect(rangeMass!.subarray(t * 4 * R, (t + 1) * 4 * R).every((x) => x === 0)).toBe(true);
  });

  it('pages of 1 and 8 tokens', async () => {
    for (const pageSize of [1, 8]) {
      const c = makeCase({ heads: 4, kvHeads: 2, d: 16, pageSize, seqs: mixedBatch, seed: 90 + pageSize });
      const { rangeMass, want } = await run(c, { rangeMass: c.sequences.map((s) => cover(s.kvLength, [7, 7, 7])) });
      expect(maxAbsDiff(rangeMass!, want.rangeMass)).toBeLessThan(F32_TOL);
    }
  });

  it('leaves the output bitwise as without it, alongside attnSum and kvAttnSum', async () => {
    const c = makeCase({ heads: 8, kvHeads: 2, d: 64, seqs: [...mixedBatch, { queries: 1, kvLength: 3001 }], seed: 92 });
    const plain = await run(c);
    const all = await run(c, { attnSum: true, kvAttnSum: true, rangeMass: c.sequences.map((s) => cover(s.kvLength, [10, 10])) });
    expect(all.out).toEqual(plain.out);
    expect(maxAbsDiff(all.rangeMass!, all.want.rangeMass)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(all.kvAttnSum!, all.want.kvAttnSum)).toBeLessThan(16 * F32_TOL);
  });

  it('rejects ranges that are not ranges of slots, and lists that do not match the sequences', () => {
    const c = makeCase({ heads: 2, kvHeads: 1, d: 16, seqs: [{ queries: 1, kvLength: 4 }, { queries: 1, kvLength: 8 }], seed: 93 });
    const { q, kPool, vPool } = tensors(c);
    const bad: unknown[] = [[], [[3, 1]], [[-1, 2]], [[0, 1.5]], [[0, 2 ** 31]], [[[0, 1]]], [[[0, 1]], [[0, 1]], [[0, 1]]], [[[]], [[0, 1]]], 'all', [[0, 1, 2]]];
    for (const rangeMass of bad) {
      expect(() => ops.pagedAttention(q, kPool, vPool, { sequences: c.sequences, rangeMass: rangeMass as SlotRange[] })).toThrow(InvalidArgumentError);
    }
    for (const t of [q, kPool, vPool]) t.dispose();
  });
});

describe('pagedAttention kvAttnSum (CPU) vs float64', () => {
  for (const [heads, kvHeads] of [[4, 4], [8, 2], [4, 1]] as const) {
    it(`is attnSum summed over each kv head's group of query heads (${heads}/${kvHeads} heads)`, async () => {
      const c = makeCase({ heads, kvHeads, d: 64, seqs: [...mixedBatch, { queries: 40, kvLength: 600 }], kvDtype: 'bf16', seed: 94 + heads * kvHeads });
      const { attnSum, kvAttnSum, want } = await run(c, { attnSum: true, kvAttnSum: true });
      const group = heads / kvHeads;
      // A column sums up to 40 rows x `group` heads of probabilities, each of f32 accuracy.
      expect(maxAbsDiff(kvAttnSum!, want.kvAttnSum)).toBeLessThan(4 * group * F32_TOL);
      // And it is attnSum's heads added up (in f32 both: within their rounding).
      const maxKv = want.maxKv;
      const summed = new Float32Array(kvAttnSum!.length);
      for (let s = 0; s < c.sequences.length; s++) {
        for (let h = 0; h < heads; h++) {
          const dst = (s * kvHeads + Math.floor(h / group)) * maxKv;
          for (let j = 0; j < maxKv; j++) summed[dst + j] = summed[dst + j]! + attnSum![(s * heads + h) * maxKv + j]!;
        }
      }
      expect(maxAbsDiff(kvAttnSum!, summed)).toBeLessThan(4 * group * F32_TOL);
      c.sequences.forEach((s, si) => {
        for (let g = 0; g < kvHeads; g++) {
          let total = 0;
          for (let j = 0; j < maxKv; j++) total += kvAttnSum![(si * kvHeads + g) * maxKv + j]!;
          expect(total).toBeCloseTo(s.queries * group, 3);
        }
      });
    });
  }

  it('with holes, a window and a long decode; deterministic', async () => {
    const c = makeCase({ heads: 8, kvHeads: 2, d: 32, seqs: [{ queries: 5, kvLength: 300 }, { queries: 1, kvLength: 3001 }], seed: 97 });
    const b = c.sequences[1]!;
    b.pageRows = b.pages.map((_, i) => (i === b.pages.length - 1 ? 16 : [16, 0, 7][i % 3]!));
    const first = await run(c, { kvAttnSum: true, window: 700 });
    expect(maxAbsDiff(first.kvAttnSum!, first.want.kvAttnSum)).toBeLessThan(4 * F32_TOL);
    const again = await run(c, { kvAttnSum: true, window: 700 });
    expect(again.kvAttnSum).toEqual(first.kvAttnSum);
  });
});

// scoreDecay: the column sums weighted by row age, the Cascading KV cache's EMA scores. With the
// sequence's q query rows i and c0 the slot of its first query token, a cached slot j < c0
// counts beta^(q-1-i) p, the chunk's own slot j >= c0 beta^(i-(j-c0)) p.
describe('pagedAttention scoreDecay (CPU) vs float64', () => {
  /** The columns [0, kvLength) of sequence si's rows of a [seqs, heads, maxKv] sum. */
  const columns = (x: Float32Array, si: number, heads: number, maxKv: number) => x.subarray(si * heads * maxKv, (si + 1) * heads * maxKv);

  it('uniform probabilities (scale 0), worked by hand: 3 query rows over 2 cached slots, beta 1/2', async () => {
    // Row i sees 3 + i slots, each with p = 1 / (3 + i). Slots 0, 1 are cached (weights 1/4,
    // 1/2, 1 for rows 0, 1, 2); slot 2 + k is query token k's own (weight 2^-(i-k) for i >= k).
    const c = makeCase({ heads: 2, kvHeads: 1, d: 16, seqs: [{ queries: 3, kvLength: 5 }], seed: 100 });
    const { attnSum, kvAttnSum } = await run(c, { scale: 0, attnSum: true, kvAttnSum: true, scoreDecay: 0.5 });
    const cached = 0.25 / 3 + 0.5 / 4 + 1 / 5;
    const hand = [cached, cached, 1 / 3 + 0.5 / 4 + 0.25 / 5, 1 / 4 + 0.5 / 5, 1 / 5];
    for (let h = 0; h < 2; h++) expect(maxAbsDiff(attnSum!.subarray(h * 5, (h + 1) * 5), hand)).toBeLessThan(1e-6);
    expect(maxAbsDiff(kvAttnSum!, hand.map((x) => 2 * x))).toBeLessThan(2e-6);
  });

  for (const [heads, kvHeads] of [[8, 2], [8, 4], [4, 1]] as const) {
    for (const kvDtype of ['f32', 'bf16'] as const) {
      it(`prefill chunks over cached slots and decode rows, one beta per sequence (${heads}/${kvHeads} heads, ${kvDtype} pools)`, async () => {
        const seqs: SeqSpec[] = [
          { queries: 16, kvLength: 100, sparePages: 1 }, // a chunk over 84 cached slots
          { queries: 21, kvLength: 21 }, // a fresh prefill: only the chunk's own slots
          { queries: 1, kvLength: 53 }, // a decode row
          { queries: 40, kvLength: 600 },
          { queries: 3, kvLength: 48 }, // beta 1: plain sums
        ];
        const betas = [0.9, 0.5, 0.7, 0.95, 1];
        const c = makeCase({ heads, kvHeads, d: 64, seqs, kvDtype, seed: 101 + heads * kvHeads });
        const { out, attnSum, kvAttnSum, want } = await run(c, { attnSum: true, kvAttnSum: true, scoreDecay: betas });
        const group = heads / kvHeads;
        expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
        // A column sums up to 40 weighted probabilities (weights <= 1), each of f32 accuracy.
        expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(4 * F32_TOL);
        expect(maxAbsDiff(kvAttnSum!, want.kvAttnSum)).toBeLessThan(4 * group * F32_TOL);
        // The weights matter: the decayed prefills are far from the plain sums; the decode row
        // (q = 1: weights 1) and the beta-1 sequence are the plain sums to the bit.
        const plain = await run(c, { attnSum: true, kvAttnSum: true });
        const maxKv = want.maxKv;
        for (const si of [0, 1, 3]) expect(maxAbsDiff(columns(attnSum!, si, heads, maxKv), columns(plain.attnSum!, si, heads, maxKv))).toBeGreaterThan(1e-2);
        for (const si of [2, 4]) {
          expect(columns(attnSum!, si, heads, maxKv)).toEqual(columns(plain.attnSum!, si, heads, maxKv));
          expect(columns(kvAttnSum!, si, kvHeads, maxKv)).toEqual(columns(plain.kvAttnSum!, si, kvHeads, maxKv));
        }
        // kvAttnSum is still attnSum summed over each group.
        const summed = new Float32Array(kvAttnSum!.length);
        for (let si = 0; si < seqs.length; si++) {
          for (let h = 0; h < heads; h++) {
            const dst = (si * kvHeads + Math.floor(h / group)) * maxKv;
            for (let j = 0; j < maxKv; j++) summed[dst + j] = summed[dst + j]! + attnSum![(si * heads + h) * maxKv + j]!;
          }
        }
        expect(maxAbsDiff(kvAttnSum!, summed)).toBeLessThan(4 * group * F32_TOL);
      });
    }
  }

  it('one beta for every sequence; the output and rangeMass are as without it, bit for bit', async () => {
    const c = makeCase({ heads: 8, kvHeads: 2, d: 32, seqs: [...mixedBatch, { queries: 40, kvLength: 600 }], seed: 105 });
    const rangeMass = c.sequences.map((s) => cover(s.kvLength, [10, 10]));
    const decayed = await run(c, { attnSum: true, kvAttnSum: true, rangeMass, scoreDecay: 0.8 });
    expect(maxAbsDiff(decayed.attnSum!, decayed.want.attnSum)).toBeLessThan(4 * F32_TOL);
    expect(maxAbsDiff(decayed.kvAttnSum!, decayed.want.kvAttnSum)).toBeLessThan(16 * F32_TOL);
    const each = await run(c, { attnSum: true, kvAttnSum: true, rangeMass, scoreDecay: c.sequences.map(() => 0.8) });
    expect(each.attnSum).toEqual(decayed.attnSum);
    expect(each.kvAttnSum).toEqual(decayed.kvAttnSum);
    const plain = await run(c, { attnSum: true, kvAttnSum: true, rangeMass });
    expect(decayed.out).toEqual(plain.out);
    expect(decayed.rangeMass).toEqual(plain.rangeMass);
  });

  it('beta = 1 is no decay, bit for bit', async () => {
    const c = makeCase({ heads: 8, kvHeads: 2, d: 64, seqs: [...mixedBatch, { queries: 40, kvLength: 600 }], kvDtype: 'bf16', seed: 106 });
    const plain = await run(c, { attnSum: true, kvAttnSum: true });
    for (const scoreDecay of [1, c.sequences.map(() => 1)]) {
      const one = await run(c, { attnSum: true, kvAttnSum: true, scoreDecay });
      expect(one.attnSum).toEqual(plain.attnSum);
      expect(one.kvAttnSum).toEqual(plain.kvAttnSum);
    }
  });

  it('decode rows (q = 1) weigh every slot 1, long caches too: the plain sums, bit for bit', async () => {
    const seqs = [3001, 1, 257, 700].map((kvLength) => ({ queries: 1, kvLength }));
    const c = makeCase({ heads: 8, kvHeads: 2, d: 64, seqs, seed: 107 });
    const decayed = await run(c, { attnSum: true, kvAttnSum: true, scoreDecay: [0.5, 0.1, 0.9, 1e-6] });
    const plain = await run(c, { attnSum: true, kvAttnSum: true });
    expect(decayed.attnSum).toEqual(plain.attnSum);
    expect(decayed.kvAttnSum).toEqual(plain.kvAttnSum);
    expect(maxAbsDiff(decayed.kvAttnSum!, decayed.want.kvAttnSum)).toBeLessThan(4 * F32_TOL);
  });

  it('with a sliding window, holes, and pages of 8 tokens', async () => {
    const c = makeCase({ heads: 8, kvHeads: 2, d: 32, pageSize: 8, seqs: [{ queries: 12, kvLength: 64 }, { queries: 30, kvLength: 300 }, { queries: 1, kvLength: 900 }], seed: 108 });
    const [a, , b] = c.sequences as [Case['sequences'][0], Case['sequences'][0], Case['sequences'][0]];
    a.pageRows = [8, 3, 8, 0, 8, 8, 8, 8]; // holes among the cached slots only
    b.pageRows = b.pages.map((_, i) => (i === b.pages.length - 1 ? 8 : [8, 0, 5][i % 3]!));
    const { out, attnSum, kvAttnSum, want } = await run(c, { window: 40, attnSum: true, kvAttnSum: true, scoreDecay: [0.6, 0.9, 0.3] });
    expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(4 * F32_TOL);
    expect(maxAbsDiff(kvAttnSum!, want.kvAttnSum)).toBeLessThan(16 * F32_TOL);
  });

  it('the chunk starts where its first row sees: a custom visible, slots past the chunk not yet seen', async () => {
    // Sequence 0: 8 rows at slots 40..47 of a 64-slot cache; sequence 1: 5 rows at 10..14 of 30.
    const c = makeCase({ heads: 4, kvHeads: 2, d: 32, seqs: [{ queries: 8, kvLength: 64 }, { queries: 5, kvLength: 30 }], seed: 110 });
    const visible = Int32Array.from([...Array.from({ length: 8 }, (_, i) => 41 + i), ...Array.from({ length: 5 }, (_, i) => 11 + i)]);
    const { attnSum, kvAttnSum, want } = await run(c, { visible, attnSum: true, kvAttnSum: true, scoreDecay: [0.7, 0.4] });
    expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(4 * F32_TOL);
    expect(maxAbsDiff(kvAttnSum!, want.kvAttnSum)).toBeLessThan(8 * F32_TOL);
    // Nothing lands on the slots past the chunk.
    for (let h = 0; h < 4; h++) expect(attnSum!.subarray(h * 64 + 48, (h + 1) * 64).every((x) => x === 0)).toBe(true);
  });

  it('rejects a beta outside (0, 1] and a list that does not match the sequences, naming scoreDecay', () => {
    const c = makeCase({ heads: 2, kvHeads: 1, d: 16, seqs: [{ queries: 2, kvLength: 4 }, { queries: 1, kvLength: 8 }], seed: 109 });
    const { q, kPool, vPool } = tensors(c);
    const bad: unknown[] = [0, -0.5, 1.5, 1 + 1e-12, NaN, Infinity, [0.5], [0.5, 0.5, 0.5], [], [0.5, NaN], [0.5, 0], [0.5, 2], '0.5', ['0.5', 0.5], null];
    for (const scoreDecay of bad) {
      const call = () => ops.pagedAttention(q, kPool, vPool, { sequences: c.sequences, attnSum: true, scoreDecay: scoreDecay as number });
      expect(call).toThrow(InvalidArgumentError);
      expect(call).toThrow(/scoreDecay/);
      try {
        call();
      } catch (e) {
        expect((e as InvalidArgumentError).argument).toBe('scoreDecay');
      }
    }
    // The edges of the interval are fine.
    for (const scoreDecay of [1, Number.MIN_VALUE, [1, 1e-9]]) {
      expect(() => ops.pagedAttention(q, kPool, vPool, { sequences: c.sequences, kvAttnSum: true, scoreDecay })).not.toThrow();
    }
    for (const t of [q, kPool, vPool]) t.dispose();
  });
});

describe('pagedAttention rejects bad tables from data on the CPU', () => {
  // Through the raw binding: ops.pagedAttention already rejects these before queueing.
  function rawCall(opts: { pageTable: number[]; kvLen: number; visible?: number; firstVisible?: number }) {
    const [heads, kvHeads, d, pageSize, numPages] = [2, 1, 16, 16, 4];
    const q = Tensor.from(rand(heads * d, 1), { shape: [1, heads, d] });
    const kPool = Tensor.from(rand(numPages * pageSize * kvHeads * d, 2), { shape: [numPages, pageSize, kvHeads, d] });
    const vPool = Tensor.from(rand(numPages * pageSize * kvHeads * d, 3), { shape: [numPages, pageSize, kvHeads, d] });
    const out = Tensor.empty([1, heads, d]);
    const idx = [[0, 1], [opts.kvLen], [0, opts.pageTable.length], opts.pageTable, [opts.visible ?? opts.kvLen]].map((a) =>
      Tensor.from(Int32Array.from(a)),
    );
    const [qs, kl, ts, pt, vis] = idx.map((t) => t.handle());
    const first = opts.firstVisible === undefined ? null : Tensor.from(Int32Array.of(opts.firstVisible)).handle();
    native().ops.pagedAttention(q.handle(), kPool.handle(), vPool.handle(), out.handle(), qs!, kl!, ts!, pt!, vis!, null, {
      heads, kvHeads, headDim: d, pageSize, numPages, seqs: 1, totalQ: 1, maxKv: opts.kvLen, scale: 0.25,
    }, first);
    return out;
  }

  it('a mass range with end before begin (through massRanges)', async () => {
    const [heads, kvHeads, d, pageSize, numPages] = [2, 1, 16, 16, 4];
    const q = Tensor.from(rand(heads * d, 1), { shape: [1, heads, d] });
    const pool = Tensor.from(rand(numPages * pageSize * kvHeads * d, 2), { shape: [numPages, pageSize, kvHeads, d] });
    const out = Tensor.empty([1, heads, d]);
    const idx = [[0, 1], [20], [0, 2], [3, 0], [20], [0, 4, 9, 5]].map((a) => Tensor.from(Int32Array.from(a)));
    const [qs, kl, ts, pt, vis, ranges] = idx.map((t) => t.handle());
    const mass = Tensor.zeros([1, heads, 2]);
    native().ops.pagedAttention(q.handle(), pool.handle(), pool.handle(), out.handle(), qs!, kl!, ts!, pt!, vis!, null, {
      heads, kvHeads, headDim: d, pageSize, numPages, seqs: 1, totalQ: 1, maxKv: 20, scale: 0.25, numRanges: 2,
    }, null, null, null, null, ranges, mass.handle());
    const p = out.toArray();
    await expect(p).rejects.toThrow(InvalidArgumentError);
    await expect(p).rejects.toThrow(/range 1 \[9, 5\) of mass_ranges/);
  });

  it('accepts a well-formed call (the control)', async () => {
    await expect(rawCall({ pageTable: [3, 0], kvLen: 20 }).toArray()).resolves.toBeInstanceOf(Float32Array);
  });

  it('a page id outside the pool', async () => {
    const p = rawCall({ pageTable: [3, 4], kvLen: 20 }).toArray();
    await expect(p).rejects.toThrow(InvalidArgumentError);
    await expect(p).rejects.toThrow(/pool page 4, outside the pool \[0, 4\)/);
    await expect(rawCall({ pageTable: [-1], kvLen: 3 }).toArray()).rejects.toThrow(InvalidArgumentError);
  });

  it('a kv length beyond the page table', async () => {
    const p = rawCall({ pageTable: [3, 0], kvLen: 33, visible: 1 }).toArray();
    await expect(p).rejects.toThrow(InvalidArgumentError);
    await expect(p).rejects.toThrow(/kv_len 33 is outside its page table \[0, 32\]/);
  });

  it('a visible count beyond the kv length', async () => {
    await expect(rawCall({ pageTable: [3, 0], kvLen: 20, visible: 21 }).toArray()).rejects.toThrow(InvalidArgumentError);
    await expect(rawCall({ pageTable: [3, 0], kvLen: 20, visible: -1 }).toArray()).rejects.toThrow(InvalidArgumentError);
  });

  it('a first visible slot outside [0, visible]', async () => {
    await expect(rawCall({ pageTable: [3, 0], kvLen: 20, visible: 20, firstVisible: 20 }).toArray()).resolves.toBeInstanceOf(Float32Array);
    const p = rawCall({ pageTable: [3, 0], kvLen: 20, visible: 10, firstVisible: 11 }).toArray();
    await expect(p).rejects.toThrow(InvalidArgumentError);
    await expect(p).rejects.toThrow(/first_visible\[0\] = 11 is outside \[0, 10\]/);
    await expect(rawCall({ pageTable: [3, 0], kvLen: 20, firstVisible: -1 }).toArray()).rejects.toThrow(InvalidArgumentError);
  });
});

// scoreRows: only each sequence's last n query rows add into the column sums (SnapKV's
// observation window); the output and the range masses are untouched.
describe('pagedAttention scoreRows (CPU) vs float64', () => {
  for (const [heads, kvHeads] of [[8, 2], [4, 4]] as const) {
    it(`the last rows of each sequence only (${heads}/${kvHeads} heads)`, async () => {
      const seqs: SeqSpec[] = [
        { queries: 40, kvLength: 40 }, // a prompt: its last 8 rows count
        { queries: 5, kvLength: 90 }, // fewer rows than the window: all count
        { queries: 1, kvLength: 33 },
      ];
      const c = makeCase({ heads, kvHeads, d: 64, seqs, seed: 900 + heads });
      const { out, attnSum, kvAttnSum, want } = await run(c, { attnSum: true, kvAttnSum: true, scoreRows: [8, 8, 8] });
      expect(maxAbsDiff(out, want.out)).toBeLessThan(F32_TOL);
      expect(maxAbsDiff(attnSum!, want.attnSum)).toBeLessThan(4 * F32_TOL);
      expect(maxAbsDiff(kvAttnSum!, want.kvAttnSum)).toBeLessThan(4 * (heads / kvHeads) * F32_TOL);
      const plain = await run(c, { attnSum: true });
      // Fewer rows change the prompt's sums; the short sequences' are the plain sums to the bit.
      const maxKv = want.maxKv;
      const cols = (x: Float32Array, si: number) => x.subarray(si * heads * maxKv, (si + 1) * heads * maxKv);
      expect(maxAbsDiff(cols(attnSum!, 0), cols(plain.attnSum!, 0))).toBeGreaterThan(1e-2);
      for (const si of [1, 2]) expect(cols(attnSum!, si)).toEqual(cols(plain.attnSum!, si));
      // With decay too: both apply.
      const both = await run(c, { attnSum: true, scoreRows: 8, scoreDecay: 0.8 });
      expect(maxAbsDiff(both.attnSum!, both.want.attnSum)).toBeLessThan(4 * F32_TOL);
    });
  }

  it('rejects a row count that is not a positive integer, naming scoreRows', () => {
    const c = makeCase({ heads: 2, kvHeads: 1, d: 16, seqs: [{ queries: 2, kvLength: 4 }], seed: 950 });
    const { q, kPool, vPool } = tensors(c);
    for (const scoreRows of [0, -1, 1.5, Number.NaN, [1, 2], '3']) {
      const call = () => ops.pagedAttention(q, kPool, vPool, { sequences: c.sequences, attnSum: true, scoreRows: scoreRows as number });
      expect(call).toThrow(InvalidArgumentError);
      expect(call).toThrow(/scoreRows/);
    }
    for (const t of [q, kPool, vPool]) t.dispose();
  });
});
