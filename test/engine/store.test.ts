// The context store (CPU, fixture checkpoints): documents encoded once after a shared prefix and
// attached to sequences. One document right after the prefix gives exactly the logits of
// prefilling [P; d; query]; several give those of a float64 reference in which each document
// attends only to the prefix and itself, with keys re-rotated to the documents' new positions.
// N sequences over the same documents hold their value pages (and unmoved key pages) once.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type ContextStore, DisposedError, InvalidArgumentError, loadModel, type Model, UnsupportedError } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { ReferenceLlama } from '../support/reference-llama';
import { maxDiff } from '../support/compare';

let root: string;
let dirs: Record<string, string>;
let model: Model;
let reference: ReferenceLlama;

// Page size 16: prefix 21 tokens and documents of 13, 37 and 16 tokens leave holes in pages.
const PREFIX = 21;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-store-'));
  dirs = makeFixtures(root, ['llama-gqa', 'llama3']);
  model = await loadModel(dirs['llama-gqa']!, { device: 'cpu', kvCacheTokens: 1024, prefillChunk: 16 });
  reference = ReferenceLlama.load(dirs['llama-gqa']!);
});

afterAll(() => {
  model?.dispose();
  rmSync(root, { recursive: true, force: true });
});

// Distinct token ids in [3, 253): no special tokens.
const ids = (i: number, length: number): number[] => Array.from({ length }, (_, j) => 3 + ((i * 31 + j * 7 + ((i * j) % 11)) % 250));

// Rows of the reference's logits for tokens [from, to), flattened.
function rows(all: Float64Array[], from: number, to: number): Float64Array {
  const vocab = all[0]!.length;
  const out = new Float64Array((to - from) * vocab);
  for (let t = from; t < to; t++) out.set(all[t]!, (t - from) * vocab);
  return out;
}

async function openWith(m: Model, docs: Record<string, number[]>, options: { deviceBytes?: number } = {}): Promise<ContextStore> {
  const store = await m.openStore({ prefix: ids(0, PREFIX), ...options });
  await store.putMany(Object.entries(docs).map(([id, tokens]) => ({ id, tokens })));
  return store;
}

