// rerotatePages on CUDA against its CPU twin: every layer's moves in one launch, both layouts,
// partial rotary, the vector widths the kernel picks (16-byte, narrower for odd head sizes),
// pages taller than one block's tile of rows, per-row shifts, runs in place, and rows no run
// names left alone.
import { describe, expect, it } from 'vitest';

import { type KeyMove, ops, Tensor } from '../../lib/index.js';
import { ropeParameters } from '../../lib/model/rope.js';
import { rand, randInts, rng } from '../support/random.js';
import { hasCuda, maxRelDiff } from './gpu.js';

// Per layer a 2.5-page block moved by one shift into fresh pages; a run with a shift per row
// between page middles; a page moved in place.
function moves(pageSize: number, layers: number, seed: number): { list: KeyMove[]; pages: number } {
  const r = rng(seed);
  const list: KeyMove[] = [];
  let page = 0;
  for (let l = 0; l < layers; l++) {
    const start = Math.floor(r() * 60000);
    const shift = Math.floor((r() * 2 - 1) * 100000);
    let token = 0;
    for (const n of [pageSize, pageSize, Math.ceil(pageSize / 2)]) {
      const from = Int32Array.from({ length: n }, (_, k) => start + token + k);
      list.push({ srcPage: page, dstPage: page + 3, from, to: from.map((x) => Math.max(0, x + shift)) });
      token += n;
      page++;
    }
    page += 3;
  }
  const n = Math.max(1, pageSize - 2);
  list.push({ srcPage: page, srcRow: 2, dstPage: page + 1, dstRow: 0, from: randInts(n, 0, 100000, seed + 1), to: randInts(n, 0, 100000, seed + 2) });
  const all = Int32Array.from({ length: pageSize }, (_, k) => 1000 + k);
  list.push({ srcPage: page + 2, dstPage: page + 2, from: all, to: all.map((x) => x + 77777) });
  return { list, pages: page + 4 };
}

