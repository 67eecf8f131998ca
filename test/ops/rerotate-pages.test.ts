// rerotatePages, the fused re-rotation of paged keys (CacheFocus): every layer's moved rows in
// one launch, against float64 rotations, for the rope scalings the engine loads (default,
// linear, llama3, yarn: frequencies from lib/model/rope.ts), both pair layouts, partial rotary,
// f32/f16/bf16; the precision of bf16/f16 moves next to keys rotated directly at the target;
// round trips; and the same bits as one rerotate per run (the engine's former path).
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, type KeyMove, ops, Tensor } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { type RopeConfig, ropeParameters } from '../../lib/model/rope.js';
import { rand, randInts, rng } from '../support/random.js';
import { held, UNIT_ROUNDOFF } from '../support/tolerance.js';

type Layout = 'half' | 'adjacent';

// One config per rope scaling the engine loads; frequencies for `rotaryDim` dimensions (a
// partial-rotary model computes them over its rotary width, as transformers does).
const ROPES: Record<string, (rotaryDim: number) => Float32Array> = {
  default: (d) => freqs({ headDim: d, ropeTheta: 10000, ropeScaling: null, maxPositionEmbeddings: 4096 }),
  linear: (d) => freqs({ headDim: d, ropeTheta: 10000, ropeScaling: { type: 'linear', factor: 4 }, maxPositionEmbeddings: 16384 }),
  llama3: (d) =>
    freqs({
      headDim: d, ropeTheta: 500000, maxPositionEmbeddings: 131072,
      ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    }),
  yarn: (d) =>
    freqs({
      headDim: d, ropeTheta: 1000000, maxPositionEmbeddings: 131072,
      ropeScaling: {
        type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768, betaFast: 32, betaSlow: 1,
        attentionFactor: null, mscale: null, mscaleAllDim: null, truncate: true,
      },
    }),
};

function freqs(config: RopeConfig): Float32Array {
  return ropeParameters(config).invFreq;
}

interface Pool {
  numPages: number;
  pageSize: number;
  kvHeads: number;
  headDim: number;
}

const rowElems = (p: Pool) => p.kvHeads * p.headDim;
const slotAt = (p: Pool, page: number, row: number) => (page * p.pageSize + row) * rowElems(p);

// float64: rotates the rotary pairs of every head of one pool row by angle(i); other dims copied.
function rotateRow(x: ArrayLike<number>, at: number, out: Float64Array, outAt: number, p: Pool, rotaryDim: number, layout: Layout, angle: (i: number) => number): void {
  for (let h = 0; h < p.kvHeads; h++) rotateHead(x, at + h * p.headDim, out, outAt + h * p.headDim, p.headDim, rotaryDim, layout, angle);
}

// float64: the same for one head (headDim values at src of x, written at dst of out).
function rotateHead(x: ArrayLike<number>, src: number, out: Float64Array, dst: number, headDim: number, rotaryDim: number, layout: Layout, angle: (i: number) => number): void {
  const half = rotaryDim / 2;
  for (let j = rotaryDim; j < headDim; j++) out[dst + j] = x[src + j]!;
  for (let i = 0; i < half; i++) {
    const lo = layout === 'adjacent' ? 2 * i : i;
    const hi = layout === 'adjacent' ? 2 * i + 1 : i + half;
    const a = angle(i);
    const x0 = x[src + lo]!;
    const x1 = x[src + hi]!;
    out[dst + lo] = x0 * Math.cos(a) - x1 * Math.sin(a);
    out[dst + hi] = x0 * Math.sin(a) + x1 * Math.cos(a);
  }
}

// Every layer's moves of a CacheFocus attach: per layer, a 39-token block stored in three pages
// moves by one shift into three fresh pages; plus a run with a different shift per row, read
// from and written to the middle of pages. Shifts up to +-100k.
function attachMoves(p: Pool, layers: number, seed: number): KeyMove[] {
  const r = rng(seed);
  const moves: KeyMove[] = [];
  let page = 0;
  for (let l = 0; l < layers; l++) {
    const start = Math.floor(r() * 50000);
    const shift = Math.floor((r() * 2 - 1) * 100000);
    const rows = [p.pageSize, p.pageSize, 7];
    let token = 0;
    for (const n of rows) {
      const from = Int32Array.from({ length: n }, (_, k) => start + token + k);
      moves.push({ srcPage: page, dstPage: page + 3, from, to: from.map((x) => Math.max(0, x + shift)) });
      token += n;
      page++;
    }
    page += 3;
  }
  const n = Math.min(5, p.pageSize - 1);
  moves.push({
    srcPage: page, srcRow: p.pageSize - n, dstPage: page + 1, dstRow: 1,
    from: randInts(n, 0, 100000, seed + 1), to: randInts(n, 0, 100000, seed + 2),
  });
  return moves;
}

