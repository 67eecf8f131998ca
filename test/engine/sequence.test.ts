// Sequences (CPU, fixture checkpoint): appends and their logits against model.logits() over the
// whole input, generation that continues a sequence and stays in it, the layout of full
// attention, one call at a time per sequence, many sequences batched, dispose, eviction of idle
// sequences, and every bad-input path.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AbortError, DisposedError, InvalidArgumentError, loadModel, type Model, UnsupportedError } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';

let root: string;
let dir: string;
let model: Model;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-sequence-'));
  dir = makeFixtures(root, ['llama-gqa'])['llama-gqa']!;
  model = await loadModel(dir, { device: 'cpu', kvCacheTokens: 512, prefillChunk: 16 });
});

afterAll(() => {
  model.dispose();
  rmSync(root, { recursive: true, force: true });
});

// Distinct token ids in [3, 253): no special tokens.
const ids = (i: number, length: number): number[] => Array.from({ length }, (_, j) => 3 + ((i * 31 + j * 7 + ((i * j) % 11)) % 250));

function maxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

const greedy = { stopTokens: [] as number[] };

describe('append', () => {
  it("an append's logits equal model.logits() over everything appended so far (1e-5)", async () => {
    const a = ids(1, 37);
    const b = ids(2, 21);
    using seq = model.sequence();
    expect(await seq.append(a)).toBeUndefined();
    const all = (await seq.append(b, { logits: 'all' }))!;
    const vocab = model.config.vocabSize;
    const reference = await model.logits([...a, ...b], { all: true });
    expect(all.length).toBe(b.length * vocab);
    expect(maxDiff(all, reference.subarray(a.length * vocab))).toBeLessThan(1e-5);
    const c = ids(3, 5);
    const last = (await seq.append(c, { logits: 'last' }))!;
    expect(maxDiff(last, await model.logits([...a, ...b, ...c]))).toBeLessThan(1e-5);
    expect(seq.tokenCount).toBe(a.length + b.length + c.length);
  });

  it('several appends give the logits of one append of their concatenation', async () => {
    const parts = [ids(4, 3), ids(5, 30), ids(6, 1), ids(7, 17)];
    const whole = parts.flat();
    using one = model.sequence();
    const once = (await one.append(Int32Array.from(whole), { logits: 'all' }))!;
    using several = model.sequence();
    const rows: Float32Array[] = [];
    for (const p of parts) rows.push((await several.append(p, { logits: 'all' }))!);
    const joined = new Float32Array(once.length);
    let at = 0;
    for (const r of rows) {
      joined.set(r, at);
      at += r.length;
    }
    expect(maxDiff(joined, once)).toBeLessThan(1e-5);
    expect(several.tokenCount).toBe(one.tokenCount);
  });

  it('text opens a sequence with special tokens (BOS) and is appended after that without them', async () => {
    using seq = model.sequence();
    await seq.append('Doc 3. The river Ouse floods.');
    const first = model.tokenizer.encode('Doc 3. The river Ouse floods.');
    expect(seq.tokenCount).toBe(first.length);
    await seq.append(' Question: which river?');
    expect(seq.tokenCount).toBe(first.length + model.tokenizer.encode(' Question: which river?', { addSpecialTokens: false }).length);
  });
});

