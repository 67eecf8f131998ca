// APE on the engine (CPU, the 4-layer fixture of the CacheFocus tests): stored documents in
// parallel windows after the shared prefix, and the query's (and later tokens') attention in two
// parts, documents with temperature T and the rest, mixed by softmax([S T lse_docs, lse_rest]).
// The logits equal a float64 reference that computes exactly that; the options are validated.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type ContextStore, InvalidArgumentError, loadModel, type Model, policies } from '../../lib/index.js';
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
// Documents of different lengths (holes in their last pages of 8 rows), and a query.
const docs = [ids(1, 13), ids(2, 20), ids(3, 9), ids(4, 17)];
const query = ids(9, 6);
const lengths = docs.map((d) => d.length);

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-ape-'));
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

// float64 logits of the tokens after the documents `order` (each at |P|, the query after the
// longest), with APE's two-part attention (or plain attention without `ape`).
function referenceApe(order: number[], after: number[], ape?: { temperature: number; scale: number }): Float64Array[] {
  const stream = [...prefix, ...order.flatMap((d) => docs[d]!), ...after];
  const docStart: number[] = [];
  order.reduce((at, d) => (docStart.push(at), at + lengths[d]!), PREFIX);
  const qStart = PREFIX + order.reduce((n, d) => n + lengths[d]!, 0);
  const end = PREFIX + Math.max(0, ...order.map((d) => lengths[d]!));
  const position = (s: number) => {
    if (s < PREFIX) return s;
    if (s >= qStart) return end + s - qStart;
    const i = docStart.findLastIndex((st) => s >= st);
    return PREFIX + s - docStart[i]!;
  };
  const blocks = [PREFIX, ...order.map((d) => lengths[d]!)];
  return reference.forward(stream, { blocks, frames: () => ({ held: () => true, position }), ...(ape ? { ape } : {}) }).slice(qStart);
}

// The engine keeps f32 activations: 2e-4 as for the other store policies (cache-focus.test.ts).
const TOL = 2e-4;

