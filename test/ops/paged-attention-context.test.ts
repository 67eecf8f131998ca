// pagedAttention's two-part (APE) mode: a sequence's `context` slots [begin, end) are attended
// with logits / T, its other visible slots separately, and the two outputs mixed with
// softmax([S T lse_context, lse_other]) (kernels/paged_attention.h). Checked against that
// formula in float64 over prefill, decode (the split path), GQA, holes and mixed batches.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, Tensor, ops } from '../../lib/index.js';
import { rand, rng } from '../support/random.js';

interface Context {
  begin: number;
  end: number;
  temperature?: number;
  scale?: number;
}

interface Sequence {
  queries: number;
  kvLength: number;
  pages: number[];
  pageRows?: number[];
  context?: Context;
}

interface Case {
  heads: number;
  kvHeads: number;
  d: number;
  pageSize: number;
  numPages: number;
  sequences: Sequence[];
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

/** Random f32 inputs; each sequence's pages drawn from a shuffled pool. */
function makeCase(heads: number, kvHeads: number, d: number, seqs: { queries: number; kvLength: number; context?: Context }[], seed: number, pageSize = 16): Case {
  const needs = seqs.map((s) => Math.ceil(s.kvLength / pageSize));
  const numPages = needs.reduce((a, b) => a + b, 0) + 1;
  const order = Array.from({ length: numPages }, (_, i) => i);
  const r = rng(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  let next = 0;
  const sequences = seqs.map((s, i) => ({ ...s, pages: order.slice(next, (next += needs[i]!)) }));
  const totalQ = seqs.reduce((a, s) => a + s.queries, 0);
  const poolSize = numPages * pageSize * kvHeads * d;
  return {
    heads, kvHeads, d, pageSize, numPages, sequences,
    q: rand(totalQ * heads * d, seed + 1),
    k: rand(poolSize, seed + 2, 2), // scores over a few units: neither flat nor one-hot
    v: rand(poolSize, seed + 3),
  };
}

/** float64: each causal row's two softmaxes and their mixture (the header's formula). */
function reference(c: Case, scale: number): Float64Array {
  const { heads, kvHeads, d, pageSize } = c;
  const totalQ = c.q.length / (heads * d);
  const out = new Float64Array(totalQ * heads * d);
  let t = 0;
  for (const s of c.sequences) {
    const ctx = s.context;
    const T = ctx?.temperature ?? 1;
    const S = ctx?.scale ?? 1;
    const inCtx = (j: number) => ctx !== undefined && j >= ctx.begin && j < ctx.end;
    const hole = (j: number) => s.pageRows !== undefined && j % pageSize >= s.pageRows[Math.floor(j / pageSize)]!;
    for (let r = 0; r < s.queries; r++, t++) {
      const vis = s.kvLength - s.queries + r + 1;
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / (heads / kvHeads));
        const rowOf = (j: number) => ((s.pages[Math.floor(j / pageSize)]! * pageSize + (j % pageSize)) * kvHeads + g) * d;
        // Per part: lse and the normalised output.
        const part = (mine: (j: number) => boolean, mul: number) => {
          const slots: number[] = [];
          for (let j = 0; j < vis; j++) if (mine(j) && !hole(j)) slots.push(j);
          const scores = slots.map((j) => {
            let dot = 0;
            for (let i = 0; i < d; i++) dot += c.q[(t * heads + h) * d + i]! * c.k[rowOf(j) + i]!;
            return dot * scale * mul;
          });
          const o = new Float64Array(d);
          if (slots.length === 0) return { lse: -Infinity, o };
          const max = Math.max(...scores);
          const w = scores.map((x) => Math.exp(x - max));
          const sum = w.reduce((a, b) => a + b, 0);
          slots.forEach((j, n) => {
            for (let i = 0; i < d; i++) o[i] = o[i]! + (w[n]! / sum) * c.v[rowOf(j) + i]!;
          });
          return { lse: max + Math.log(sum), o };
        };
        const cp = part(inCtx, 1 / T);
        const op = part((j) => !inCtx(j), 1);
        const xc = S * T * cp.lse;
        const x = Math.max(xc, op.lse);
        const ec = xc === -Infinity ? 0 : Math.exp(xc - x);
        const eo = op.lse === -Infinity ? 0 : Math.exp(op.lse - x);
        for (let i = 0; i < d; i++) out[(t * heads + h) * d + i] = x === -Infinity ? 0 : (ec * cp.o[i]! + eo * op.o[i]!) / (ec + eo);
      }
    }
  }
  return out;
}