function pagesFor(layers: number): number {
  return layers * 6 + 3;
}

describe('rerotatePages against float64', () => {
  const pool: Pool = { numPages: pagesFor(3), pageSize: 16, kvHeads: 2, headDim: 64 };
  for (const rope of Object.keys(ROPES)) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const rotaryDim of [64, 32]) {
        for (const dtype of ['f32', 'f16', 'bf16'] as const) {
          it(`${rope} ${layout} rotary ${rotaryDim}/64 ${dtype}: moved rows within one ${dtype} rounding, the rest untouched`, async () => {
            const invFreq = ROPES[rope]!(rotaryDim);
            const n = pool.numPages * pool.pageSize * rowElems(pool);
            const before = held(dtype, rand(n, 7 + rotaryDim));
            const t = Tensor.from(before, { shape: [pool.numPages, pool.pageSize, pool.kvHeads, pool.headDim], dtype });
            const moves = attachMoves(pool, 3, 11);
            const got = await ops.rerotatePages(t, moves, { invFreq, layout, rotaryDim }).toArray();
            // Expected: untouched rows as they were; moved rows rotated in float64.
            const want = Float64Array.from(before);
            for (const m of moves) {
              for (let k = 0; k < m.from.length; k++) {
                const d = m.to[k]! - m.from[k]!;
                rotateRow(before, slotAt(pool, m.srcPage, (m.srcRow ?? 0) + k), want, slotAt(pool, m.dstPage, (m.dstRow ?? 0) + k), pool, rotaryDim, layout, (i) => d * invFreq[i]!);
              }
            }
            // One rounding to the dtype, plus f32 arithmetic on |x0| + |x1| <= 2 (sin/cos to an
            // ulp or two, two products and a sum): 1e-6 absolute.
            const u = UNIT_ROUNDOFF[dtype];
            let worst = 0;
            for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (Math.abs(want[i]!) * u + 1e-6));
            expect(worst).toBeLessThanOrEqual(1);
            // Dimensions past the rotary width, and rows no run writes, keep their bits.
            const written = new Set(moves.flatMap((m) => Array.from(m.from, (_, k) => m.dstPage * pool.pageSize + (m.dstRow ?? 0) + k)));
            for (let slot = 0; slot < pool.numPages * pool.pageSize; slot++) {
              for (let e = 0; e < rowElems(pool); e++) {
                const i = slot * rowElems(pool) + e;
                if (!written.has(slot) || e % pool.headDim >= rotaryDim) {
                  if (got[i] !== want[i]) expect({ slot, e, got: got[i] }).toEqual({ slot, e, got: want[i] });
                }
              }
            }
          });
        }
      }
    }
  }

  it('writes into another pool with out, leaving the source pool as it was', async () => {
    const p: Pool = { numPages: 4, pageSize: 8, kvHeads: 1, headDim: 8 };
    const x = rand(4 * 8 * 8, 3);
    const src = Tensor.from(x, { shape: [4, 8, 1, 8] });
    const out = Tensor.from(rand(4 * 8 * 8, 4), { shape: [4, 8, 1, 8] });
    const outBefore = await out.toArray();
    const from = Int32Array.from([10, 11, 12]);
    expect(ops.rerotatePages(src, [{ srcPage: 1, srcRow: 2, dstPage: 1, dstRow: 2, from, to: [20, 21, 22] }], { out })).toBe(out);
    const got = await out.toArray();
    expect(await src.toArray()).toEqual(x);
    const want = Float64Array.from(outBefore);
    for (let k = 0; k < 3; k++) rotateRow(x, slotAt(p, 1, 2 + k), want, slotAt(p, 1, 2 + k), p, 8, 'half', (i) => 10 / Math.pow(10000, (2 * i) / 8));
    for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThan(1e-6);
  });

  it('moving by zero copies keys bit for bit, in place too', async () => {
    const x = rand(3 * 4 * 2 * 16, 5, 100);
    const t = Tensor.from(x, { shape: [3, 4, 2, 16], dtype: 'bf16' });
    const before = await t.toArray();
    const pos = Int32Array.from([70000, 5, 123456, 9]);
    ops.rerotatePages(t, [{ srcPage: 0, dstPage: 2, from: pos, to: pos }, { srcPage: 1, dstPage: 1, from: pos, to: pos }]);
    const got = await t.toArray();
    expect(got.subarray(2 * 128)).toEqual(before.subarray(0, 128));
    expect(got.subarray(0, 2 * 128)).toEqual(before.subarray(0, 2 * 128));
  });
});

