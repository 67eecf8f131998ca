// Admission control, preemption and cancellation in the continuous-batching scheduler (CPU), and
// how the per-sequence limit and the KV pool are sized.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AbortError, InvalidArgumentError, QueueFullError, loadModel, type Model } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';

let root: string;
let dir: string;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-scheduling-'));
  dir = makeFixtures(root, ['llama-gqa'])['llama-gqa']!;
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

// Distinct prompts of ids in [3, 253): no special tokens.
const prompt = (i: number, length: number): number[] => Array.from({ length }, (_, j) => 3 + ((i * 31 + j * 7 + ((i * j) % 11)) % 250));

// A step queued after everything already queued: once it resolves, earlier steps have finished
// and dropped the sequences released meanwhile.
const drain = (m: Model): Promise<Float32Array> => m.logits([1, 2, 3]);

async function withModel<T>(options: Parameters<typeof loadModel>[1], fn: (m: Model) => Promise<T>): Promise<T> {
  const m = await loadModel(dir, { device: 'cpu', ...options });
  try {
    return await fn(m);
  } finally {
    m.dispose();
  }
}

describe('admission control', () => {
  it('64 concurrent requests of ~170 tokens on a 512-token pool all finish, each with its greedy output alone', async () => {
    await withModel({ kvCacheTokens: 512 }, async (m) => {
      const prompts = Array.from({ length: 64 }, (_, i) => prompt(i, 160));
      const alone: number[][] = [];
      for (const p of prompts) alone.push((await m.generate(p, { maxTokens: 10 }).result).tokens);
      const runs = prompts.map((p) => m.generate(p, { maxTokens: 10 }).result);
      const s = m.stats();
      expect(s.runningRequests + s.queuedRequests).toBe(64);
      expect(s.queuedRequests).toBeGreaterThan(0); // 11 pages per layer each: two fit a 32-page pool
      const together = await Promise.all(runs);
      expect(together.map((r) => r.tokens)).toEqual(alone);
      const after = m.stats();
      expect(after).toMatchObject({ runningRequests: 0, queuedRequests: 0, usedPages: 0, kvCacheTokens: 512, pageSize: 16 });
      expect(after.totalPages).toBe(32 * m.config.numLayers);
      expect(after.peakQueuedRequests).toBe(s.queuedRequests);
    });
  });

  it('preempts the newest request (recompute) when the pool runs dry mid-decode; outputs are unchanged', async () => {
    // 256 tokens = 16 pages per layer. Each request is admitted with 100 + 16 tokens (8 pages)
    // but grows to 160 (10 pages): two admitted together cannot both finish.
    await withModel({ kvCacheTokens: 256 }, async (m) => {
      const prompts = [3, 6, 9, 12].map((i) => prompt(i + 100, 100)); // none of them meets </s> in 60 tokens
      const opts = { maxTokens: 60, stopTokens: [], repetitionPenalty: 1.3 }; // the penalty reads the recomputed history
      const alone: number[][] = [];
      for (const p of prompts) alone.push((await m.generate(p, opts).result).tokens);
      expect(alone.every((t) => t.length === 60)).toBe(true); // no </s>: every request grows to 160
      const together = await Promise.all(prompts.map((p) => m.generate(p, opts).result));
      expect(together.map((r) => r.tokens)).toEqual(alone);
      expect(m.stats().preemptions).toBeGreaterThan(0);
      expect(m.stats().usedPages).toBe(0);
    });
  });

  it('a prompt larger than the whole pool is refused at once with a typed error', async () => {
    await withModel({ kvCacheTokens: 64 }, async (m) => {
      expect(() => m.generate(prompt(0, 65))).toThrow(InvalidArgumentError);
      expect(() => m.generate(prompt(0, 65))).toThrow(/65 tokens do not fit the KV cache \(64 tokens; raise kvCacheTokens\)/);
      expect(m.stats()).toMatchObject({ runningRequests: 0, queuedRequests: 0, usedPages: 0 });
    });
  });

  it('abort while queued rejects with AbortError at once and takes nothing from the pool', async () => {
    await withModel({ kvCacheTokens: 64 }, async (m) => {
      const first = m.generate(prompt(1, 40), { maxTokens: 20, stopTokens: [] });
      const controller = new AbortController();
      const queued = m.generate(prompt(2, 40), { maxTokens: 20, stopTokens: [], signal: controller.signal });
      expect(m.stats()).toMatchObject({ runningRequests: 1, queuedRequests: 1 });
      let firstDone = false;
      void first.result.then(() => (firstDone = true));
      controller.abort();
      await expect(queued.result).rejects.toBeInstanceOf(AbortError);
      expect(firstDone).toBe(false); // rejected while the running request was still going
      expect(m.stats()).toMatchObject({ runningRequests: 1, queuedRequests: 0 });
      await first.result;
      await drain(m);
      expect(m.stats().usedPages).toBe(0);
    });
  });

  it('beyond maxQueuedRequests a request is refused at once with QueueFullError', async () => {
    await withModel({ kvCacheTokens: 64, maxQueuedRequests: 1 }, async (m) => {
      const a = m.generate(prompt(1, 40), { maxTokens: 8, stopTokens: [] });
      const b = m.generate(prompt(2, 40), { maxTokens: 8, stopTokens: [] });
      expect(() => m.generate(prompt(3, 40), { maxTokens: 8 })).toThrow(QueueFullError);
      expect(() => m.generate(prompt(3, 40), { maxTokens: 8 })).toThrow(/queue is full: 1 request\(s\) waiting \(maxQueuedRequests 1\)/);
      expect(m.stats()).toMatchObject({ runningRequests: 1, queuedRequests: 1 });
      await Promise.all([a.result, b.result]);
      // The queue has room again.
      await m.generate(prompt(3, 40), { maxTokens: 2 }).result;
    });
    await expect(loadModel(dir, { device: 'cpu', maxQueuedRequests: -1 })).rejects.toThrow(/maxQueuedRequests: expected an integer >= 0/);
  });
});