describe('generate', () => {
  it('continues the sequence like model.generate() over the same tokens, and keeps what it generated', async () => {
    const prompt = ids(8, 40);
    const expected = await model.generate(prompt, { maxTokens: 8, ...greedy }).result;
    using seq = model.sequence();
    await seq.append(prompt);
    const stream = seq.generate({ maxTokens: 8, ...greedy });
    const streamed: number[] = [];
    for await (const e of stream) if (e.token >= 0) streamed.push(e.token);
    const r = await stream.result;
    expect(r.tokens).toEqual(expected.tokens);
    expect(streamed).toEqual(r.tokens);
    expect(r.promptTokens).toBe(prompt.length);
    expect(seq.tokenCount).toBe(prompt.length + r.tokens.length);
    const { layers } = seq.layout();
    for (const layer of layers) expect(layer.source.length).toBe(seq.tokenCount);
  });

  it('multi-turn (append, generate, append, generate) equals greedy generation from the concatenated tokens', async () => {
    const turn1 = ids(9, 30);
    const turn2 = ids(10, 12);
    using seq = model.sequence();
    await seq.append(turn1);
    const g1 = await seq.generate({ maxTokens: 6, ...greedy }).result;
    await seq.append(turn2);
    const g2 = await seq.generate({ maxTokens: 6, ...greedy }).result;
    const reference = await model.generate([...turn1, ...g1.tokens, ...turn2], { maxTokens: 6, ...greedy }).result;
    expect(g2.tokens).toEqual(reference.tokens);
    expect(seq.tokenCount).toBe(turn1.length + g1.tokens.length + turn2.length + g2.tokens.length);
    // Generating again straight away continues after g2.
    const g3 = await seq.generate({ maxTokens: 4, ...greedy }).result;
    const again = await model.generate([...turn1, ...g1.tokens, ...turn2, ...g2.tokens], { maxTokens: 4, ...greedy }).result;
    expect(g3.tokens).toEqual(again.tokens);
  });

  it('leaving the stream early keeps what was generated; the next append continues after it', async () => {
    const a = ids(15, 24);
    const b = ids(16, 6);
    using seq = model.sequence();
    await seq.append(a);
    const stream = seq.generate({ maxTokens: 50, ...greedy });
    for await (const _ of stream) break;
    const r = await stream.result;
    expect(r.finishReason).toBe('cancelled');
    expect(seq.tokenCount).toBe(a.length + r.tokens.length);
    const last = (await seq.append(b, { logits: 'last' }))!;
    expect(maxDiff(last, await model.logits([...a, ...r.tokens, ...b]))).toBeLessThan(1e-5);
    expect(seq.layout().layers[0]!.source).toHaveLength(seq.tokenCount);
  });

  it('aborting rejects with AbortError; the sequence keeps its state and goes on', async () => {
    const a = ids(17, 20);
    using seq = model.sequence();
    await seq.append(a);
    const controller = new AbortController();
    const stream = seq.generate({ maxTokens: 50, signal: controller.signal, ...greedy });
    let seen = 0;
    await expect(
      (async () => {
        for await (const _ of stream) if (++seen === 3) controller.abort();
      })(),
    ).rejects.toBeInstanceOf(AbortError);
    const kept = seq.tokenCount - a.length;
    expect(kept).toBeGreaterThanOrEqual(3);
    const generated = (await model.generate(a, { maxTokens: kept, ...greedy }).result).tokens;
    const last = (await seq.append([5, 6], { logits: 'last' }))!;
    expect(maxDiff(last, await model.logits([...a, ...generated, 5, 6]))).toBeLessThan(1e-5);
    expect(model.stats().runningRequests).toBe(0);
  });

  it('a seed reproduces model.generate() with the same seed', async () => {
    const prompt = ids(11, 25);
    const opts = { maxTokens: 12, temperature: 1.2, topK: 50, seed: 7, ...greedy };
    const expected = await model.generate(prompt, opts).result;
    using seq = model.sequence();
    await seq.append(prompt);
    expect((await seq.generate(opts).result).tokens).toEqual(expected.tokens);
  });
});

describe('layout()', () => {
  it('full attention: every layer holds source = positions = 0..n-1, with no per-head lists', async () => {
    using seq = model.sequence({ policy: { name: 'full' } });
    expect(seq.policy).toEqual({ name: 'full' });
    expect(seq.layout().layers.map((l) => l.source.length)).toEqual(Array(model.config.numLayers).fill(0));
    await seq.append(ids(12, 21));
    await seq.generate({ maxTokens: 3, ...greedy }).result;
    const n = seq.tokenCount;
    const { layers } = seq.layout();
    expect(layers).toHaveLength(model.config.numLayers);
    const range = Int32Array.from({ length: n }, (_, i) => i);
    for (const layer of layers) {
      expect(layer.source).toEqual(range);
      expect(layer.positions).toEqual(range);
      expect(layer.heads).toBeUndefined();
    }
  });
});

describe('one call at a time per sequence', () => {
  it('calls made while another runs wait their turn and run in call order', async () => {
    const a = ids(13, 20);
    const b = ids(14, 9);
    using seq = model.sequence();
    const first = seq.append(a);
    const stream = seq.generate({ maxTokens: 5, ...greedy });
    const second = seq.append(b, { logits: 'last' });
    await first;
    const g = await stream.result;
    const last = (await second)!;
    const reference = await model.generate(a, { maxTokens: 5, ...greedy }).result;
    expect(g.tokens).toEqual(reference.tokens);
    expect(maxDiff(last, await model.logits([...a, ...g.tokens, ...b]))).toBeLessThan(1e-5);
  });
});

