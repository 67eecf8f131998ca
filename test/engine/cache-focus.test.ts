// CacheFocus on the engine (CPU, a 4-layer fixture): the query's attention at the pruning layers
// scores the stored documents exactly as a float64 reference does; the documents the keep rule
// drops are absent from every later layer; the survivors sit where the allocation says (layout()
// shows it); the query's logits, and those of tokens after it, equal a float64 reference that
// holds the same per-layer token sets at the same positions; pruned pages go back to the pool;
// concurrent requests over one store stay independent.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type CacheFocusPolicy, type ContextStore, loadModel, type Model, policies } from '../../lib/index.js';
import { allocate, documentScores, keepDocuments, resolveCacheFocus } from '../../lib/policies/cache-focus.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { ReferenceLlama } from '../support/reference-llama';
import { maxDiff } from '../support/compare';

let root: string;
let model: Model;
let reference: ReferenceLlama;
let store: ContextStore;
const LAYERS = 4;
const PREFIX = 7;
const ids = (i: number, length: number): number[] => Array.from({ length }, (_, j) => 3 + ((i * 37 + j * 11 + ((i * j) % 13)) % 250));
const prefix = ids(0, PREFIX);
// Four documents of different lengths (holes in their last pages), and a query.
const docs = [ids(1, 13), ids(2, 20), ids(3, 9), ids(4, 17)];
const query = ids(9, 6);
const lengths = docs.map((d) => d.length);

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-cachefocus-'));
  const dir = makeFixtures(root, ['llama-gqa'], { sizes: { numLayers: LAYERS } })['llama-gqa']!;
  model = await loadModel(dir, { device: 'cpu', kvCacheTokens: 2048, pageSize: 8 });
  reference = ReferenceLlama.load(dir);
  store = await model.openStore({ prefix });
  await store.putMany(docs.map((tokens, i) => ({ id: `d${i}`, tokens })));
});

afterAll(() => {
  store?.close();
  model?.dispose();
  rmSync(root, { recursive: true, force: true });
});

// The float64 model of a CacheFocus prefill: the documents scored at each pruning layer from
// the reference's own attention, the keep rule and allocation applied, and the query's (and
// `after` tokens') logits computed with each layer's token set and positions.
function expected(policy: CacheFocusPolicy, after: number[] = []) {
  const p = resolveCacheFocus({ ...policy });
  const stream = [...prefix, ...docs.flat(), ...query, ...after];
  const blocks = [PREFIX, ...lengths];
  const docStart: number[] = [];
  lengths.reduce((at, n) => (docStart.push(at), at + n), PREFIX);
  const qStart = PREFIX + lengths.reduce((a, b) => a + b, 0);
  const heads = model.config.numHeads;
  // Per layer: which documents it holds and where each starts.
  const frames: { held: Set<number>; starts: number[] }[] = Array.from({ length: LAYERS }, () => ({ held: new Set([0, 1, 2, 3]), starts: [...docStart] }));
  const score = new Float64Array(docs.length);
  const prune = p.pruneLayers!;
  const frameOf = (l: number) => {
    const f = frames[l]!;
    let end = PREFIX;
    for (const d of f.held) end = Math.max(end, f.starts[d]! + lengths[d]!);
    const docOf = (s: number) => docStart.findIndex((st, d) => s >= st && s < st + lengths[d]!);
    return {
      held: (s: number) => s < PREFIX || s >= qStart || f.held.has(docOf(s)),
      position: (s: number) => (s < PREFIX ? s : s >= qStart ? end + (s - qStart) : f.starts[docOf(s)]! + (s - docStart[docOf(s)]!)),
    };
  };
  let held = [0, 1, 2, 3];
  for (const [k, layer] of prune.entries()) {
    // Attention of the query rows at layers up to `layer` (frames so far), as masses per doc.
    const mass = new Map<number, Float64Array>(); // layer -> (rows, heads, held)
    reference.forward(stream.slice(0, qStart + query.length), {
      blocks,
      frames: (l) => frameOf(l),
      attention: (l, t, h, probs) => {
        if (t < qStart) return;
        const m = mass.get(l) ?? new Float64Array(query.length * heads * held.length);
        mass.set(l, m);
        held.forEach((d, j) => {
          let sum = 0;
          for (let i = 0; i < lengths[d]!; i++) sum += probs[docStart[d]! + i]!;
          m[((t - qStart) * heads + h) * held.length + j] = sum;
        });
      },
    });
    const begin = k === 0 ? 0 : prune[k - 1]! + 1;
    for (let l = p.accumulate ? begin : layer; l <= layer; l++) {
      const s = documentScores(mass.get(l)!, query.length, heads, held.length, p, held.map((d) => lengths[d]!));
      held.forEach((d, j) => (score[d] = (p.accumulate ? score[d]! : 0) + s[j]!));
    }
    const kept = keepDocuments(held, score, Array.isArray(p.keep) ? p.keep[k]! : (p.keep as never));
    const starts = allocate(kept, lengths, score, p.allocation, PREFIX, frames[layer]!.starts);
    for (let l = layer + 1; l < LAYERS; l++) {
      frames[l] = { held: new Set(kept), starts: frames[l]!.starts.map((s, d) => starts.get(d) ?? s) };
    }
    held = kept;
  }
  const logits = reference.forward(stream, { blocks, frames: (l) => frameOf(l) });
  return { logits: logits.slice(qStart), frames: frames.map((f, l) => ({ held: [...f.held].sort(), starts: f.starts, ...frameOf(l) })), qStart };
}