describe('leaving a stream early', () => {
  it('break out of for-await cancels the request and frees its pages', async () => {
    await withModel({ kvCacheTokens: 512 }, async (m) => {
      const stream = m.generate(prompt(5, 40), { maxTokens: 200, stopTokens: [] });
      for await (const _ of stream) break;
      expect(m.stats()).toMatchObject({ runningRequests: 0, queuedRequests: 0 });
      const r = await stream.result;
      expect(r.finishReason).toBe('cancelled');
      expect(r.tokens).toHaveLength(1); // stopped stepping: nothing after the token the loop saw
      await drain(m);
      expect(m.stats().usedPages).toBe(0);
    });
  });

  it("the iterator's throw() cancels too, and the error reaches the caller", async () => {
    await withModel({ kvCacheTokens: 512 }, async (m) => {
      const stream = m.generate(prompt(6, 40), { maxTokens: 200, stopTokens: [] });
      const it = stream[Symbol.asyncIterator]();
      await it.next();
      await expect(it.throw!(new Error('consumer failed'))).rejects.toThrow('consumer failed');
      const r = await stream.result;
      expect(r.finishReason).toBe('cancelled');
      expect(r.tokens).toHaveLength(1);
      await drain(m);
      expect(m.stats().usedPages).toBe(0);
    });
  });

  it('breaking after the generation ended changes nothing', async () => {
    await withModel({ kvCacheTokens: 512 }, async (m) => {
      const stream = m.generate(prompt(7, 20), { maxTokens: 3, stopTokens: [] });
      const r = await stream.result;
      for await (const _ of stream) break;
      expect(await stream.result).toBe(r);
      expect(r.finishReason).not.toBe('cancelled');
    });
  });
});

describe('sequence limit and pool size', () => {
  // The llama-gqa fixture trained at 128 positions with rope scaling that extends it 4x.
  function scaled(name: string, ropeScaling: Record<string, unknown>): string {
    const d = makeFixtures(join(root, name), ['llama-gqa'], { sizes: { maxPositionEmbeddings: 128 } })['llama-gqa']!;
    const config = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
    writeFileSync(join(d, 'config.json'), JSON.stringify({ ...config, rope_scaling: ropeScaling }));
    return d;
  }

  it('a rope-scaled checkpoint runs past its trained length with default options', async () => {
    const d = scaled('yarn', { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 128 });
    const m = await loadModel(d, { device: 'cpu' });
    try {
      expect(m.maxSequenceTokens).toBe(512);
      expect(m.kvCacheTokens).toBeGreaterThanOrEqual(512);
      const r = await m.generate(prompt(8, 300), { maxTokens: 4, stopTokens: [] }).result;
      expect(r.promptTokens).toBe(300);
      expect(() => m.generate(prompt(8, 513))).toThrow(/513 tokens exceed the model's context \(512 tokens/);
    } finally {
      m.dispose();
    }
  });

  it('the context rule per rope scaling type', async () => {
    const cases: [string, Record<string, unknown> | null, number][] = [
      ['plain', null, 128],
      ['linear', { type: 'linear', factor: 4 }, 512],
      ['dynamic', { type: 'dynamic', factor: 4 }, 512],
      ['llama3', { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 32 }, 256],
      ['yarn-no-original', { rope_type: 'yarn', factor: 2 }, 256],
    ];
    for (const [name, ropeScaling, expected] of cases) {
      const m = await loadModel(scaled(name, ropeScaling as Record<string, unknown>), { device: 'cpu', kvCacheTokens: 4096 });
      try {
        expect([name, m.maxSequenceTokens]).toEqual([name, expected]);
      } finally {
        m.dispose();
      }
    }
  });

  it("loadModel's maxSequenceTokens runs past the model's context on purpose; the pool still caps it", async () => {
    const d = scaled('past', null);
    const m = await loadModel(d, { device: 'cpu', maxSequenceTokens: 300 });
    try {
      expect(m.maxSequenceTokens).toBe(300);
      expect((await m.generate(prompt(9, 200), { maxTokens: 2 }).result).promptTokens).toBe(200);
      expect(() => m.generate(prompt(9, 301))).toThrow(/301 tokens exceed maxSequenceTokens \(300\)/);
    } finally {
      m.dispose();
    }
    const capped = await loadModel(d, { device: 'cpu', maxSequenceTokens: 300, kvCacheTokens: 256 });
    expect(capped.maxSequenceTokens).toBe(256);
    capped.dispose();
    await expect(loadModel(d, { device: 'cpu', maxSequenceTokens: 0 })).rejects.toThrow(/maxSequenceTokens: expected a positive integer/);
  });

  it('the default pool comes from memory, not from the context length', async () => {
    await withModel({}, async (m) => {
      expect(m.maxSequenceTokens).toBe(512);
      expect(m.kvCacheTokens).toBeGreaterThan(512);
      expect(m.kvCacheTokens).toBeLessThanOrEqual(64 * 512);
      expect(m.kvCacheTokens % 16).toBe(0);
      expect(m.stats()).toMatchObject({ kvCacheTokens: m.kvCacheTokens, totalPages: (m.kvCacheTokens / 16) * m.config.numLayers, usedPages: 0 });
    });
  });
});