describe('sequences over stored documents', () => {
  it('one document after the prefix: the query logits equal prefilling [P; d; query] (1e-5)', async () => {
    const d = ids(1, 37);
    const query = ids(9, 11);
    using store = await openWith(model, { a: d });
    using seq = model.sequence({ store, documents: ['a'] });
    const ours = (await seq.append(query, { logits: 'all' }))!;
    const direct = await model.logits([...ids(0, PREFIX), ...d, ...query], { all: true });
    const vocab = model.config.vocabSize;
    expect(maxDiff(ours, direct.subarray((PREFIX + d.length) * vocab))).toBeLessThan(1e-5);
    expect(seq.tokenCount).toBe(PREFIX + d.length + query.length);
  });

  it('several documents: the logits equal a float64 reference with block attention (each document sees P and itself)', async () => {
    const docs = { a: ids(1, 13), b: ids(2, 37), c: ids(3, 16) };
    const query = ids(9, 9);
    using store = await openWith(model, docs);
    // Listed in another order than stored: every document but the first moves.
    const order = ['b', 'c', 'a'] as const;
    using seq = model.sequence({ store, documents: [...order] });
    const ours = (await seq.append(query, { logits: 'all' }))!;
    const stream = [...ids(0, PREFIX), ...order.flatMap((id) => docs[id]), ...query];
    const expected = reference.forward(stream, { blocks: [PREFIX, ...order.map((id) => docs[id].length)] });
    expect(maxDiff(ours, rows(expected, stream.length - query.length, stream.length))).toBeLessThan(1e-4);
    // Full attention over the same stream is another computation: the mask matters.
    const plain = reference.forward(stream);
    expect(maxDiff(ours, rows(plain, stream.length - query.length, stream.length))).toBeGreaterThan(1e-3);
  });

  it('layout: every layer holds the stream at consecutive positions, documents in the order listed', async () => {
    using store = await openWith(model, { a: ids(1, 13), b: ids(2, 20) });
    using seq = model.sequence({ store, documents: ['b', 'a'] });
    await seq.append(ids(9, 5));
    const n = PREFIX + 20 + 13 + 5;
    const expected = Int32Array.from({ length: n }, (_, i) => i);
    for (const layer of seq.layout().layers) {
      expect(layer.source).toEqual(expected);
      expect(layer.positions).toEqual(expected);
    }
  });

  it('generation continues after the query, and model.generate({ store, documents, query }) gives the same tokens', async () => {
    using store = await openWith(model, { a: ids(1, 13), b: ids(2, 37) });
    using seq = model.sequence({ store, documents: ['b', 'a'] });
    await seq.append(ids(9, 7));
    const one = await seq.generate({ maxTokens: 6, temperature: 0, stopTokens: [] }).result;
    const two = await model.generate({ store, documents: ['b', 'a'], query: ids(9, 7) }, { maxTokens: 6, temperature: 0, stopTokens: [] }).result;
    expect(two.tokens).toEqual(one.tokens);
    expect(one.tokens.length).toBeGreaterThan(0);
  });

  it('an evicted sequence attaches its documents again and gives the same logits', async () => {
    using store = await openWith(model, { a: ids(1, 13), b: ids(2, 37) });
    using seq = model.sequence({ store, documents: ['b', 'a'] });
    await seq.append(ids(9, 4));
    const before = (await seq.append(ids(8, 3), { logits: 'last' }))!;
    // A long one-shot request needs the idle sequence's pages.
    const small = await loadModel(dirs['llama-gqa']!, { device: 'cpu', kvCacheTokens: 160, prefillChunk: 16 });
    try {
      using s2 = await small.openStore({ prefix: ids(0, PREFIX) });
      await s2.put('a', ids(1, 13));
      await s2.put('b', ids(2, 37));
      using q = small.sequence({ store: s2, documents: ['b', 'a'] });
      await q.append(ids(9, 4));
      await small.logits(ids(5, 60));
      expect(small.stats().evictions).toBeGreaterThan(0);
      const after = (await q.append(ids(8, 3), { logits: 'last' }))!;
      expect(maxDiff(after, before)).toBeLessThan(1e-5);
    } finally {
      small.dispose();
    }
  });

  it('an unknown id is refused by name, and nothing is attached', async () => {
    using store = await openWith(model, { a: ids(1, 13) });
    const used = model.stats().usedPages;
    expect(() => model.sequence({ store, documents: ['a', 'nope'] })).toThrow(InvalidArgumentError);
    expect(() => model.sequence({ store, documents: ['a', 'nope'] })).toThrow(/'nope' is not in the store/);
    expect(() => model.generate({ store, documents: ['nope'], query: 'x' })).toThrow(/'nope'/);
    expect(model.stats().usedPages).toBe(used);
  });
});

describe('zero-copy sharing', () => {
  it('N sequences over the same documents hold value pages once, and key pages once where positions do not move', async () => {
    const a = ids(1, 32); // two pages per layer
    const b = ids(2, 16); // one page per layer
    using store = await openWith(model, { a, b });
    const layers = model.config.numLayers;
    const base = model.stats().usedPages;
    const N = 4;
    const seqs = Array.from({ length: N }, () => model.sequence({ store, documents: ['a', 'b'] }));
    // Query of 16 tokens: one page per layer of each sequence's own.
    for (const s of seqs) await s.append(ids(9, 16));
    // 'a' follows P at its stored positions (its pages are shared whole); 'b' moves, so each
    // sequence re-rotates its keys into one page per layer of its own (its values stay shared).
    expect(model.stats().usedPages - base).toBe(N * layers * (1 + 1));
    for (const s of seqs) s.dispose();
    expect(model.stats().usedPages).toBe(base);
  });

  it('stored pages outlive the store while a sequence uses them', async () => {
    const store = await openWith(model, { a: ids(1, 20) });
    const before = model.stats().usedPages;
    using seq = model.sequence({ store, documents: ['a'] });
    await seq.append(ids(9, 3));
    store.close();
    const last = (await seq.append(ids(8, 2), { logits: 'last' }))!;
    expect(last.length).toBe(model.config.vocabSize);
    seq.dispose();
    expect(model.stats().usedPages).toBeLessThan(before);
  });
});

