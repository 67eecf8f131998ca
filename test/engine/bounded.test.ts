// Generation under a fixed KV budget (CPU, a fixture checkpoint): StreamingLLM, LaCache and H2O
// keep, after every step, the tokens their rule says, at positions by slot; the logits equal a
// float64 reference that reads the same tokens one at a time with the same evictions; a long
// generation holds at most the policy's bound in every layer, leaks nothing, and many bounded
// sequences share one pool.
import { describe, expect, it } from 'vitest';

import { type CachePolicy, InvalidArgumentError, loadModel, type Model, policies, UnsupportedError } from '../../lib/index.js';
import { LaCachePlanner, resolveLaCache } from '../../lib/policies/lacache.js';
import { streamIds, useGqaFixture } from '../support/gqa-fixture';
import { maxDiff } from '../support/compare';

const LAYERS = 4;
const fx = useGqaFixture(LAYERS);
const ids = streamIds;

// The keep rules, written here from the papers (the engine's are in lib/policies/).
const streamingKeep = (sinks: number, window: number) => (_l: number, held: number[]) =>
  held.length <= sinks + window - 1 ? held : [...held.slice(0, sinks), ...held.slice(held.length - (window - 1))];
const h2oKeep = (budget: number, recent: number) => (_l: number, held: number[], score: Map<number, number>) => {
  if (held.length <= budget - 1) return held;
  const r = held.slice(held.length - recent);
  const heavy = held.slice(0, held.length - recent).sort((a, b) => score.get(b)! - score.get(a)! || a - b).slice(0, budget - 1 - recent);
  return [...heavy, ...r];
};

// Feeds tokens one per step (as decoding does) and collects each step's logits and layout.
async function feed(policy: CachePolicy, tokens: number[]) {
  using seq = fx.model.sequence({ policy });
  const rows: Float32Array[] = [];
  const layouts = [];
  for (const t of tokens) {
    rows.push((await seq.append([t], { logits: 'last' }))!);
    layouts.push(seq.layout());
  }
  return { rows, layouts };
}

describe('bounded policies against the float64 reference (one token a step)', () => {
  const tokens = ids(40);
  const lacache = resolveLaCache({ budget: 12, span: 2, overlap: 0, sinks: 2 });
  const planner = new LaCachePlanner(lacache, LAYERS);
  const plans: number[][][] = [];
  for (let t = 0; t < tokens.length; t++) {
    planner.append(1);
    plans.push(Array.from({ length: LAYERS }, (_, l) => [...planner.kept(l)]));
  }
  const cases: [string, CachePolicy, (l: number, held: number[], score: Map<number, number>, t: number) => number[]][] = [
    ['streaming (sinks 3, window 10)', policies.streaming({ sinks: 3, window: 10 }), streamingKeep(3, 10)],
    ['h2o (budget 12, recent 5)', policies.h2o({ budget: 12, recent: 5 }), h2oKeep(12, 5)],
    ['lacache (budget 12, span 2, sinks 2)', lacache, (l, _h, _s, t) => plans[t]![l]!],
  ];
  for (const [name, policy, keep] of cases) {
    it(`${name}: logits, kept tokens and positions by slot`, async () => {
      const kept: number[][][] = [];
      const want = fx.reference.boundedDecode(tokens, (l, held, score, t) => {
        const k = [...keep(l, held, score, t)].sort((a, b) => a - b);
        (kept[t] ??= [])[l] = k;
        return k;
      });
      const got = await feed(policy, tokens);
      let worst = 0;
      got.rows.forEach((r, i) => (worst = Math.max(worst, maxDiff(r, want[i]!))));
      expect(worst).toBeLessThan(1e-4);
      // After each step every layer holds what the rule keeps, at ranks 0..n-1 in stream order.
      got.layouts.forEach((layout, step) => {
        layout.layers.forEach((layer, l) => {
          const pairs = [...layer.source].map((s, i) => [s, layer.positions[i]!] as const).sort((a, b) => a[0] - b[0]);
          expect([step, l, ...pairs.map((p) => p[0])]).toEqual([step, l, ...kept[step]![l]!]);
          expect(pairs.map((p) => p[1])).toEqual(pairs.map((_, i) => i));
        });
      });
    });
  }

  it('streaming with a window longer than the input is full attention', async () => {
    const { rows } = await feed(policies.streaming({ sinks: 2, window: 64 }), tokens);
    const full = await fx.model.logits(tokens, { all: true });
    const vocab = fx.model.config.vocabSize;
    rows.forEach((r, i) => expect(maxDiff(r, full.subarray(i * vocab, (i + 1) * vocab))).toBeLessThan(3e-5));
  });
});