describe('policies.ape(): two-part attention over stored documents', () => {
  it('defaults T = S = 0.9 (the authors\'): the query\'s logits, and those of tokens appended after it, equal the float64 reference', async () => {
    const policy = policies.ape();
    using seq = model.sequence({ store, documents: ['d0', 'd1', 'd2', 'd3'], policy });
    expect(seq.policy).toEqual({ name: 'ape', temperature: 0.9, scale: 0.9 });
    const after = ids(8, 3);
    const rows = (await seq.append(query, { logits: 'all' }))!;
    const more = (await seq.append(after, { logits: 'all' }))!; // decode-like steps after the query
    const want = referenceApe([0, 1, 2, 3], [...query, ...after], { temperature: 0.9, scale: 0.9 });
    expect(maxDiff(rows, want.slice(0, query.length).flatMap((r) => [...r]))).toBeLessThan(TOL);
    expect(maxDiff(more, want.slice(query.length).flatMap((r) => [...r]))).toBeLessThan(TOL);
    // Parallel windows: every document at |P|, the query after the longest.
    const layout = seq.layout().layers[0]!;
    expect(Math.max(...layout.positions)).toBe(PREFIX + 20 + query.length + after.length - 1);
  });

  it('other temperatures and scales follow the formula; they change the logits', async () => {
    for (const ape of [{ temperature: 0.5, scale: 1.3 }, { temperature: 1.4, scale: 0.6 }]) {
      using seq = model.sequence({ store, documents: ['d2', 'd0', 'd3'], policy: policies.ape(ape) });
      const rows = (await seq.append(query, { logits: 'all' }))!;
      const want = referenceApe([2, 0, 3], query, ape);
      expect(maxDiff(rows, want.flatMap((r) => [...r]))).toBeLessThan(TOL);
      const plain = referenceApe([2, 0, 3], query);
      expect(maxDiff(rows, plain.flatMap((r) => [...r]))).toBeGreaterThan(1e-2);
    }
  });

  it('T = S = 1 is parallel windows exactly', async () => {
    using a = model.sequence({ store, documents: ['d1', 'd3'], policy: policies.ape({ temperature: 1, scale: 1 }) });
    using b = model.sequence({ store, documents: ['d1', 'd3'], policy: policies.parallelWindows() });
    const [ra, rb] = [(await a.append(query, { logits: 'all' }))!, (await b.append(query, { logits: 'all' }))!];
    expect(maxDiff(ra, rb)).toBeLessThan(1e-5);
  });

  it('generate(): greedy tokens are the reference argmax, batched with another sequence', async () => {
    const policy = policies.ape();
    const run = model.generate({ store, documents: ['d3', 'd1'], query }, { maxTokens: 4, temperature: 0, stopTokens: [], policy });
    const other = model.generate({ store, documents: ['d0', 'd2'], query }, { maxTokens: 4, temperature: 0, stopTokens: [], policy: policies.parallelWindows() });
    const [{ tokens }] = await Promise.all([run.result, other.result]);
    const want = referenceApe([3, 1], [...query, ...tokens.slice(0, 3)], { temperature: 0.9, scale: 0.9 });
    const argmax = (r: Float64Array) => r.reduce((best, x, i) => (x > r[best]! ? i : best), 0);
    tokens.forEach((t, i) => expect(t).toBe(argmax(want[query.length - 1 + i]!)));
  });

  it('runs beside H2O (column sums) on one model: the two never share a step, both finish, APE still exact', async () => {
    const policy = policies.ape();
    const ape = model.generate({ store, documents: ['d1', 'd2'], query }, { maxTokens: 6, temperature: 0, stopTokens: [], policy });
    const h2o = model.generate(ids(7, 30), { maxTokens: 6, temperature: 0, stopTokens: [], policy: policies.h2o({ budget: 16, recent: 8 }) });
    const h2oAlone = await model.generate(ids(7, 30), { maxTokens: 6, temperature: 0, stopTokens: [], policy: policies.h2o({ budget: 16, recent: 8 }) }).result;
    const [a, h] = await Promise.all([ape.result, h2o.result]);
    expect(a.completionTokens).toBe(6);
    expect(h.tokens).toEqual(h2oAlone.tokens);
    const want = referenceApe([1, 2], [...query, ...a.tokens.slice(0, 5)], { temperature: 0.9, scale: 0.9 });
    const argmax = (r: Float64Array) => r.reduce((best, x, i) => (x > r[best]! ? i : best), 0);
    a.tokens.forEach((t, i) => expect(t).toBe(argmax(want[query.length - 1 + i]!)));
  });

  it('no documents: plain attention over the prefix and the query', async () => {
    using seq = model.sequence({ store, documents: [], policy: policies.ape() });
    const rows = (await seq.append(query, { logits: 'all' }))!;
    const direct = await model.logits([...prefix, ...query], { all: true });
    expect(maxDiff(rows, direct.subarray(PREFIX * model.config.vocabSize))).toBeLessThan(1e-5);
  });
});

describe('policies.ape() options', () => {
  const bad: [string, () => unknown, RegExp][] = [
    ['temperature 0', () => policies.ape({ temperature: 0 }), /policy\.temperature: expected a finite number > 0 but received number 0/],
    ['a negative scale', () => policies.ape({ scale: -1 }), /policy\.scale: expected a finite number > 0/],
    ['a NaN temperature', () => policies.ape({ temperature: NaN }), /policy\.temperature/],
    ['a string scale', () => policies.ape({ scale: '0.9' as never }), /policy\.scale/],
    ['an unknown option', () => policies.ape({ temp: 0.9 } as never), /unknown option 'temp' for policy 'ape'; its options: name, temperature, scale/],
    ['without a store', () => model.sequence({ policy: policies.ape() }), /'ape' places stored documents/],
  ];
  for (const [name, fn, message] of bad) {
    it(`refuses ${name} with an InvalidArgumentError naming 'policy'`, () => {
      let error: unknown;
      try {
        fn();
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).argument).toBe('policy');
      expect((error as Error).message).toMatch(message);
    });
  }
});
