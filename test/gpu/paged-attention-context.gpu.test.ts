// pagedAttention's two-part (APE) mode on CUDA against its CPU twin (which
// test/ops/paged-attention-context.test.ts checks against float64): prefill and decode rows
// (including the split-over-slots path, whose combine merges each part), GQA, every head size the
// CUDA kernel has a variant for, every pool dtype, holes, and sequences without a context.
import { describe, expect, it } from 'vitest';

import { Tensor, ops } from '../../lib/index.js';
import { rand, rng } from '../support/random.js';
import { hasCuda } from './gpu.js';

type FloatDType = 'f32' | 'f16' | 'bf16';

interface Context {
  begin: number;
  end: number;
  temperature: number;
  scale: number;
}

async function both(
  heads: number,
  kvHeads: number,
  d: number,
  seqs: { queries: number; kvLength: number; context?: Context; holes?: boolean }[],
  kvDtype: FloatDType,
  seed: number,
) {
  const pageSize = 16;
  const needs = seqs.map((s) => Math.ceil(s.kvLength / pageSize));
  const numPages = needs.reduce((a, b) => a + b, 0) + 2;
  const order = Array.from({ length: numPages }, (_, i) => i);
  const r = rng(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  let next = 0;
  const sequences = seqs.map(({ holes, ...s }, i) => {
    const pages = order.slice(next, (next += needs[i]!));
    // Stored documents end in holes: every page but the last holds 5..16 rows.
    return holes ? { ...s, pages, pageRows: pages.map((_, p) => (p === pages.length - 1 ? pageSize : 5 + ((p * 7) % 12))) } : { ...s, pages };
  });
  const totalQ = seqs.reduce((a, s) => a + s.queries, 0);
  const poolShape = [numPages, pageSize, kvHeads, d];
  const poolSize = numPages * pageSize * kvHeads * d;
  const q = Tensor.from(rand(totalQ * heads * d, seed + 1), { shape: [totalQ, heads, d] });
  const kPool = Tensor.from(rand(poolSize, seed + 2, 2), { shape: poolShape, dtype: kvDtype });
  const vPool = Tensor.from(rand(poolSize, seed + 3), { shape: poolShape, dtype: kvDtype });
  const out: Float32Array[] = [];
  for (const device of ['cpu', 'cuda'] as const) {
    const res = ops.pagedAttention(q.to(device), kPool.to(device), vPool.to(device), { sequences });
    out.push((await res.out.toArray()) as Float32Array);
  }
  return { cpu: out[0]!, cuda: out[1]! };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

// As for one-part attention (paged-attention.gpu.test.ts): f32 on both sides, other orders.
const F32_TOL = 5e-6;
const ape = { begin: 7, end: 60, temperature: 0.9, scale: 0.9 };

describe.skipIf(!hasCuda)('pagedAttention two-part (context) attention (CUDA vs CPU)', () => {
  for (const d of [16, 64, 128, 256]) {
    for (const [heads, kvHeads] of [[4, 4], [8, 2]] as const) {
      for (const kvDtype of ['f32', 'bf16'] as const) {
        it(`query prefill + decode + a sequence without context, ${heads}/${kvHeads} heads, d=${d}, ${kvDtype}`, async () => {
          const seqs = [
            { queries: 6, kvLength: 66, context: ape },
            { queries: 1, kvLength: 80, context: ape },
            { queries: 5, kvLength: 40 },
          ];
          const { cpu, cuda } = await both(heads, kvHeads, d, seqs, kvDtype, d + heads);
          expect(maxAbsDiff(cuda, cpu)).toBeLessThan(F32_TOL);
        });
      }
    }
  }

  it('decode over long caches (the split path merges each part, then the parts)', async () => {
    const seqs = [4096, 777, 2048].map((kvLength) => ({ queries: 1, kvLength, context: { begin: 30, end: kvLength - 40, temperature: 0.8, scale: 0.7 } }));
    const { cpu, cuda } = await both(8, 2, 128, seqs, 'f16', 5);
    expect(maxAbsDiff(cuda, cpu)).toBeLessThan(F32_TOL);
  });

  it('holes in the pages, context at the start and at the end of the cache', async () => {
    const seqs = [
      { queries: 3, kvLength: 90, context: { begin: 0, end: 50, temperature: 0.9, scale: 1.2 }, holes: true },
      { queries: 20, kvLength: 20, context: { begin: 10, end: 20, temperature: 0.5, scale: 0.9 } },
    ];
    const { cpu, cuda } = await both(4, 1, 64, seqs, 'f32', 6);
    expect(maxAbsDiff(cuda, cpu)).toBeLessThan(F32_TOL);
  });
});
