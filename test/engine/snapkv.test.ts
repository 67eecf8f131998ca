// SnapKV on the engine (CPU, a fixture checkpoint with 2 KV heads): each KV head keeps the
// observation window and the tokens with the highest pooled attention from it, at positions by
// slot; the logits equal a float64 reference that applies the rule written here from
// the paper (independently of lib/policies/snapkv.ts) to its own attention; compressions keep
// recurring while generating, and nothing leaks.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, policies } from '../../lib/index.js';
import { streamIds, useGqaFixture } from '../support/gqa-fixture';
import { maxDiff } from '../support/compare';

const LAYERS = 3;
const fx = useGqaFixture(LAYERS);
const ids = streamIds;

// SnapKV from the paper and the authors' SnapKVCluster: scores = the observation window's
// attention summed over its rows (and here over the GQA group); avg_pool1d(kernel, padding
// kernel // 2, stride 1, zeros counted); top (budget - window) of the non-window tokens; the
// window kept. Compression when more than `budget` are held and `window` rows have been scored.
function snapReference(budget: number, window: number, kernel: number) {
  const acc = new Map<string, Map<number, number>>();
  let rows = 0;
  let fresh = false;
  let compress = false;
  return (layer: number, head: number, held: number[], scores: Float64Array, count: number): number[] => {
    if (layer === 0 && head === 0) {
      if (count >= window) [fresh, rows] = [true, window];
      else if (held.length <= budget) [fresh, rows] = [true, 0];
      else [fresh, rows] = [rows === 0, rows + count];
      compress = held.length > budget && rows >= window;
    }
    const key = `${layer}/${head}`;
    const a = fresh || !acc.has(key) ? new Map<number, number>() : acc.get(key)!;
    held.forEach((t, i) => a.set(t, (a.get(t) ?? 0) + scores[i]!));
    acc.set(key, a);
    if (!compress) return held;
    const candidates = held.slice(0, held.length - window);
    const raw = candidates.map((t) => a.get(t)!);
    const pooled = raw.map((_, i) => {
      let sum = 0;
      for (let d = 0; d < kernel; d++) {
        const j = i - Math.floor(kernel / 2) + d;
        if (j >= 0 && j < raw.length) sum += raw[j]!;
      }
      return sum / kernel;
    });
    const order = candidates.map((_, i) => i).sort((x, y) => pooled[y]! - pooled[x]! || x - y);
    const keep = order.slice(0, budget - window).sort((x, y) => x - y).map((i) => candidates[i]!);
    acc.delete(key);
    if (layer === LAYERS - 1 && head === fx.reference.config.numKvHeads - 1) rows = 0;
    return [...keep, ...held.slice(held.length - window)];
  };
}

describe('SnapKV against the float64 reference', () => {
  it('a prompt compressed by its observation window, then decoding with recurring compressions', async () => {
    const [budget, window, kernel] = [16, 4, 3];
    const prompt = ids(40, 2);
    const decode = ids(30, 4);
    const tokens = [...prompt, ...decode];
    const want = fx.reference.headSetDecode(tokens, [prompt.length, ...decode.map(() => 1)], window, snapReference(budget, window, kernel));
    using seq = fx.model.sequence({ policy: policies.snapkv({ budget, window, kernel }) });
    const first = (await seq.append(prompt, { logits: 'last' }))!;
    expect(maxDiff(first, want[0]!)).toBeLessThan(2e-3);
    let differing = 0;
    let most = 0;
    for (let i = 0; i < decode.length; i++) {
      const got = (await seq.append([decode[i]!], { logits: 'last' }))!;
      expect(maxDiff(got, want[i + 1]!), `decode step ${i}`).toBeLessThan(2e-3);
      for (const layer of seq.layout().layers) {
        most = Math.max(most, ...layer.heads!.map((h) => h.source.length));
        // Positions by slot.
        for (const h of layer.heads!) expect(Array.from(h.positions)).toEqual(Array.from(h.source, (_, i) => i));
        if (layer.heads!.some((h) => h.source.join() !== layer.heads![0]!.source.join())) differing++;
      }
    }
    expect(differing).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(budget + window);
  });

  it('a generation after an append gives the tokens of one generate over the same prompt', async () => {
    const prompt = ids(37, 6);
    const policy = policies.snapkv({ budget: 12, window: 4 });
    using a = fx.model.sequence({ policy });
    await a.append(prompt);
    const first = await a.generate({ maxTokens: 20, temperature: 0, stopTokens: [] }).result;
    const second = await fx.model.generate(Int32Array.from(prompt), { policy, maxTokens: 20, temperature: 0, stopTokens: [] }).result;
    expect(first.tokens).toEqual(second.tokens);
  });

  it('options are checked; nothing leaks', async () => {
    expect(() => policies.snapkv({ budget: 8, window: 8 })).toThrow(InvalidArgumentError);
    expect(() => policies.snapkv({ budget: 1 })).toThrow(InvalidArgumentError);
    expect(() => policies.snapkv({ budget: 8, kernel: 0 })).toThrow(InvalidArgumentError);
    expect(policies.snapkv({ budget: 64 })).toEqual({ name: 'snapkv', budget: 64 });
    const before = fx.model.stats().usedPages;
    const seq = fx.model.sequence({ policy: policies.snapkv({ budget: 10, window: 3 }) });
    await seq.append(ids(100, 9));
    seq.dispose();
    expect(fx.model.stats().usedPages).toBe(before);
  });
});