// The precision goal of a move: a bf16 (or f16) key stored at p and moved to q is off the exact
// key at q by at most 1.5x what the same key rotated at q directly and rounded once is off. A
// stored key already carries one rounding (at p), and the move adds one: two roundings are
// about sqrt(2) = 1.41x one, so 1.5x leaves the move's own arithmetic very little room. A plain
// f32 angle (q - p) * f misses it at large shifts: its error grows with the angle.
describe('rerotatePages precision: moved keys next to keys computed at their new position', () => {
  const p: Pool = { numPages: 128, pageSize: 16, kvHeads: 2, headDim: 128 };
  for (const dtype of ['bf16', 'f16'] as const) {
    for (const rope of Object.keys(ROPES)) {
      it(`${dtype} ${rope}: error of p -> q within 1.5x of the direct rounding at q, shifts up to 100k`, async () => {
        const invFreq = ROPES[rope]!(p.headDim);
        const tokens = (p.numPages / 2) * p.pageSize;
        const raw = rand(tokens * rowElems(p), 21); // un-rotated keys
        const from = randInts(tokens, 0, 100000, 22);
        const to = randInts(tokens, 0, 100000, 23);
        // Exact keys at p (stored, rounded once) and at q (the target) in float64.
        const atP = new Float64Array(p.numPages * p.pageSize * rowElems(p));
        const atQ = new Float64Array(tokens * rowElems(p));
        for (let t = 0; t < tokens; t++) {
          rotateRow(raw, t * rowElems(p), atP, t * rowElems(p), p, p.headDim, 'half', (i) => from[t]! * invFreq[i]!);
          rotateRow(raw, t * rowElems(p), atQ, t * rowElems(p), p, p.headDim, 'half', (i) => to[t]! * invFreq[i]!);
        }
        const pool = Tensor.from(Float32Array.from(atP), { shape: [p.numPages, p.pageSize, p.kvHeads, p.headDim], dtype });
        const half = p.numPages / 2;
        const moves: KeyMove[] = Array.from({ length: half }, (_, page) => ({
          srcPage: page, dstPage: half + page,
          from: from.subarray(page * p.pageSize, (page + 1) * p.pageSize), to: to.subarray(page * p.pageSize, (page + 1) * p.pageSize),
        }));
        const got = (await ops.rerotatePages(pool, moves, { invFreq }).toArray()).subarray(tokens * rowElems(p));
        const direct = held(dtype, Float32Array.from(atQ));
        let moved = 0;
        let once = 0;
        let far = 0;
        let farOnce = 0;
        for (let i = 0; i < atQ.length; i++) {
          const e = (got[i]! - atQ[i]!) ** 2;
          const e1 = (direct[i]! - atQ[i]!) ** 2;
          moved += e;
          once += e1;
          const t = Math.floor(i / rowElems(p));
          if (Math.abs(to[t]! - from[t]!) >= 50000) {
            far += e;
            farOnce += e1;
          }
        }
        expect(Math.sqrt(moved / once)).toBeLessThanOrEqual(1.5);
        expect(Math.sqrt(far / farOnce)).toBeLessThanOrEqual(1.5); // the largest shifts alone
        expect(Math.sqrt(moved / once)).toBeGreaterThan(1.2); // two roundings are not one: the check has teeth
      });
    }
  }
});