describe('constant memory', () => {
  // 100,000 tokens by default (KVFOCUS_LONG_TOKENS: fewer under the sanitizers).
  const N = Number(process.env.KVFOCUS_LONG_TOKENS ?? 100_000);
  const bounded: [string, CachePolicy, number][] = [
    ['streaming', policies.streaming({ sinks: 4, window: 60 }), 64],
    ['lacache', policies.lacache({ budget: 48, span: 2, overlap: 0 }), 48 + new LaCachePlanner(resolveLaCache({ budget: 48, span: 2, overlap: 0 }), LAYERS).maxLength - 48],
    ['h2o', policies.h2o({ budget: 64, recent: 32 }), 64],
    // sinks + cascades * window slots, and the step's own token until it is inserted.
    ['cascading', policies.cascading({ sinks: 4, window: 16, cascades: 3, stride: 16 }), 4 + 3 * 16 + 1],
    // budget + the window of decoded tokens scored before the next compression.
    ['snapkv', policies.snapkv({ budget: 48, window: 16 }), 48 + 16],
  ];
  for (const [name, policy, bound] of bounded) {
    it(`${name}: ${N} generated tokens, every layer within ${bound} tokens after every step, nothing leaks`, async () => {
      const before = fx.model.stats().usedPages;
      using seq = fx.model.sequence({ policy });
      await seq.append(ids(20));
      let generated = 0;
      let most = 0;
      let maxPosition = 0;
      // The fixture's end-of-sequence token ends a generation now and then: the sequence goes on
      // with the next one (a stop token is not kept), until N tokens are in.
      for (let seed = 7; generated < N; seed++) {
        const stream = seq.generate({ maxTokens: N - generated, temperature: 1, seed, stopTokens: [] });
        let events = 0;
        for await (const _ of stream) {
          if (++events % 97 === 0 || generated + events < 200) {
            for (const layer of seq.layout().layers) {
              most = Math.max(most, layer.source.length);
              for (const p of layer.positions) maxPosition = Math.max(maxPosition, p);
            }
          }
        }
        const result = await stream.result;
        expect(result.finishReason).not.toBe('cancelled');
        generated += result.completionTokens;
      }
      expect(generated).toBe(N);
      expect(most).toBeLessThanOrEqual(bound);
      expect(maxPosition).toBeLessThan(bound);
      expect(seq.tokenCount).toBe(20 + N);
      seq.dispose();
      expect(fx.model.stats().usedPages).toBe(before);
    }, 600_000);
  }

  it('many bounded sequences share one pool smaller than their streams', async () => {
    const small = await loadModel(fx.dir, { device: 'cpu', kvCacheTokens: 512, pageSize: 8 });
    try {
      // Four sequences of 3000 tokens each (12,000 in all) in a pool of 512 tokens per layer.
      const policy = policies.streaming({ sinks: 4, window: 60 });
      const runs = Array.from({ length: 4 }, async (_, i) => {
        using seq = small.sequence({ policy });
        await seq.append(ids(16, i + 2));
        let generated = 0;
        for (let seed = i * 1000; generated < 3000; seed++) {
          const r = await seq.generate({ maxTokens: 3000 - generated, temperature: 1, seed, stopTokens: [] }).result;
          generated += r.completionTokens;
        }
        return seq.tokenCount;
      });
      expect(await Promise.all(runs)).toEqual([3016, 3016, 3016, 3016]);
      expect(small.stats().usedPages).toBe(0);
    } finally {
      small.dispose();
    }
  }, 120_000);
});

describe('bad input', () => {
  it('options are checked by name; bounded policies do not take stored documents', async () => {
    expect(() => policies.streaming({ window: 0 })).toThrow(/policy\.window/);
    expect(() => policies.h2o({ budget: 8, recent: 8 })).toThrow(/recent/);
    expect(() => policies.h2o({ budget: 8, recent: 8 })).toThrow(InvalidArgumentError);
    using store = await fx.model.openStore({ prefix: ids(5) });
    await store.put('a', ids(6, 3));
    expect(() => fx.model.sequence({ store, documents: ['a'], policy: policies.streaming({ window: 8 }) })).toThrow(UnsupportedError);
    using seq = fx.model.sequence();
    await seq.append(ids(4));
    expect(() => seq.generate({ policy: policies.h2o({ budget: 8 }) })).toThrow(/policy: a sequence's policy is chosen when it is created/);
  });
});
