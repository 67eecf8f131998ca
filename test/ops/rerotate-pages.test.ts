// rerotatePages, the fused re-rotation of paged keys (CacheFocus): every layer's moved rows in
// one launch, against float64 rotations, for the rope scalings the engine loads (default,
// linear, llama3, yarn: frequencies from lib/model/rope.ts), both pair layouts, partial rotary,
// f32/f16/bf16; the precision of bf16/f16 moves next to keys rotated directly at the target;
// round trips; and the same bits as one rerotate per run (the engine's former path).
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, type KeyMove, ops, Tensor } from '../../lib/index.js';
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
  const half = rotaryDim / 2;
  for (let h = 0; h < p.kvHeads; h++) {
    const src = at + h * p.headDim;
    const dst = outAt + h * p.headDim;
    for (let j = rotaryDim; j < p.headDim; j++) out[dst + j] = x[src + j]!;
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

