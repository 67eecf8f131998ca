// The generation API on a fixture checkpoint (CPU): streaming, sampling, stop conditions,
// cancellation, continuous batching of concurrent calls, and every bad-input path.
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AbortError, DisposedError, InvalidArgumentError, ModelFormatError, loadModel, type Model } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';

let root: string;
let dir: string;
let model: Model;
const PROMPT = 'Doc 3. The river Ouse floods in spring. Question: which river floods?';

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-generate-'));
  dir = makeFixtures(root, ['llama-gqa'])['llama-gqa']!;
  model = await loadModel(dir, { device: 'cpu', kvCacheTokens: 512 });
});

afterAll(() => {
  model.dispose();
  rmSync(root, { recursive: true, force: true });
});

async function collect(stream: ReturnType<Model['generate']>): Promise<{ tokens: number[]; text: string }> {
  const tokens: number[] = [];
  let text = '';
  for await (const e of stream) {
    if (e.token >= 0) tokens.push(e.token);
    text += e.text;
  }
  return { tokens, text };
}

describe('generate()', () => {
  it('streams tokens whose text joins to the result, with counts and timings', async () => {
    const stream = model.generate(PROMPT, { maxTokens: 12, stopTokens: [] });
    const streamed = await collect(stream);
    const r = await stream.result;
    expect(r.finishReason === 'length' || r.finishReason === 'stop').toBe(true);
    expect(streamed.tokens).toEqual(r.tokens);
    expect(streamed.text).toBe(r.text);
    // Random weights emit byte tokens that need not form valid UTF-8; where they do, the streamed
    // text is exactly the decoded tokens.
    const decoded = model.tokenizer.decode(r.tokens, { skipSpecialTokens: true });
    if (!decoded.includes('\ufffd')) expect(r.text).toBe(decoded);
    expect(r.promptTokens).toBe(model.encode(PROMPT).length);
    expect(r.completionTokens).toBe(r.tokens.length);
    expect(r.timings.timeToFirstTokenMs).toBeGreaterThan(0);
    expect(r.timings.totalMs).toBeGreaterThanOrEqual(r.timings.timeToFirstTokenMs);
  });

  it('greedy generation equals the argmax of logits() step by step', async () => {
    const prompt = Array.from(model.encode(PROMPT));
    const r = await model.generate(prompt, { maxTokens: 6, stopTokens: [] }).result;
    const vocab = model.config.vocabSize;
    const seq = [...prompt];
    for (const token of r.tokens) {
      const row = await model.logits(seq);
      let best = 0;
      for (let t = 1; t < vocab; t++) if (row[t]! > row[best]!) best = t;
      expect(token).toBe(best);
      seq.push(token);
    }
  });

  it('the same seed reproduces a sampled generation; another seed changes it', async () => {
    const opts = { maxTokens: 24, temperature: 1.2, topK: 50, topP: 0.95, minP: 0.01, repetitionPenalty: 1.1, stopTokens: [] };
    const a = await model.generate(PROMPT, { ...opts, seed: 7 }).result;
    const b = await model.generate(PROMPT, { ...opts, seed: 7 }).result;
    const c = await model.generate(PROMPT, { ...opts, seed: 8 }).result;
    expect(b.tokens).toEqual(a.tokens);
    expect(c.tokens).not.toEqual(a.tokens);
  });

  it('maxTokens ends with finishReason "length"', async () => {
    // Greedy on these ids runs for 25 tokens without </s> (the KV-cache test below), so only maxTokens stops it.
    const r = await model.generate(Array.from({ length: 40 }, (_, i) => 10 + i), { maxTokens: 3 }).result;
    expect(r.finishReason).toBe('length');
    expect(r.tokens).toHaveLength(3);
  });

  it('a stop string ends the text before it, and is never streamed', async () => {
    const free = await model.generate(PROMPT, { maxTokens: 24, stopTokens: [] }).result;
    const text = free.text;
    expect(text.length).toBeGreaterThan(6);
    const stop = text.slice(4, 7);
    const stream = model.generate(PROMPT, { maxTokens: 24, stop, stopTokens: [] });
    const streamed = await collect(stream);
    const r = await stream.result;
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(streamed.text).toBe(r.text);
  });

  it('a stop token ends generation without being emitted', async () => {
    const free = await model.generate(PROMPT, { maxTokens: 8, stopTokens: [] }).result;
    const stopAt = free.tokens[3]!;
    const r = await model.generate(PROMPT, { maxTokens: 8, stopTokens: [stopAt] }).result;
    expect(r.finishReason).toBe('stop');
    expect(r.tokens).toEqual(free.tokens.slice(0, free.tokens.indexOf(stopAt)));
  });

  it('concurrent calls are batched and give the same tokens as one at a time', async () => {
    const prompts = [PROMPT, 'Doc 9. Tarn is cold.', 'Question: who lives in Kell?', PROMPT + ' Answer:'];
    const alone = [];
    for (const p of prompts) alone.push((await model.generate(p, { maxTokens: 10, stopTokens: [] }).result).tokens);
    const together = await Promise.all(prompts.map((p) => model.generate(p, { maxTokens: 10, stopTokens: [] }).result));
    expect(together.map((r) => r.tokens)).toEqual(alone);
  });

  it('abort rejects with AbortError and frees the pages at once', async () => {
    const before = model.freeKvPages;
    const controller = new AbortController();
    const stream = model.generate(PROMPT, { maxTokens: 200, stopTokens: [], signal: controller.signal });
    let seen = 0;
    await expect(
      (async () => {
        for await (const _ of stream) {
          if (++seen === 2) controller.abort();
        }
      })(),
    ).rejects.toBeInstanceOf(AbortError);
    await expect(stream.result).rejects.toBeInstanceOf(AbortError);
    await model.logits([1, 2, 3]); // a later step: the aborted sequence's last step has finished
    expect(model.freeKvPages).toBe(before);
    const already = AbortSignal.abort();
    await expect(model.generate(PROMPT, { signal: already }).result).rejects.toBeInstanceOf(AbortError);
  });

  it('keeps the event loop running while the model works', async () => {
    // Counts event-loop turns (setImmediate runs once per turn), not milliseconds: the tiny fixture
    // can finish 16 tokens in under the 1 ms a timer needs, which made a timer-based count flaky.
    let ticks = 0;
    let running = true;
    const tick = () => {
      ticks++;
      if (running) setImmediate(tick);
    };
    setImmediate(tick);
    await model.generate(PROMPT, { maxTokens: 16, stopTokens: [] }).result;
    running = false;
    expect(ticks).toBeGreaterThan(1);
  });

  it('chat messages go through the chat template', async () => {
    const r = await model.generate({ messages: [{ role: 'user', content: 'Which river floods?' }] }, { maxTokens: 4, stopTokens: [] }).result;
    const expected = model.tokenizer.encodeChat([{ role: 'user', content: 'Which river floods?' }], { addGenerationPrompt: true });
    expect(r.promptTokens).toBe(expected.length);
  });
});