// Repeated moves p -> q -> r -> p: each hop rotates by an angle carried to f32 accuracy and
// rounds once, so the round trip comes back to the stored key up to the roundings of its three
// hops (no drift of the angle): f32 to ~1e-7 relative; 16-bit within sqrt(3) roundings (RMS),
// every hop within one rounding of the exact rotation of its own input.
describe('rerotatePages round trips', () => {
  const p: Pool = { numPages: 4 * 8, pageSize: 16, kvHeads: 2, headDim: 128 };
  const invFreq = ROPES.llama3!(128);
  const tokens = 8 * p.pageSize;
  const hop = (page0: number, page1: number, a: Int32Array, b: Int32Array): KeyMove[] =>
    Array.from({ length: 8 }, (_, i) => ({
      srcPage: page0 + i, dstPage: page1 + i,
      from: a.subarray(i * p.pageSize, (i + 1) * p.pageSize), to: b.subarray(i * p.pageSize, (i + 1) * p.pageSize),
    }));
  for (const dtype of ['f32', 'bf16', 'f16'] as const) {
    it(`${dtype}: p -> q -> r -> p returns within the roundings of its hops`, async () => {
      const [P, Q, R] = [randInts(tokens, 0, 131072, 31), randInts(tokens, 0, 131072, 32), randInts(tokens, 0, 131072, 33)];
      const x = rand(p.numPages * p.pageSize * rowElems(p), 34);
      const pool = Tensor.from(x, { shape: [p.numPages, p.pageSize, p.kvHeads, p.headDim], dtype });
      const stored = ((await pool.toArray()) as Float32Array).slice(0, tokens * rowElems(p));
      const steps: Float32Array[] = [stored];
      for (const [i, [a, b]] of ([[P, Q], [Q, R], [R, P]] as const).entries()) {
        ops.rerotatePages(pool, hop(8 * i, 8 * (i + 1), a, b), { invFreq });
        steps.push(((await pool.toArray()) as Float32Array).slice(8 * (i + 1) * p.pageSize * rowElems(p), 8 * (i + 2) * p.pageSize * rowElems(p)));
      }
      // Every hop: within one rounding (plus f32 arithmetic) of the exact rotation of its input.
      const u = UNIT_ROUNDOFF[dtype];
      const hopError: number[] = [];
      for (const [i, [a, b]] of ([[P, Q], [Q, R], [R, P]] as const).entries()) {
        const want = new Float64Array(tokens * rowElems(p));
        for (let t = 0; t < tokens; t++) rotateRow(steps[i]!, t * rowElems(p), want, t * rowElems(p), p, 128, 'half', (j) => (b[t]! - a[t]!) * invFreq[j]!);
        let worst = 0;
        let sq = 0;
        for (let j = 0; j < want.length; j++) {
          worst = Math.max(worst, Math.abs(steps[i + 1]![j]! - want[j]!) / (Math.abs(want[j]!) * u + 1e-6));
          sq += (steps[i + 1]![j]! - want[j]!) ** 2;
        }
        expect(worst).toBeLessThanOrEqual(1);
        hopError.push(sq);
      }
      // Back at p: off the stored key by no more than the hops' own roundings together (they
      // are independent, so their squares add); nothing else accumulates.
      const back = steps[3]!;
      let drift = 0;
      let norm = 0;
      for (let j = 0; j < stored.length; j++) {
        drift += (back[j]! - stored[j]!) ** 2;
        norm += stored[j]! ** 2;
      }
      expect(drift).toBeLessThanOrEqual(1.25 * hopError.reduce((a, b) => a + b));
      if (dtype === 'f32') expect(Math.sqrt(drift / norm)).toBeLessThan(3e-7);
    });
  }
});

describe('rerotatePages is rerotate, fused', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const [headDim, rotaryDim] of [[64, 64], [80, 40], [6, 4]] as const) {
        it(`${dtype} ${layout} head ${headDim} rotary ${rotaryDim}: the same bits as one rerotate per run`, async () => {
          const pool: Pool = { numPages: pagesFor(4), pageSize: 16, kvHeads: 3, headDim };
          const x = rand(pool.numPages * pool.pageSize * rowElems(pool), headDim);
          const shape = [pool.numPages, pool.pageSize, pool.kvHeads, headDim];
          const moves = attachMoves(pool, 4, 41);
          const invFreq = ROPES.yarn!(rotaryDim);
          const fused = await ops.rerotatePages(Tensor.from(x, { shape, dtype }), moves, { invFreq, layout, rotaryDim }).toArray();
          const perRun = await ops.rerotatePages(Tensor.from(x, { shape, dtype }), moves, { invFreq, layout, rotaryDim, perRun: true }).toArray();
          expect(fused).toEqual(perRun);
          // and rerotate over the same rows, taken out of the pool
          const m = moves[0]!;
          const rows = Tensor.from(x.subarray(slotAt(pool, m.srcPage, 0), slotAt(pool, m.srcPage + 1, 0)), { shape: [pool.pageSize, pool.kvHeads, headDim], dtype });
          const one = await ops.rerotate(rows, m.from as Int32Array, m.to as Int32Array, { invFreq, layout, rotaryDim }).toArray();
          expect(fused.subarray(slotAt(pool, m.dstPage, 0), slotAt(pool, m.dstPage + 1, 0))).toEqual(one);
        });
      }
    }
  }
});

