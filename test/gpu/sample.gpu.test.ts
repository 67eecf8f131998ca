// The sampling kernel on CUDA against its CPU twin, on the same logits, parameters and draws.
// The twin sorts and the kernel radix-searches, summing in different orders, so a draw could
// differ only where it lands within ~1e-16 of a boundary: the tokens must be equal.
import { describe, expect, it } from 'vitest';

import { Tensor } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { rand } from '../support/random.js';
import { hasCuda } from './gpu.js';

interface Row { temperature: number; topK?: number; topP?: number; minP?: number; penalty?: number; uniform?: number; penalize?: number[] }

/** SampleParams (kernels/sample.h) packed as bytes: f32, i32, f32, f32, f32, pad, f64. */
function packParams(rows: Row[]): Uint8Array {
  const view = new DataView(new ArrayBuffer(rows.length * 32));
  rows.forEach((r, i) => {
    const o = i * 32;
    view.setFloat32(o, r.temperature, true);
    view.setInt32(o + 4, r.topK ?? 0, true);
    view.setFloat32(o + 8, r.topP ?? 1, true);
    view.setFloat32(o + 12, r.minP ?? 0, true);
    view.setFloat32(o + 16, r.penalty ?? 1, true);
    view.setFloat64(o + 24, r.uniform ?? 0, true);
  });
  return new Uint8Array(view.buffer);
}

async function sample(device: 'cpu' | 'cuda', logits: Float32Array, vocab: number, rows: Row[]): Promise<Int32Array> {
  const start = [0];
  const ids: number[] = [];
  for (const r of rows) {
    ids.push(...(r.penalize ?? []));
    start.push(ids.length);
  }
  if (ids.length === 0) ids.push(0); // a tensor needs an element; no row's range covers it
  const t = {
    logits: Tensor.from(logits, { shape: [rows.length, vocab], device }),
    params: Tensor.from(packParams(rows), { dtype: 'u8', device }),
    start: Tensor.from(Int32Array.from(start), { device }),
    ids: Tensor.from(Int32Array.from(ids), { device }),
    out: Tensor.zeros([rows.length], { dtype: 'i32', device }),
  };
  native().ops.sample(t.logits.handle(), t.params.handle(), t.start.handle(), t.ids.handle(), t.out.handle(),
    { rows: rows.length, vocab, penalties: ids.length });
  const out = (await t.out.toArray()) as Int32Array;
  for (const x of Object.values(t)) x.dispose();
  return out;
}

describe.skipIf(!hasCuda)('sample (CUDA vs CPU)', () => {
  const draws = (n: number, seed: number) => Array.from(rand(n, seed, 1), (x) => Math.abs(x) % 1);
  for (const vocab of [7, 1000, 32000, 152064]) {
    it(`vocab ${vocab}: greedy, temperature, top-k, top-p, min-p and penalties agree on 64 draws each`, async () => {
      const u = draws(64, vocab);
      const settings: Row[] = [
        { temperature: 0 },
        { temperature: 0, penalty: 1.5, penalize: [0, 3, 5] },
        { temperature: 1 },
        { temperature: 0.7, topK: 40 },
        { temperature: 0.9, topP: 0.9 },
        { temperature: 1.1, topK: 50, topP: 0.8, minP: 0.05 },
        { temperature: 0.5, minP: 0.1, penalty: 1.3, penalize: [1, 2, 4, 6] },
      ];
      for (const s of settings) {
        const rows: Row[] = u.map((uniform) => ({ ...s, uniform, penalize: s.penalize?.filter((t) => t < vocab) }));
        // Logits spread like a model's (a few units), every row different.
        const logits = rand(rows.length * vocab, vocab + rows.length, 4);
        const cpu = await sample('cpu', logits, vocab, rows);
        const cuda = await sample('cuda', logits, vocab, rows);
        expect(Array.from(cuda), JSON.stringify(s)).toEqual(Array.from(cpu));
      }
    });
  }

  it('ties go to the lower id, and NaN never wins greedy', async () => {
    // NaN only where greedy reads it: the twin's sort has no order for NaN.
    const greedy = [NaN, 2, 5, 5, -1, 5, NaN, 0];
    const sampled = [1, 2, 5, 5, -1, 5, 0, 0];
    const rows: Row[] = [{ temperature: 0 }, { temperature: 1, topK: 3, uniform: 0.5 }, { temperature: 1, topK: 3, uniform: 0.99 }];
    const all = Float32Array.from([...greedy, ...sampled, ...sampled]);
    const cpu = await sample('cpu', all, greedy.length, rows);
    expect(Array.from(cpu)).toEqual([2, 3, 5]);
    expect(Array.from(await sample('cuda', all, greedy.length, rows))).toEqual(Array.from(cpu));
  });
});