describe.skipIf(!hasCuda)('rerotatePages (CUDA vs CPU)', () => {
  const shapes = [
    { pageSize: 16, kvHeads: 8, headDim: 128, rotaryDim: 128 },
    { pageSize: 16, kvHeads: 1, headDim: 64, rotaryDim: 32 },
    { pageSize: 40, kvHeads: 2, headDim: 80, rotaryDim: 40 }, // taller than a tile; 4-wide vectors
    { pageSize: 5, kvHeads: 3, headDim: 6, rotaryDim: 4 }, // 1- and 2-wide vectors
  ];
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const { pageSize, kvHeads, headDim, rotaryDim } of shapes) {
        it(`${dtype} ${layout} pages [${pageSize}, ${kvHeads}, ${headDim}] rotary ${rotaryDim}`, async () => {
          const { list, pages } = moves(pageSize, 4, headDim + pageSize);
          const shape = [pages, pageSize, kvHeads, headDim];
          const x = rand(pages * pageSize * kvHeads * headDim, headDim);
          const invFreq = ropeParameters({
            headDim: rotaryDim, ropeTheta: 500000, maxPositionEmbeddings: 131072,
            ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
          }).invFreq;
          const opts = { invFreq, layout, rotaryDim };
          const cpu = (await ops.rerotatePages(Tensor.from(x, { shape, dtype }), list, opts).toArray()) as Float32Array;
          const cuda = (await ops.rerotatePages(Tensor.from(x, { shape, dtype, device: 'cuda' }), list, opts).toArray()) as Float32Array;
          const before = (await Tensor.from(x, { shape, dtype }).toArray()) as Float32Array;
          // Same formula on both sides; sinf/cosf (and fma contraction) may differ by an ulp,
          // which a 16-bit result shows at most as one ulp, rarely.
          expect(maxRelDiff(cuda, cpu, 1e-2)).toBeLessThan(dtype === 'f32' ? 1e-5 : 1e-2);
          let differ = 0;
          for (let i = 0; i < cpu.length; i++) if (cuda[i] !== cpu[i]) differ++;
          if (dtype !== 'f32') expect(differ / cpu.length).toBeLessThan(0.01);
          // Rows nobody writes keep their bits (the copied dimensions of moved rows are exact on
          // both sides, so the comparison above holds them to the bit).
          const row = kvHeads * headDim;
          const written = new Set(list.flatMap((m) => Array.from(m.from, (_, k) => m.dstPage * pageSize + (m.dstRow ?? 0) + k)));
          for (let slot = 0; slot < pages * pageSize; slot++) {
            if (written.has(slot)) continue;
            const got = cuda.subarray(slot * row, (slot + 1) * row);
            if (!got.every((v, e) => v === before[slot * row + e])) expect({ slot, got }).toEqual({ slot, got: before.subarray(slot * row, (slot + 1) * row) });
          }
          // One rerotate per run on the device: the same arithmetic, to the ulp.
          const perRun = (await ops.rerotatePages(Tensor.from(x, { shape, dtype, device: 'cuda' }), list, { ...opts, perRun: true }).toArray()) as Float32Array;
          expect(maxRelDiff(cuda, perRun, 1e-2)).toBeLessThan(dtype === 'f32' ? 1e-5 : 1e-2);
        });
      }
    }
  }

  it('heads of two dimensions: 2-wide vectors, adjacent pairs', async () => {
    const shape = [6, 4, 1, 2];
    const x = rand(6 * 4 * 2, 9);
    const list: KeyMove[] = [{ srcPage: 0, dstPage: 3, from: [1, 2, 3, 4], to: [100001, 5, 70000, 4] }];
    const cpu = (await ops.rerotatePages(Tensor.from(x, { shape }), list, { layout: 'adjacent' }).toArray()) as Float32Array;
    const cuda = (await ops.rerotatePages(Tensor.from(x, { shape, device: 'cuda' }), list, { layout: 'adjacent' }).toArray()) as Float32Array;
    expect(maxRelDiff(cuda, cpu, 1e-2)).toBeLessThan(1e-5);
  });
});

// Per-head moves (KeyMove.head): every head of page 0 to the same rows of page 1, each at its own
// positions; the last head of page 2 in place by one shift (the uniform table); head 0 of the
// upper rows of page 4 to the lower rows of page 3 by per-row shifts; and every head of page 5
// to page 6, in the same launch.
function headMoves(pageSize: number, kvHeads: number, seed: number): { list: KeyMove[]; pages: number } {
  const list: KeyMove[] = [];
  for (let h = 0; h < kvHeads; h++) {
    list.push({ srcPage: 0, dstPage: 1, head: h, from: randInts(pageSize, 0, 100000, seed + 2 * h), to: randInts(pageSize, 0, 100000, seed + 2 * h + 1) });
  }
  const all = Int32Array.from({ length: pageSize }, (_, k) => 1000 + k);
  list.push({ srcPage: 2, dstPage: 2, head: kvHeads - 1, from: all, to: all.map((x) => x + 77777) });
  const n = Math.max(1, Math.floor(pageSize / 2));
  list.push({ srcPage: 4, srcRow: pageSize - n, dstPage: 3, head: 0, from: randInts(n, 0, 100000, seed + 100), to: randInts(n, 0, 100000, seed + 101) });
  list.push({ srcPage: 5, dstPage: 6, from: randInts(pageSize, 0, 100000, seed + 102), to: randInts(pageSize, 0, 100000, seed + 103) });
  return { list, pages: 7 };
}