// Per-head moves (KeyMove.head: one KV head of the rows), as per-head cache policies (the
// Cascading KV cache) make them: the heads of the same rows go to different rows and positions,
// in one launch. Heads 0 and 2 of page 0 go to the same rows of page 3, head 1 of other rows of
// page 0 to rows of page 3 those write too; head 3 is moved in place (one shift for every row);
// heads 1 and 0 of page 2 go to overlapping rows of page 4; and every head of page 5's first
// rows goes to page 6 in the same launch.
function headMoves(seed: number): KeyMove[] {
  const pos = (n: number, s: number) => randInts(n, 0, 100000, seed + s);
  return [
    { srcPage: 0, dstPage: 3, head: 0, from: pos(8, 1), to: pos(8, 2) },
    { srcPage: 0, dstPage: 3, head: 2, from: pos(8, 3), to: pos(8, 4) },
    { srcPage: 0, srcRow: 2, dstPage: 3, dstRow: 0, head: 1, from: pos(5, 5), to: pos(5, 6) },
    { srcPage: 1, srcRow: 2, dstPage: 1, dstRow: 2, head: 3, from: [10, 11, 12, 13], to: [70010, 70011, 70012, 70013] },
    { srcPage: 2, dstPage: 4, dstRow: 2, head: 1, from: pos(4, 7), to: pos(4, 8) },
    { srcPage: 2, srcRow: 4, dstPage: 4, dstRow: 4, head: 0, from: pos(4, 9), to: pos(4, 10) },
    { srcPage: 5, dstPage: 6, dstRow: 3, from: pos(5, 11), to: pos(5, 12) },
  ];
}

/** The heads a move rotates. */
const headsOf = (m: KeyMove, p: Pool): number[] => (m.head === undefined ? Array.from({ length: p.kvHeads }, (_, h) => h) : [m.head]);