describe('logits()', () => {
  it('the last row of all logits equals the last-position logits', async () => {
    const tokens = Array.from(model.encode(PROMPT));
    const last = await model.logits(tokens);
    const all = await model.logits(tokens, { all: true });
    const vocab = model.config.vocabSize;
    expect(all.length).toBe(tokens.length * vocab);
    const tail = all.subarray((tokens.length - 1) * vocab);
    for (let i = 0; i < vocab; i++) expect(last[i]).toBeCloseTo(tail[i]!, 5);
  });
});

describe('bad input gives typed errors', () => {
  const bad: [string, () => unknown, RegExp][] = [
    ['negative temperature', () => model.generate(PROMPT, { temperature: -1 }), /temperature: expected a number >= 0 but received number -1/],
    ['topP of 0', () => model.generate(PROMPT, { topP: 0 }), /topP: expected a number in \(0, 1\]/],
    ['fractional topK', () => model.generate(PROMPT, { topK: 2.5 }), /topK: expected an integer >= 0/],
    ['minP of 1', () => model.generate(PROMPT, { minP: 1 }), /minP: expected a number in \[0, 1\)/],
    ['zero repetitionPenalty', () => model.generate(PROMPT, { repetitionPenalty: 0 }), /repetitionPenalty: expected a number > 0/],
    ['zero maxTokens', () => model.generate(PROMPT, { maxTokens: 0 }), /maxTokens: expected an integer >= 1/],
    ['negative seed', () => model.generate(PROMPT, { seed: -3 }), /seed: expected a non-negative safe integer/],
    ['empty stop string', () => model.generate(PROMPT, { stop: '' }), /stop: expected a non-empty string/],
    ['a non-signal', () => model.generate(PROMPT, { signal: {} as AbortSignal }), /signal: expected an AbortSignal/],
    ['an empty prompt', () => model.generate([]), /prompt: is empty/],
    ['a token outside the vocabulary', () => model.generate([1, 99999]), /token 99999 at index 1 is outside the vocabulary/],
    ['a prompt longer than the model\'s context', () => model.generate(Array.from({ length: 600 }, () => 5)), /600 tokens exceed the model's context \(512 tokens: max_position_embeddings 512/],
    ['a prompt of the wrong type', () => model.generate(42 as unknown as string), /prompt: expected a string, \{ messages \}, or token ids/],
  ];
  for (const [name, fn, message] of bad) {
    it(name, () => {
      expect(fn).toThrow(InvalidArgumentError);
      expect(fn).toThrow(message);
    });
  }

  it('requests the KV pool cannot hold together wait their turn instead of failing', async () => {
    const small = await loadModel(dir, { device: 'cpu', kvCacheTokens: 64 });
    try {
      const prompt = Array.from({ length: 40 }, (_, i) => 10 + i);
      const alone = (await small.generate(prompt, { maxTokens: 8, stopTokens: [] }).result).tokens;
      const runs = [0, 1, 2].map(() => small.generate(prompt, { maxTokens: 8, stopTokens: [] }).result);
      expect(small.stats()).toMatchObject({ runningRequests: 1, queuedRequests: 2 });
      for (const r of await Promise.all(runs)) expect(r.tokens).toEqual(alone);
    } finally {
      small.dispose();
    }
  });

  it('a generation that fills the KV cache ends with finishReason "length", not an error', async () => {
    const small = await loadModel(dir, { device: 'cpu', kvCacheTokens: 64 });
    try {
      const prompt = Array.from({ length: 40 }, (_, i) => 10 + i);
      const r = await small.generate(prompt, { maxTokens: 100 }).result;
      // Greedy on the fixture never samples </s> here: tokens at positions 40..64, the last one
      // sampled but never fed.
      expect(r.finishReason).toBe('length');
      expect(r.tokens).toHaveLength(64 - 40 + 1);
      expect(small.freeKvPages).toBe((64 / 16) * small.config.numLayers);
    } finally {
      small.dispose();
    }
  });

  it('a sliding-window checkpoint runs past its window; the KV cache bounds a sequence', async () => {
    // The Mistral fixture with its window lowered from 4096 to 32 (test/engine/sliding-window
    // checks the logits past the window against the reference).
    const mistral = makeFixtures(root, ['mistral'])['mistral']!;
    const config = JSON.parse(readFileSync(join(mistral, 'config.json'), 'utf8'));
    writeFileSync(join(mistral, 'config.json'), JSON.stringify({ ...config, sliding_window: 32 }));
    const m = await loadModel(mistral, { device: 'cpu', kvCacheTokens: 64 });
    try {
      expect(m.maxSequenceTokens).toBe(64);
      expect(await m.logits(Array.from({ length: 50 }, (_, i) => 10 + i))).toHaveLength(m.config.vocabSize);
      expect(() => m.generate(Array.from({ length: 65 }, (_, i) => 10 + i))).toThrow(InvalidArgumentError);
      const r = await m.generate(Array.from({ length: 40 }, (_, i) => 10 + i), { maxTokens: 100, stopTokens: [] }).result;
      if (r.finishReason === 'length') expect(r.tokens).toHaveLength(64 - 40 + 1);
    } finally {
      m.dispose();
    }
  });

  it('a disposed model throws DisposedError', async () => {
    const m = await loadModel(dir, { device: 'cpu', kvCacheTokens: 64 });
    m.dispose();
    expect(() => m.generate(PROMPT)).toThrow(DisposedError);
    await expect(m.logits([1])).rejects.toBeInstanceOf(DisposedError);
  });
});

describe('loadModel() refuses broken checkpoints with ModelFormatError naming the file', () => {
  function copy(): string {
    const d = mkdtempSync(join(root, 'broken-'));
    for (const f of readdirSync(dir)) copyFileSync(join(dir, f), join(d, f));
    return d;
  }

  it('a truncated safetensors file', async () => {
    const d = copy();
    const file = join(d, 'model.safetensors');
    truncateSync(file, readFileSync(file).length - 100);
    await expect(loadModel(d, { device: 'cpu' })).rejects.toThrow(ModelFormatError);
    await expect(loadModel(d, { device: 'cpu' })).rejects.toThrow(/model\.safetensors/);
  });

  it('an unsupported architecture', async () => {
    const d = copy();
    const cfg = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
    cfg.architectures = ['GPT2LMHeadModel'];
    cfg.model_type = 'gpt2';
    writeFileSync(join(d, 'config.json'), JSON.stringify(cfg));
    await expect(loadModel(d, { device: 'cpu' })).rejects.toThrow(/config\.json/);
  });

  it('a missing folder', async () => {
    await expect(loadModel(join(root, 'nope'), { device: 'cpu' })).rejects.toThrow(ModelFormatError);
  });

  it('bad load options', async () => {
    await expect(loadModel(dir, { device: 'cpu', kvCacheTokens: 0 })).rejects.toThrow(/kvCacheTokens: expected a positive integer/);
    await expect(loadModel(dir, { device: 'cpu', dtype: 'f64' as 'f32' })).rejects.toThrow(/dtype: expected 'f32', 'f16' or 'bf16'/);
    await expect(loadModel(dir, { device: 'tpu' as 'cpu' })).rejects.toThrow(InvalidArgumentError);
  });
});