describe('the store', () => {
  it('put, has, list, delete and stats on the device tier', async () => {
    using store = await model.openStore({ prefix: ids(0, PREFIX) });
    const pageBytes = 2 * 16 * model.config.numKvHeads * model.config.headDim * 4;
    const layers = model.config.numLayers;
    const prefixPages = 2 * layers;
    const none = { entries: 0, tokens: 0, pages: 0, bytes: 0 };
    expect(store.stats()).toEqual({
      device: { entries: 0, tokens: 0, pages: prefixPages, bytes: prefixPages * pageBytes },
      host: none,
      disk: none,
      remote: null,
      hits: 0,
      hitsByTier: { device: 0, host: 0, disk: 0, remote: 0 },
      writesByTier: { host: 0, disk: 0, remote: 0 },
      errorsByTier: { disk: 0, remote: 0 },
      misses: 0,
      evictions: 0,
      corruptEntries: 0,
    });
    await store.put('a', ids(1, 13));
    await store.putMany([{ id: 'b', tokens: ids(2, 40) }, { id: 'c', text: ' a river' }]);
    expect(store.has('a')).toBe(true);
    expect(store.has('z')).toBe(false);
    expect(store.list()).toEqual(['a', 'b', 'c']);
    const c = model.tokenizer.encode(' a river', { addSpecialTokens: false }).length;
    const s = store.stats();
    expect(s.device.entries).toBe(3);
    expect(s.device.tokens).toBe(13 + 40 + c);
    expect(s.device.pages).toBe(prefixPages + (1 + 3 + Math.ceil(c / 16)) * layers);
    expect(s.device.bytes).toBe(s.device.pages * pageBytes);
    expect(store.delete('b')).toBe(true);
    expect(store.delete('b')).toBe(false);
    expect(store.list()).toEqual(['a', 'c']);
  });

  it('putting an id again with other content replaces it; with the same content it is kept', async () => {
    using store = await model.openStore({ prefix: ids(0, PREFIX) });
    await store.put('a', ids(1, 13));
    const pages = store.stats().device.pages;
    await store.put('a', ids(1, 13));
    expect(store.stats().device.pages).toBe(pages);
    const d = ids(2, 30);
    await store.put('a', d);
    expect(store.stats().device.tokens).toBe(30);
    using seq = model.sequence({ store, documents: ['a'] });
    const ours = (await seq.append(ids(9, 3), { logits: 'last' }))!;
    expect(maxDiff(ours, await model.logits([...ids(0, PREFIX), ...d, ...ids(9, 3)]))).toBeLessThan(1e-5);
  });

  it('deviceBytes evicts the least recently used documents; an evicted one is recomputed on use', async () => {
    const pageBytes = 2 * 16 * model.config.numKvHeads * model.config.headDim * 4;
    const layers = model.config.numLayers;
    // Prefix (2 pages) + two one-page documents, per layer.
    using store = await model.openStore({ prefix: ids(0, PREFIX), deviceBytes: 4 * layers * pageBytes });
    await store.put('a', ids(1, 10));
    await store.put('b', ids(2, 10));
    await store.put('c', ids(3, 10));
    expect(store.stats().evictions).toBe(1);
    expect(store.stats().device.entries).toBe(2);
    expect(store.list()).toEqual(['a', 'b', 'c']); // 'a' is still known
    using seq = model.sequence({ store, documents: ['a'] });
    const ours = (await seq.append(ids(9, 3), { logits: 'last' }))!;
    expect(store.stats().misses).toBe(1);
    expect(maxDiff(ours, await model.logits([...ids(0, PREFIX), ...ids(1, 10), ...ids(9, 3)]))).toBeLessThan(1e-5);
  });

  it('two models never share entries, and a store serves only its own model', async () => {
    const other = await loadModel(dirs['llama-gqa']!, { device: 'cpu', kvCacheTokens: 256 });
    try {
      using mine = await openWith(model, { a: ids(1, 13) });
      using theirs = await other.openStore({ prefix: ids(0, PREFIX) });
      expect(theirs.has('a')).toBe(false);
      expect(() => other.sequence({ store: mine, documents: ['a'] })).toThrow(/store: expected a store opened by this model/);
    } finally {
      other.dispose();
    }
  });

  it('refuses bad options and use after close, by name', async () => {
    await expect(model.openStore({ prefix: 'P', dir: '' })).rejects.toThrow(/dir/);
    await expect(model.openStore({ prefix: 'P', dir: 5 as never })).rejects.toThrow(InvalidArgumentError);
    await expect(model.openStore({ prefix: 'P', hostBytes: -1 })).rejects.toThrow(/hostBytes/);
    await expect(model.openStore({ prefix: 'P', hostBytes: 1.5 })).rejects.toThrow(/hostBytes/);
    await expect(model.openStore({ prefix: '' })).rejects.toThrow(InvalidArgumentError);
    await expect(model.openStore({ prefix: 'P', deviceBytes: 0 })).rejects.toThrow(/deviceBytes/);
    using store = await model.openStore({ prefix: 'P' });
    await expect(store.put('', [5])).rejects.toThrow(/id/);
    await expect(store.put('x', [])).rejects.toThrow(/content: is empty/);
    await expect(store.putMany([['x', [5]] as never])).rejects.toThrow(/docs\[0\]/);
    store.close();
    expect(() => store.list()).toThrow(DisposedError);
  });

  it('putMany reports progress in order and stops on abort (documents already started are stored)', async () => {
    using store = await model.openStore({ prefix: ids(0, PREFIX) });
    const seen: number[] = [];
    const controller = new AbortController();
    const docs = [1, 2, 3, 4, 5, 6, 7, 8].map((i) => ({ id: `d${i}`, tokens: ids(i, 5 + (i % 3) * 20) }));
    await expect(
      store.putMany(docs, {
        signal: controller.signal,
        onProgress: (done, total) => {
          seen.push(done);
          expect(total).toBe(8);
          if (done === 2) controller.abort();
        },
      }),
    ).rejects.toThrow(/abort/i);
    // Stored in the order listed; at most the four in flight when it was aborted finish.
    expect(seen.slice(0, 2)).toEqual([1, 2]);
    expect(seen).toEqual(seen.map((_, i) => i + 1));
    expect(seen.length).toBeLessThanOrEqual(6);
    expect(store.list()).toEqual(seen.map((i) => `d${i}`));
  });
});