describe('rerotatePages per-head moves against float64', () => {
  for (const dtype of ['f32', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const rotaryDim of [32, 16]) {
        for (const target of ['in place', 'into an out pool'] as const) {
          it(`${dtype} ${layout} rotary ${rotaryDim}/32 ${target}: each named head within one rounding, every other head untouched`, async () => {
            const pool: Pool = { numPages: 7, pageSize: 8, kvHeads: 4, headDim: 32 };
            const shape = [pool.numPages, pool.pageSize, pool.kvHeads, pool.headDim];
            const n = pool.numPages * pool.pageSize * rowElems(pool);
            const before = held(dtype, rand(n, 51 + rotaryDim));
            const moves = headMoves(52);
            const invFreq = ROPES.llama3!(rotaryDim);
            const opts = { invFreq, layout, rotaryDim };
            // The pool written: the source pool itself, or another pool with its own contents.
            let got: Float32Array;
            let base: Float32Array;
            if (target === 'in place') {
              got = (await ops.rerotatePages(Tensor.from(before, { shape, dtype }), moves, opts).toArray()) as Float32Array;
              base = before;
            } else {
              base = held(dtype, rand(n, 53));
              const src = Tensor.from(before, { shape, dtype });
              const out = Tensor.from(base, { shape, dtype });
              expect(ops.rerotatePages(src, moves, { ...opts, out })).toBe(out);
              got = (await out.toArray()) as Float32Array;
              expect(await src.toArray()).toEqual(before);
            }
            const want = Float64Array.from(base);
            const written = new Set<number>(); // slot * kvHeads + head
            for (const m of moves) {
              for (let k = 0; k < m.from.length; k++) {
                const d = m.to[k]! - m.from[k]!;
                for (const h of headsOf(m, pool)) {
                  const src = slotAt(pool, m.srcPage, (m.srcRow ?? 0) + k) + h * pool.headDim;
                  const dst = slotAt(pool, m.dstPage, (m.dstRow ?? 0) + k) + h * pool.headDim;
                  rotateHead(before, src, want, dst, pool.headDim, rotaryDim, layout, (i) => d * invFreq[i]!);
                  written.add((m.dstPage * pool.pageSize + (m.dstRow ?? 0) + k) * pool.kvHeads + h);
                }
              }
            }
            expect(written.size).toBe(8 + 8 + 5 + 4 + 4 + 4 + 5 * 4); // no (row, head) written twice
            const u = UNIT_ROUNDOFF[dtype];
            let worst = 0;
            for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (Math.abs(want[i]!) * u + 1e-6));
            expect(worst).toBeLessThanOrEqual(1);
            // Heads no move names (in rows other heads of which move), and the dimensions past
            // the rotary width, keep their bits.
            for (let slot = 0; slot < pool.numPages * pool.pageSize; slot++) {
              for (let e = 0; e < rowElems(pool); e++) {
                const h = Math.floor(e / pool.headDim);
                const i = slot * rowElems(pool) + e;
                if (!written.has(slot * pool.kvHeads + h) || e % pool.headDim >= rotaryDim) {
                  if (got[i] !== want[i]) expect({ slot, h, e, got: got[i] }).toEqual({ slot, h, e, got: want[i] });
                }
              }
            }
            // A one-head move gives its head the bits the same move of every head gives it.
            for (const m of moves) {
              if (m.head === undefined) continue;
              const { head, ...all } = m;
              const every = await ops.rerotatePages(Tensor.from(before, { shape, dtype }), [all], { ...opts, out: Tensor.from(base, { shape, dtype }) }).toArray();
              for (let k = 0; k < m.from.length; k++) {
                const at = slotAt(pool, m.dstPage, (m.dstRow ?? 0) + k) + head! * pool.headDim;
                expect(got.subarray(at, at + pool.headDim)).toEqual(every.subarray(at, at + pool.headDim));
              }
            }
          });
        }
      }
    }
  }

  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const [headDim, rotaryDim] of [[64, 64], [80, 40], [6, 4]] as const) {
        it(`${dtype} ${layout} head ${headDim} rotary ${rotaryDim}: one move per head, every head, is the move of all heads, bit for bit`, async () => {
          const pool: Pool = { numPages: pagesFor(2), pageSize: 16, kvHeads: 3, headDim };
          const x = rand(pool.numPages * pool.pageSize * rowElems(pool), 61 + headDim);
          const shape = [pool.numPages, pool.pageSize, pool.kvHeads, headDim];
          const moves = attachMoves(pool, 2, 62);
          const split = moves.flatMap((m) => [2, 0, 1].map((head) => ({ ...m, head })));
          const invFreq = ROPES.yarn!(rotaryDim);
          const all = await ops.rerotatePages(Tensor.from(x, { shape, dtype }), moves, { invFreq, layout, rotaryDim }).toArray();
          const perHead = await ops.rerotatePages(Tensor.from(x, { shape, dtype }), split, { invFreq, layout, rotaryDim }).toArray();
          expect(perHead).toEqual(all);
        });
      }
    }
  }
});

function refuses(f: () => unknown, message: RegExp): void {
  expect(f).toThrow(InvalidArgumentError);
  expect(f).toThrow(message);
}

