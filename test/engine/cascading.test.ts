// The Cascading KV cache on the engine (CPU, a fixture checkpoint with 2 KV heads): every layer
// and KV head keeps the tokens the insertion rule (CascadeModel) keeps when it is driven by a
// float64 model's own attention, at the same positions, and the logits equal that float64
// model's, one token a step and in strided prefill chunks; a generation that continues an
// appended sequence re-reads its last chunk exactly; nothing leaks.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, policies, type SequenceLayout } from '../../lib/index.js';
import { CascadeModel } from '../../lib/policies/cascade-model.js';
import { streamIds, useGqaFixture } from '../support/gqa-fixture';
import { maxDiff } from '../support/compare';

const LAYERS = 3;
const fx = useGqaFixture(LAYERS);
const ids = streamIds;

// A small cache that fills in a few tokens and then cascades: 2 sinks + 3 cascades of 4 slots.
const OPTIONS = { sinks: 2, window: 4, cascades: 3, beta: 0.9, headReduction: 'max' as const };
const CAPACITY = OPTIONS.sinks + OPTIONS.cascades * OPTIONS.window;

interface HeadLayout {
  source: number[];
  positions: number[];
}

// Runs the float64 reference over `tokens` in chunks of `stride`; returns each chunk's logits
// and, after each chunk, every layer's and head's cache in slot order.
function runReference(tokens: number[], stride: number, options = OPTIONS) {
  const group = fx.reference.config.numHeads / fx.reference.config.numKvHeads;
  const caches = Array.from({ length: LAYERS }, () => Array.from({ length: fx.reference.config.numKvHeads }, () => new CascadeModel({ ...options, groupSize: group })));
  const states: HeadLayout[][][] = [];
  const logits = fx.reference.cascadingDecode(tokens, stride, options.beta, caches, options.sinks + options.cascades * options.window, () => {
    states.push(
      caches.map((layer) =>
        layer.map((c) => {
          const st = c.state();
          return { source: Array.from(st.tokens.subarray(0, st.length)), positions: Array.from(st.positions.subarray(0, st.length)) };
        }),
      ),
    );
  });
  return { logits, states };
}

// The engine's heads, with the chunk it has not inserted yet (its newest `pending` slots) left out.
function engineHeads(layout: SequenceLayout, pending: number): HeadLayout[][] {
  return layout.layers.map((layer) =>
    layer.heads!.map((h) => ({ source: Array.from(h.source.subarray(0, h.source.length - pending)), positions: Array.from(h.positions.subarray(0, h.positions.length - pending)) })),
  );
}

describe('cascading KV cache against the float64 reference', () => {
  it('one token a step: logits, and each KV head keeps what the insertion rule keeps', async () => {
    const tokens = ids(48);
    const { logits, states } = runReference(tokens, 1);
    using seq = fx.model.sequence({ policy: policies.cascading({ ...OPTIONS, stride: 1 }) });
    let differing = 0;
    for (let t = 0; t < tokens.length; t++) {
      const got = (await seq.append([tokens[t]!], { logits: 'last' }))!;
      expect(maxDiff(got, logits[t]!), `logits at token ${t}`).toBeLessThan(2e-3);
      const layout = seq.layout();
      // Token t is held at the next slot until the next step inserts it.
      for (const layer of layout.layers) {
        for (const h of layer.heads!) {
          expect(h.source[h.source.length - 1]).toBe(t);
          expect(h.positions[h.positions.length - 1]).toBe(h.positions.length - 1);
          expect(h.source.length).toBeLessThanOrEqual(CAPACITY + 1);
        }
        if (layer.heads!.some((h) => h.source.join() !== layer.heads![0]!.source.join())) differing++;
      }
      if (t > 0) expect(engineHeads(layout, 1), `caches after token ${t - 1}`).toEqual(states[t - 1]);
    }
    // The heads of a layer chose differently at some step: per-head selection is exercised.
    expect(differing).toBeGreaterThan(0);
  });

  it('strided prefill: chunks of `stride` tokens attend to the cache and themselves, then insert', async () => {
    const tokens = ids(45, 3);
    const stride = 8;
    const { logits, states } = runReference(tokens, stride);
    using seq = fx.model.sequence({ policy: policies.cascading({ ...OPTIONS, stride }) });
    // One append: the scheduler feeds it in chunks of `stride`.
    const all = (await seq.append(tokens, { logits: 'all' }))!;
    const vocab = fx.reference.config.vocabSize;
    for (let c = 0; c < logits.length; c++) {
      const end = Math.min(tokens.length, (c + 1) * stride);
      expect(maxDiff(all.subarray((end - 1) * vocab, end * vocab), logits[c]!), `chunk ${c}`).toBeLessThan(2e-3);
    }
    // The last chunk (5 tokens) waits for the next step; everything before it is inserted.
    expect(engineHeads(seq.layout(), tokens.length % stride)).toEqual(states[states.length - 2]);
    // The next step inserts it first.
    await seq.append([7]);
    expect(engineHeads(seq.layout(), 1)).toEqual(states[states.length - 1]);
  });

  it('a generation after an append re-reads the pending chunk: the same tokens as one longer append', async () => {
    const prompt = ids(30, 5);
    const policy = policies.cascading({ ...OPTIONS, stride: 8 });
    using a = fx.model.sequence({ policy });
    await a.append(prompt);
    const first = await a.generate({ maxTokens: 12, temperature: 0, stopTokens: [] }).result;
    const second = await fx.model.generate(Int32Array.from(prompt), { policy, maxTokens: 12, temperature: 0, stopTokens: [] }).result;
    expect(first.tokens).toEqual(second.tokens);
  });

  it('options are checked; the sequence holds nothing after dispose', async () => {
    expect(() => policies.cascading({ window: 0 })).toThrow(InvalidArgumentError);
    expect(() => policies.cascading({ beta: 1 })).toThrow(InvalidArgumentError);
    const before = fx.model.stats().usedPages;
    const seq = fx.model.sequence({ policy: policies.cascading({ ...OPTIONS, stride: 4 }) });
    await seq.append(ids(100, 9));
    seq.dispose();
    expect(fx.model.stats().usedPages).toBe(before);
  });
});