describe('many sequences', () => {
  it('run batched in the same forward steps and give the results each gives alone', async () => {
    const prompts = Array.from({ length: 6 }, (_, i) => ids(20 + i, 20 + 7 * i));
    const alone: number[][] = [];
    for (const p of prompts) alone.push((await model.generate(p, { maxTokens: 6, ...greedy }).result).tokens);
    const seqs = prompts.map(() => model.sequence());
    try {
      const appends = seqs.map((s, i) => s.append(prompts[i]!));
      expect(model.stats().runningRequests).toBe(prompts.length); // admitted together: one batch
      await Promise.all(appends);
      const results = await Promise.all(seqs.map((s) => s.generate({ maxTokens: 6, ...greedy }).result));
      expect(results.map((r) => r.tokens)).toEqual(alone);
    } finally {
      for (const s of seqs) s.dispose();
    }
  });

  it('preempted mid-generation when the pool runs dry, sequences are recomputed and keep their results', async () => {
    // As in scheduling.test: each grows from 100 to 160 tokens; a 256-token pool cannot hold two.
    const small = await loadModel(dir, { device: 'cpu', kvCacheTokens: 256 });
    try {
      const prompts = [3, 6, 9].map((i) => ids(i + 100, 100));
      const opts = { maxTokens: 60, repetitionPenalty: 1.3, ...greedy };
      const alone: number[][] = [];
      for (const p of prompts) alone.push((await small.generate(p, opts).result).tokens);
      const seqs = prompts.map(() => small.sequence());
      const results = await Promise.all(seqs.map(async (s, i) => {
        await s.append(prompts[i]!);
        return (await s.generate(opts).result).tokens;
      }));
      expect(results).toEqual(alone);
      expect(small.stats().preemptions + small.stats().evictions).toBeGreaterThan(0);
      for (const [i, s] of seqs.entries()) {
        expect(s.tokenCount).toBe(100 + alone[i]!.length);
        s.dispose();
      }
      expect(small.stats().usedPages).toBe(0);
    } finally {
      small.dispose();
    }
  });

  it('an idle sequence gives its pages to other work and is recomputed from its input stream', async () => {
    const small = await loadModel(dir, { device: 'cpu', kvCacheTokens: 64 });
    try {
      const a = ids(30, 40);
      const b = ids(31, 10);
      using seq = small.sequence();
      await seq.append(a);
      const pages = small.stats().usedPages;
      expect(pages).toBe(3 * small.config.numLayers);
      // 40 + 16 tokens of claim: only fits once the idle sequence's pages are freed.
      const other = await small.generate(ids(32, 40), { maxTokens: 4, ...greedy }).result;
      expect(other.tokens).toHaveLength(4);
      expect(small.stats().evictions).toBe(1);
      const last = (await seq.append(b, { logits: 'last' }))!;
      expect(maxDiff(last, await small.logits([...a, ...b]))).toBeLessThan(1e-5);
      expect(seq.layout().layers[0]!.positions).toEqual(Int32Array.from({ length: 50 }, (_, i) => i));
    } finally {
      small.dispose();
    }
  });
});

describe('dispose', () => {
  it('frees the KV pages at once; later calls throw DisposedError', async () => {
    const before = model.stats().usedPages;
    const seq = model.sequence();
    await seq.append(ids(40, 50));
    expect(model.stats().usedPages).toBeGreaterThan(before);
    seq.dispose();
    expect(model.stats().usedPages).toBe(before);
    expect(seq.disposed).toBe(true);
    await expect(seq.append([5])).rejects.toBeInstanceOf(DisposedError);
    expect(() => seq.generate()).toThrow(DisposedError);
    expect(() => seq.layout()).toThrow(DisposedError);
    seq.dispose(); // idempotent
  });

  it('while a generation runs: its result rejects with DisposedError and the pages are freed', async () => {
    const before = model.stats().usedPages;
    const seq = model.sequence();
    await seq.append(ids(41, 30));
    const stream = seq.generate({ maxTokens: 200, ...greedy });
    const waiting = seq.append([7, 8, 9]);
    let seen = 0;
    await expect(
      (async () => {
        for await (const _ of stream) if (++seen === 2) seq.dispose();
      })(),
    ).rejects.toBeInstanceOf(DisposedError);
    await expect(stream.result).rejects.toBeInstanceOf(DisposedError);
    await expect(waiting).rejects.toBeInstanceOf(DisposedError);
    expect(model.stats()).toMatchObject({ usedPages: before, runningRequests: 0 });
  });
});