describe('rerotatePages per-head move arguments', () => {
  const pool = () => Tensor.zeros([4, 8, 2, 16]);
  const pos = [1, 2, 3];
  it('refuses two moves that write the same row of the same head, or of one head and of every head', () => {
    const twice = /moves\[1\] writes page 1 row 2, which another row of the moves writes too/;
    refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, head: 1, from: pos, to: pos }, { srcPage: 2, dstPage: 1, dstRow: 2, head: 1, from: pos, to: pos }]), twice);
    refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, from: pos, to: pos }, { srcPage: 2, dstPage: 1, dstRow: 2, head: 0, from: pos, to: pos }]), twice);
    refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, head: 1, from: pos, to: pos }, { srcPage: 2, dstPage: 1, dstRow: 2, from: pos, to: pos }]), twice);
    // With an out pool as well: the rows written are the same.
    refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, head: 0, from: pos, to: pos }, { srcPage: 0, dstPage: 1, head: 0, from: pos, to: [4, 5, 6] }], { out: pool() }), /moves\[1\] writes page 1 row 0/);
  });

  it('accepts moves of different heads that write the same rows, or read rows another head writes', async () => {
    const x = rand(4 * 8 * 2 * 16, 63);
    const shape = [4, 8, 2, 16];
    // Head 0 and head 1 of page 0 to the same rows of page 1; head 1 of page 1 in place (the
    // rows head 0 is written to) and head 0 of page 2 read where head 1 of page 2 is written.
    const moves: KeyMove[] = [
      { srcPage: 0, dstPage: 1, head: 0, from: pos, to: [7, 8, 9] },
      { srcPage: 0, dstPage: 1, dstRow: 1, head: 1, from: pos, to: [9, 9, 9] },
      { srcPage: 1, srcRow: 5, dstPage: 1, dstRow: 5, head: 1, from: pos, to: [30, 31, 32] },
      { srcPage: 2, dstPage: 3, head: 0, from: pos, to: [40, 41, 42] },
      { srcPage: 3, dstPage: 2, head: 1, from: pos, to: [50, 51, 52] },
    ];
    using plan = ops.keyMoves(moves, { numPages: 4, pageSize: 8 });
    expect([plan.count, plan.rows, plan.overlapsReads, plan.maxHead]).toEqual([5, 15, false, 1]);
    const inPlace = await ops.rerotatePages(Tensor.from(x, { shape }), moves).toArray();
    const out = await ops.rerotatePages(Tensor.from(x, { shape }), moves, { out: Tensor.from(x, { shape }) }).toArray();
    expect(inPlace).toEqual(out);
    expect(await ops.rerotatePages(Tensor.from(x, { shape }), plan).toArray()).toEqual(out);
  });

  it('a chain through one head needs an out pool; through two heads it does not', () => {
    const chain = (second: number | undefined): KeyMove[] => [
      { srcPage: 0, dstPage: 1, head: 1, from: pos, to: pos },
      { srcPage: 1, dstPage: 2, head: second, from: pos, to: pos },
    ];
    const give = /the moves write rows that other rows of the moves read: give an out pool/;
    refuses(() => ops.rerotatePages(pool(), chain(1)), give);
    refuses(() => ops.rerotatePages(pool(), chain(undefined)), give); // every head includes head 1
    expect(() => ops.rerotatePages(pool(), chain(1), { out: pool() })).not.toThrow();
    expect(() => ops.rerotatePages(pool(), chain(0))).not.toThrow();
    expect(ops.keyMoves(chain(0), { numPages: 4, pageSize: 8 }).overlapsReads).toBe(false);
    expect(ops.keyMoves(chain(1), { numPages: 4, pageSize: 8 }).overlapsReads).toBe(true);
  });

  it('refuses a head outside the pool, and one that is not an index', async () => {
    refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, head: 2, from: pos, to: pos }]), /a move names KV head 2 but the pool has 2/);
    for (const head of [-1, 0.5, NaN, '1', 2 ** 31]) {
      refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, head: head as number, from: pos, to: pos }]), /moves\[0\]\.head/);
    }
    // Moves made once: the head is checked against the pool they are used on.
    using plan = ops.keyMoves([{ srcPage: 0, dstPage: 1, head: 3, from: pos, to: pos }], { numPages: 4, pageSize: 8 });
    expect(plan.maxHead).toBe(3);
    const small = Tensor.from(rand(4 * 8 * 2 * 16, 64), { shape: [4, 8, 2, 16] });
    const x = await small.toArray();
    refuses(() => ops.rerotatePages(small, plan), /a move names KV head 3 but the pool has 2/);
    expect(await small.toArray()).toEqual(x); // nothing was written
    expect(() => ops.rerotatePages(Tensor.zeros([4, 8, 4, 16]), plan)).not.toThrow();
  });

  it('perRun (one rerotate per run, every head) refuses moves with a head', () => {
    refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, head: 1, from: pos, to: pos }], { perRun: true }), /perRun.*head/);
    refuses(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, from: pos, to: pos }, { srcPage: 2, dstPage: 3, head: 0, from: pos, to: pos }], { perRun: true }), /perRun/);
    expect(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, from: pos, to: pos }], { perRun: true })).not.toThrow();
  });

  it('the binding checks the head of host runs (perRunHost) against the pool', () => {
    // Through the raw binding: ops.rerotatePages already refuses these before queueing.
    const raw = (head: number) => {
      const p = pool();
      const run = Int32Array.of(0, 0, 1, 0, 3, 0, 3, head); // RerotateRun: 3 rows of page 0 to page 1
      const [freq, runs, positions] = [Tensor.from(rand(8, 1)), Tensor.from(run), Tensor.from(Int32Array.of(1, 2, 3, 4, 5, 6))];
      native().ops.rerotatePages(p.handle(), p.handle(), freq.handle(), runs.handle(), positions.handle(), {
        numPages: 4, pageSize: 8, kvHeads: 2, headDim: 16, rotaryDim: 16, layout: 'half', numRuns: 1,
      }, run);
    };
    expect(() => raw(0)).not.toThrow();
    refuses(() => raw(3), /run 0 names a KV head outside \[0, 2\]/);
    refuses(() => raw(-1), /run 0 names a KV head outside/);
    refuses(() => raw(2), /perRun moves every KV head of its rows/);
  });
});