describe('rope scalings', () => {
  it('llama3 rope scaling: moved documents match the block-attention reference', async () => {
    const dir = dirs['llama3']!;
    const m = await loadModel(dir, { device: 'cpu', kvCacheTokens: 512, prefillChunk: 16 });
    try {
      const ref = ReferenceLlama.load(dir);
      const docs = { a: ids(1, 13), b: ids(2, 19) };
      using store = await openWith(m, docs);
      using seq = m.sequence({ store, documents: ['b', 'a'] });
      const query = ids(9, 4);
      const ours = (await seq.append(query, { logits: 'all' }))!;
      const stream = [...ids(0, PREFIX), ...docs.b, ...docs.a, ...query];
      const expected = ref.forward(stream, { blocks: [PREFIX, docs.b.length, docs.a.length] });
      expect(maxDiff(ours, rows(expected, stream.length - query.length, stream.length))).toBeLessThan(1e-4);
    } finally {
      m.dispose();
    }
  });

  it('dynamic NTK scaling is refused, naming rope_scaling', async () => {
    const copied = makeFixtures(join(root, 'dyn'), ['llama-gqa'])['llama-gqa']!;
    const file = join(copied, 'config.json');
    const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    writeFileSync(file, JSON.stringify({ ...config, rope_scaling: { type: 'dynamic', factor: 2.0 } }));
    const m = await loadModel(copied, { device: 'cpu', kvCacheTokens: 64 });
    try {
      await expect(m.openStore({ prefix: 'P' })).rejects.toThrow(UnsupportedError);
      await expect(m.openStore({ prefix: 'P' })).rejects.toThrow(/rope_scaling/);
    } finally {
      m.dispose();
    }
  });
});