async function run(c: Case, scale = 1 / Math.sqrt(c.d)) {
  const totalQ = c.q.length / (c.heads * c.d);
  const poolShape = [c.numPages, c.pageSize, c.kvHeads, c.d];
  const q = Tensor.from(c.q, { shape: [totalQ, c.heads, c.d] });
  const kPool = Tensor.from(c.k, { shape: poolShape });
  const vPool = Tensor.from(c.v, { shape: poolShape });
  const res = ops.pagedAttention(q, kPool, vPool, { sequences: c.sequences, scale });
  const out = (await res.out.toArray()) as Float32Array;
  for (const x of [q, kPool, vPool, res.out]) x.dispose();
  return { out, want: reference(c, scale) };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

// As in paged-attention.test.ts: outputs are convex combinations of values in [-1, 1]; f32
// rounding of scores, sums and the two logs stays far below this.
const F32_TOL = 5e-6;

describe('pagedAttention two-part (context) attention (CPU) vs float64', () => {
  // The APE shape: prefix [0, 7), documents [7, 60), then the query rows (prefill) or a decode row.
  const ape = { begin: 7, end: 60, temperature: 0.9, scale: 0.9 };

  for (const [heads, kvHeads] of [[4, 4], [8, 2], [4, 1]] as const) {
    it(`query prefill and decode rows in one batch, ${heads}/${kvHeads} heads`, async () => {
      const c = makeCase(heads, kvHeads, 64, [{ queries: 6, kvLength: 66, context: ape }, { queries: 1, kvLength: 80, context: ape }], heads * 10 + kvHeads);
      const { out, want } = await run(c);
      expect(maxAbsDiff(out, want)).toBeLessThan(F32_TOL);
    });
  }

  it('T = S = 1 is plain attention over both parts', async () => {
    const c = makeCase(4, 2, 32, [{ queries: 5, kvLength: 50, context: { begin: 10, end: 40 } }], 21);
    const plain = makeCase(4, 2, 32, [{ queries: 5, kvLength: 50 }], 21);
    const [a, b] = [await run(c), await run(plain)];
    expect(maxAbsDiff(a.out, b.out)).toBeLessThan(F32_TOL);
    expect(maxAbsDiff(a.out, b.want)).toBeLessThan(F32_TOL);
  });

  it('other temperatures and scales (S > 1 favours the context, S < 1 the rest)', async () => {
    for (const [temperature, scale] of [[0.5, 1.2], [1.5, 0.5], [0.9, 0]] as const) {
      const c = makeCase(4, 2, 32, [{ queries: 4, kvLength: 70, context: { begin: 5, end: 64, temperature, scale } }], 22);
      const { out, want } = await run(c);
      expect(maxAbsDiff(out, want)).toBeLessThan(F32_TOL);
    }
  });

  it('a long decode (the split-over-slots path merges each part over the chunks)', async () => {
    const c = makeCase(4, 1, 64, [{ queries: 1, kvLength: 3001, context: { begin: 100, end: 2900, temperature: 0.8, scale: 0.7 } }], 23);
    const { out, want } = await run(c);
    expect(maxAbsDiff(out, want)).toBeLessThan(F32_TOL);
  });

  it('mixes sequences with and without a context; a row before the context sees only "other"', async () => {
    const c = makeCase(4, 2, 32, [
      { queries: 20, kvLength: 20, context: { begin: 8, end: 18, temperature: 0.9, scale: 0.9 } }, // early rows see no context slot
      { queries: 3, kvLength: 40 },
      { queries: 1, kvLength: 33, context: { begin: 0, end: 33, temperature: 0.7, scale: 1.1 } }, // everything is context
    ], 24);
    const { out, want } = await run(c);
    expect(maxAbsDiff(out, want)).toBeLessThan(F32_TOL);
  });

  it('holes in the context pages (stored documents) weigh 0', async () => {
    const c = makeCase(4, 2, 32, [{ queries: 3, kvLength: 64, context: { begin: 16, end: 48, temperature: 0.9, scale: 0.9 } }], 25);
    c.sequences[0]!.pageRows = [7, 13, 9, 16]; // prefix page, two documents' pages, the query's
    const { out, want } = await run(c);
    expect(maxAbsDiff(out, want)).toBeLessThan(F32_TOL);
  });

  it('pages of 1 and 8 tokens', async () => {
    for (const pageSize of [1, 8]) {
      const c = makeCase(2, 1, 16, [{ queries: 4, kvLength: 37, context: { begin: 3, end: 30, temperature: 0.9, scale: 0.9 } }], 26, pageSize);
      const { out, want } = await run(c);
      expect(maxAbsDiff(out, want)).toBeLessThan(F32_TOL);
    }
  });

  it('rejects bad contexts, and scores alongside one', () => {
    const c = makeCase(2, 1, 16, [{ queries: 1, kvLength: 20 }], 27);
    const q = Tensor.from(c.q, { shape: [1, 2, 16] });
    const pool = Tensor.from(c.k, { shape: [c.numPages, 16, 1, 16] });
    const call = (context: Context, extra: object = {}) => () =>
      ops.pagedAttention(q, pool, pool, { sequences: [{ ...c.sequences[0]!, context }], ...extra });
    expect(call({ begin: 5, end: 2 })).toThrow(InvalidArgumentError);
    expect(call({ begin: 0, end: 5, temperature: 0 })).toThrow(/temperature/);
    expect(call({ begin: 0, end: 5, scale: Infinity })).toThrow(/scale/);
    expect(call({ begin: 0, end: 5 }, { attnSum: true })).toThrow(/scores/);
    q.dispose();
    pool.dispose();
  });
});