async function run(policy: CacheFocusPolicy, documents = ['d0', 'd1', 'd2', 'd3'], after: number[] = []) {
  const seq = model.sequence({ store, documents, policy });
  const rows = (await seq.append(query, { logits: 'all' }))!;
  const more = after.length ? (await seq.append(after, { logits: 'all' }))! : new Float32Array(0);
  return { seq, rows, more };
}

describe('CacheFocus pruning and allocation', () => {
  const cases: [string, CacheFocusPolicy][] = [
    ['topK 2 at layer 1, align', policies.cacheFocus({ pruneLayers: [1], keep: { topK: 2 }, allocation: 'align' })],
    ['fraction at layers 0 and 2, sort, max heads, last 3 tokens', policies.cacheFocus({ pruneLayers: [0, 2], keep: { fraction: 0.6 }, allocation: 'sort', headReduction: 'max', scoreTokens: { last: 3 } })],
    ['mass 0.5 at layer 0, none (positions kept), length-normalised, not accumulated', policies.cacheFocus({ pruneLayers: [0], keep: { mass: 0.5 }, allocation: 'none', normalize: 'length', accumulate: false })],
  ];
  for (const [name, policy] of cases) {
    it(`${name}: kept documents, layout and logits equal the float64 reference`, async () => {
      const after = ids(8, 3);
      const want = expected(policy, after);
      const { seq, rows, more } = await run(policy, undefined, after);
      try {
        const vocab = model.config.vocabSize;
        const got = [...rows, ...more];
        const ref = want.logits.flatMap((r) => [...r]);
        expect(got.length).toBe(ref.length);
        expect(maxDiff(got, ref)).toBeLessThan(2e-4);
        expect(got.length / vocab).toBe(query.length + after.length);
        // The case prunes something, and pruning changes the logits far beyond the tolerance.
        expect(want.frames[LAYERS - 1]!.held.length).toBeLessThan(docs.length);
        const full = await model.logits([...prefix, ...docs.flat(), ...query, ...after], { all: true });
        expect(maxDiff(got, full.subarray(want.qStart * vocab))).toBeGreaterThan(1e-3);
        // layout(): each layer's tokens (stream indices) and positions are the reference's.
        const layout = seq.layout();
        for (let l = 0; l < LAYERS; l++) {
          const f = want.frames[l]!;
          const source = [...Array(want.qStart + query.length + after.length).keys()].filter((s) => f.held(s));
          expect([...layout.layers[l]!.source]).toEqual(source);
          expect([...layout.layers[l]!.positions]).toEqual(source.map((s) => f.position(s)));
        }
      } finally {
        seq.dispose();
      }
    });
  }

  it('pages of pruned documents go back to the pool; nothing leaks after dispose', async () => {
    const before = model.stats().usedPages;
    const keepAll = await run(policies.cacheFocus({ pruneLayers: [0], keep: { topK: 4 } }));
    const withAll = model.stats().usedPages - before;
    keepAll.seq.dispose();
    const pruned = await run(policies.cacheFocus({ pruneLayers: [0], keep: { topK: 1 } }));
    const withOne = model.stats().usedPages - before;
    // Layers 1..3 hold one document instead of four: its moved keys' pages only.
    expect(withOne).toBeLessThan(withAll);
    pruned.seq.dispose();
    expect(model.stats().usedPages).toBe(before);
  });

  it('concurrent requests with different document sets over one store stay independent', async () => {
    const policy = policies.cacheFocus({ pruneLayers: [1], keep: { topK: 1 } });
    const alone = await run(policy, ['d3', 'd1']);
    const aloneRows = alone.rows.slice();
    alone.seq.dispose();
    const other = await run(policy, ['d0', 'd2', 'd1']);
    const otherRows = other.rows.slice();
    other.seq.dispose();
    const [a, b] = await Promise.all([run(policy, ['d3', 'd1']), run(policy, ['d0', 'd2', 'd1'])]);
    expect(maxDiff(a.rows, aloneRows)).toBe(0);
    expect(maxDiff(b.rows, otherRows)).toBe(0);
    a.seq.dispose();
    b.seq.dispose();
  });

  it('generation after pruning runs at each layer\'s frame (greedy tokens equal appending them)', async () => {
    const policy = policies.cacheFocus({ pruneLayers: [0, 2], keep: { topK: 2 } });
    const { text, tokens } = await model.generate({ store, documents: ['d0', 'd1', 'd2', 'd3'], query }, { maxTokens: 4, temperature: 0, stopTokens: [], policy } as never).result;
    void text;
    const want = expected(policy, tokens.slice(0, 3));
    // Each generated token is the argmax of the previous row's reference logits.
    const argmax = (r: Float64Array) => r.reduce((best, x, i) => (x > r[best]! ? i : best), 0);
    const rows = want.logits.slice(query.length - 1);
    tokens.forEach((t, i) => expect(t).toBe(argmax(rows[i]!)));
  });
});