describe('rerotatePages arguments', () => {
  const pool = () => Tensor.zeros([4, 8, 2, 16]);
  const pos = [1, 2, 3];
  it('names the move that is wrong', () => {
    expect(() => ops.rerotatePages(pool(), [{ srcPage: 4, dstPage: 0, from: pos, to: pos }])).toThrow(/moves\[0\]\.srcPage must be an integer in \[0, 4\)/);
    expect(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, dstRow: 6, from: pos, to: pos }])).toThrow(/moves\[0\]\.dstRow/);
    expect(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, from: pos, to: [1, 2] }])).toThrow(/from has 3 positions but to has 2/);
    expect(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, from: [0.5, 1, 2], to: pos }])).toThrow(InvalidArgumentError);
    expect(() => ops.rerotatePages(pool(), [{ srcPage: 0, dstPage: 1, from: pos, to: pos }, { srcPage: 2, dstPage: 1, dstRow: 2, from: pos, to: pos }])).toThrow(
      /moves\[1\] writes page 1 row 2, which another row of the moves writes too/,
    );
    // A chain (page 0 -> 1 while 1 -> 2) depends on the order rows are done in: only with out.
    const chain = [{ srcPage: 0, dstPage: 1, from: pos, to: pos }, { srcPage: 1, dstPage: 2, from: pos, to: pos }];
    expect(() => ops.rerotatePages(pool(), chain)).toThrow(/the moves write rows that other rows of the moves read: give an out pool/);
    expect(() => ops.rerotatePages(pool(), chain, { out: pool() })).not.toThrow();
  });
  it('checks the pool, out and the rope options', () => {
    expect(() => ops.rerotatePages(Tensor.zeros([4, 8, 16]), [])).toThrow(/expected rank 4/);
    expect(() => ops.rerotatePages(Tensor.zeros([4, 8, 2, 7]), [])).toThrow(/must be even/);
    expect(() => ops.rerotatePages(pool(), [], { rotaryDim: 3 })).toThrow(/rotaryDim: expected an even integer in \[2, 16\]/);
    expect(() => ops.rerotatePages(pool(), [], { rotaryDim: 8, invFreq: new Float32Array(8) })).toThrow(/invFreq: expected 4 values/);
    expect(() => ops.rerotatePages(pool(), [], { out: Tensor.zeros([4, 8, 2, 16], { dtype: 'bf16' }) })).toThrow(/out must have the pool's shape/);
    expect(() => ops.rerotatePages(pool(), [], { inPlace: true } as never)).toThrow(/unknown option 'inPlace'/);
  });
  it('ops.keyMoves checks and uploads moves once for many calls, on pools of its geometry only', async () => {
    const x = rand(4 * 8 * 2 * 16, 2);
    const shape = [4, 8, 2, 16];
    using plan = ops.keyMoves([{ srcPage: 0, dstPage: 3, from: pos, to: [7, 8, 9] }], { numPages: 4, pageSize: 8 });
    expect([plan.count, plan.rows, plan.overlapsReads]).toEqual([1, 3, false]);
    const once = await ops.rerotatePages(Tensor.from(x, { shape }), [{ srcPage: 0, dstPage: 3, from: pos, to: [7, 8, 9] }]).toArray();
    const a = await ops.rerotatePages(Tensor.from(x, { shape }), plan).toArray();
    const b = await ops.rerotatePages(Tensor.from(x, { shape }), plan).toArray();
    expect(a).toEqual(once);
    expect(b).toEqual(once);
    expect(() => ops.rerotatePages(Tensor.zeros([5, 8, 2, 16]), plan)).toThrow(/moves were made for 4 pages of 8 rows on cpu, the pool has 5 of 8 on cpu/);
    expect(() => ops.keyMoves([], { numPages: 4, pageSize: 0 })).toThrow(/keyMoves: pool/);
  });
  it('an empty move list does nothing', async () => {
    const x = rand(4 * 8 * 2 * 16, 1);
    const t = Tensor.from(x, { shape: [4, 8, 2, 16] });
    expect(await ops.rerotatePages(t, []).toArray()).toEqual(x);
  });
});