describe.skipIf(!hasCuda)('rerotatePages per-head moves (CUDA vs CPU)', () => {
  const shapes = [
    { pageSize: 16, kvHeads: 8, headDim: 128, rotaryDim: 128 },
    { pageSize: 16, kvHeads: 1, headDim: 64, rotaryDim: 32 },
    { pageSize: 40, kvHeads: 2, headDim: 80, rotaryDim: 40 }, // taller than a tile; 4-wide vectors
    { pageSize: 5, kvHeads: 3, headDim: 6, rotaryDim: 4 }, // 1- and 2-wide vectors
  ];
  for (const dtype of ['f32', 'bf16'] as const) {
    for (const layout of ['half', 'adjacent'] as const) {
      for (const { pageSize, kvHeads, headDim, rotaryDim } of shapes) {
        it(`${dtype} ${layout} pages [${pageSize}, ${kvHeads}, ${headDim}] rotary ${rotaryDim}, in place and into an out pool`, async () => {
          const { list, pages } = headMoves(pageSize, kvHeads, headDim + pageSize);
          const shape = [pages, pageSize, kvHeads, headDim];
          const x = rand(pages * pageSize * kvHeads * headDim, headDim + 1);
          const y = rand(pages * pageSize * kvHeads * headDim, headDim + 2);
          const invFreq = ropeParameters({ headDim: rotaryDim, ropeTheta: 10000, ropeScaling: null, maxPositionEmbeddings: 4096 }).invFreq;
          const opts = { invFreq, layout, rotaryDim };
          const before = (await Tensor.from(x, { shape, dtype }).toArray()) as Float32Array;
          const outBefore = (await Tensor.from(y, { shape, dtype }).toArray()) as Float32Array;
          const written = new Set<number>(); // slot * kvHeads + head
          for (const m of list) {
            for (let k = 0; k < m.from.length; k++) {
              for (let h = 0; h < kvHeads; h++) if (m.head === undefined || m.head === h) written.add((m.dstPage * pageSize + (m.dstRow ?? 0) + k) * kvHeads + h);
            }
          }
          for (const device of ['in place', 'out'] as const) {
            const run = async (on: 'cpu' | 'cuda') => {
              const src = Tensor.from(x, { shape, dtype, device: on });
              const out = device === 'out' ? Tensor.from(y, { shape, dtype, device: on }) : undefined;
              return (await ops.rerotatePages(src, list, { ...opts, out }).toArray()) as Float32Array;
            };
            const cpu = await run('cpu');
            const cuda = await run('cuda');
            expect(maxRelDiff(cuda, cpu, 1e-2)).toBeLessThan(dtype === 'f32' ? 1e-5 : 1e-2);
            let differ = 0;
            for (let i = 0; i < cpu.length; i++) if (cuda[i] !== cpu[i]) differ++;
            if (dtype !== 'f32') expect(differ / cpu.length).toBeLessThan(0.01);
            // Heads no move names keep their bits, in rows other heads of which move too.
            const base = device === 'out' ? outBefore : before;
            for (let slot = 0; slot < pages * pageSize; slot++) {
              for (let h = 0; h < kvHeads; h++) {
                if (written.has(slot * kvHeads + h)) continue;
                const at = (slot * kvHeads + h) * headDim;
                const got = cuda.subarray(at, at + headDim);
                if (!got.every((v, e) => v === base[at + e])) expect({ slot, h, got }).toEqual({ slot, h, got: base.subarray(at, at + headDim) });
              }
            }
          }
          // One move per head, every head, is the move of all heads.
          const whole = [{ srcPage: 5, dstPage: 6, from: list.at(-1)!.from, to: list.at(-1)!.to }];
          const split = Array.from({ length: kvHeads }, (_, head) => ({ ...whole[0]!, head }));
          const a = (await ops.rerotatePages(Tensor.from(x, { shape, dtype, device: 'cuda' }), whole, opts).toArray()) as Float32Array;
          const b = (await ops.rerotatePages(Tensor.from(x, { shape, dtype, device: 'cuda' }), split, opts).toArray()) as Float32Array;
          expect(maxRelDiff(b, a, 1e-2)).toBeLessThan(dtype === 'f32' ? 1e-5 : 1e-2);
        });
      }
    }
  }
});