describe('baselines on the same store, and documents beyond the context', () => {
  it("policies.concat(): plain RAG, the logits of prefilling [P; documents; query] jointly", async () => {
    using seq = model.sequence({ store, documents: ['d2', 'd0'], policy: policies.concat() });
    const rows = (await seq.append(query, { logits: 'all' }))!;
    const direct = await model.logits([...prefix, ...docs[2]!, ...docs[0]!, ...query], { all: true });
    expect(maxDiff(rows, direct.subarray((PREFIX + lengths[2]! + lengths[0]!) * model.config.vocabSize))).toBeLessThan(1e-5);
    expect(store.stats().hits).toBeGreaterThanOrEqual(0);
  });

  // The float64 logits of the query over documents held at the given first positions (every layer).
  function referenceAt(order: number[], starts: number[]): Float64Array[] {
    const stream = [...prefix, ...order.flatMap((d) => docs[d]!), ...query];
    const docStart: number[] = [];
    order.reduce((at, d) => (docStart.push(at), at + lengths[d]!), PREFIX);
    const qStart = docStart.at(-1)! + lengths[order.at(-1)!]!;
    let end = PREFIX;
    order.forEach((d, i) => (end = Math.max(end, starts[i]! + lengths[d]!)));
    const position = (s: number) => {
      if (s < PREFIX) return s;
      if (s >= qStart) return end + s - qStart;
      const i = docStart.findIndex((st, j) => s >= st && s < st + lengths[order[j]!]!);
      return starts[i]! + s - docStart[i]!;
    };
    return reference.forward(stream, { blocks: [PREFIX, ...order.map((d) => lengths[d]!)], frames: () => ({ held: () => true, position }) }).slice(qStart);
  }

  it('policies.parallelWindows(): every document at |P|, the query after the longest', async () => {
    using seq = model.sequence({ store, documents: ['d0', 'd1', 'd2'], policy: policies.parallelWindows() });
    const rows = (await seq.append(query, { logits: 'all' }))!;
    const want = referenceAt([0, 1, 2], [PREFIX, PREFIX, PREFIX]);
    expect(maxDiff(rows, want.flatMap((r) => [...r]))).toBeLessThan(2e-4);
    const layout = seq.layout().layers[0]!;
    expect(Math.max(...layout.positions)).toBe(PREFIX + 20 + query.length - 1);
  });

  it('beyond the context: documents in parallel windows until pruning makes room; every position stays in range', async () => {
    // 12 documents of 60 tokens after the prefix: 727 tokens, past the 512 positions.
    const many = Array.from({ length: 12 }, (_, i) => ids(20 + i, 60));
    using big = await model.openStore({ prefix });
    await big.putMany(many.map((tokens, i) => ({ id: `m${i}`, tokens })));
    const documents = many.map((_, i) => `m${i}`);
    const policy = policies.cacheFocus({ pruneLayers: [0], keep: { topK: 3 } });
    const stream = await model.generate({ store: big, documents, query }, { maxTokens: 5, temperature: 0, stopTokens: [], policy }).result;
    expect(stream.completionTokens).toBe(5);
    using seq = model.sequence({ store: big, documents, policy });
    await seq.append(query);
    const layout = seq.layout();
    for (const layer of layout.layers) expect(Math.max(...layer.positions)).toBeLessThan(model.config.maxPositionEmbeddings);
    // Layer 0 holds all 12 documents in windows; the later layers hold 3, aligned after P.
    expect(layout.layers[0]!.source.length).toBe(PREFIX + 12 * 60 + query.length);
    expect(layout.layers[1]!.source.length).toBe(PREFIX + 3 * 60 + query.length);
    expect([...layout.layers[1]!.positions]).toEqual([...Array(PREFIX + 3 * 60 + query.length).keys()]);
    // Without pruning the documents cannot all fit: refused by name.
    expect(() => model.sequence({ store: big, documents, policy: policies.full() })).toThrow(/documents/);
  });
});