describe('bad input gives typed errors naming the argument', () => {
  const cases: [string, (m: Model) => unknown, string, RegExp][] = [
    ['an unknown policy', (m) => m.sequence({ policy: { name: 'quest' } as never }), 'policy', /policy\.name: unknown policy 'quest'; known policies: 'full', 'cacheFocus', 'concat', 'parallelWindows', 'ape', 'cascading', 'lacache', 'streaming', 'h2o', 'snapkv'/],
    ['a bad lacache option', (m) => m.sequence({ policy: { name: 'lacache', budget: 256, span: 16, overlap: 16 } }), 'policy', /policy\.overlap: expected an integer in \[0, span - 1\]/],
    ['a policy that is not an object', (m) => m.sequence({ policy: 'full' as never }), 'policy', /policy: expected a policy object/],
    ['an unknown policy option', (m) => m.sequence({ policy: { name: 'full', budget: 3 } as never }), 'policy', /unknown option 'budget' for policy 'full'/],
    ['an unknown sequence option', (m) => m.sequence({ Policy: {} } as never), 'options', /unknown option 'Policy' \(did you mean 'policy'\?\)/],
    ['generate() on an empty sequence', (m) => m.sequence().generate(), 'sequence', /sequence: is empty/],
    ['bad generate() options', (m) => m.sequence().generate({ topP: 0 }), 'topP', /topP: expected a number in \(0, 1\]/],
  ];
  for (const [name, fn, argument, message] of cases) {
    it(name, () => {
      let error: unknown;
      try {
        fn(model);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).argument).toBe(argument);
      expect((error as Error).message).toMatch(message);
    });
  }

  const appends: [string, unknown, unknown, string, RegExp][] = [
    ['an empty token list', [], undefined, 'input', /input: is empty/],
    ['empty text', '', undefined, 'input', /input: is empty/],
    ['a token outside the vocabulary', [1, 99999], undefined, 'input', /input: token 99999 at index 1 is outside the vocabulary/],
    ['a non-integer token', [1.5], undefined, 'input', /input: token at index 0 is number 1.5/],
    ['input of the wrong type', 42, undefined, 'input', /input: expected a string or token ids/],
    ['an unknown logits mode', [1, 2], { logits: 'first' }, 'logits', /logits: expected 'none', 'last' or 'all'/],
    ['more tokens than the model takes', Array(600).fill(5), undefined, 'input', /input: 600 tokens exceed the model's context \(512 tokens/],
  ];
  for (const [name, input, options, argument, message] of appends) {
    it(`append: ${name}`, async () => {
      using seq = model.sequence();
      const error = await seq.append(input as number[], options as never).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).argument).toBe(argument);
      expect((error as Error).message).toMatch(message);
      expect(seq.tokenCount).toBe(0);
    });
  }

  it('a valid policy that cannot run where it is asked for is refused with an UnsupportedError', async () => {
    // Bounded policies run on sequences without stored documents.
    using store = await model.openStore({ prefix: 'P.' });
    expect(() => model.sequence({ store, documents: ['a'], policy: { name: 'cascading' } })).toThrow(UnsupportedError);
    expect(() => model.sequence({ store, documents: ['a'], policy: { name: 'snapkv', budget: 8 } })).toThrow(/policy: 'snapkv' runs on sequences without stored documents/);
  });

  it("a LaCache ladder that does not fit the model's layers is refused by name", () => {
    expect(() => model.sequence({ policy: { name: 'lacache', budget: 256, span: 16, overlap: 0 } })).toThrow(/span/);
  });

  it('a policy of undefined is full attention', () => {
    using seq = model.sequence({ policy: undefined });
    expect(seq.policy.name).toBe('full');
  });
});
