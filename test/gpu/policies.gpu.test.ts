// Cache policies on the engine, CUDA against CPU (the CPU engine is checked against float64
// references in test/engine): the same fixture checkpoint loaded on both devices, each bounded
// policy fed the same stream one token a step and in prefill chunks, must keep the same tokens
// in every layer (and KV head) and give logits that agree to f32 accuracy.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type CachePolicy, loadModel, type Model, policies } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { hasCuda, maxRelDiff } from './gpu';

let root: string;
let cpu: Model;
let cuda: Model;

beforeAll(async () => {
  if (!hasCuda) return;
  root = mkdtempSync(join(tmpdir(), 'kvfocus-policies-gpu-'));
  const dir = makeFixtures(root, ['llama-gqa'], { sizes: { numLayers: 3 } })['llama-gqa']!;
  cpu = await loadModel(dir, { device: 'cpu', kvCacheTokens: 2048, pageSize: 8 });
  cuda = await loadModel(dir, { device: 'cuda', kvCacheTokens: 2048, pageSize: 8 });
});

afterAll(() => {
  cpu?.dispose();
  cuda?.dispose();
  if (root) rmSync(root, { recursive: true, force: true });
});

const ids = (n: number, seed = 1): number[] => Array.from({ length: n }, (_, j) => 3 + ((seed * 31 + j * 7 + ((seed * j) % 11)) % 250));

const bounded: [string, CachePolicy][] = [
  ['streaming', policies.streaming({ sinks: 4, window: 24 })],
  ['lacache', policies.lacache({ budget: 24, span: 2, overlap: 0 })],
  ['h2o', policies.h2o({ budget: 24, recent: 8 })],
  ['cascading', policies.cascading({ sinks: 2, window: 6, cascades: 3, beta: 0.9, stride: 8 })],
  ['snapkv', policies.snapkv({ budget: 20, window: 4, kernel: 3 })],
];

async function feed(model: Model, policy: CachePolicy, prompt: number[], steps: number[]) {
  using seq = model.sequence({ policy });
  const rows: Float32Array[] = [(await seq.append(prompt, { logits: 'all' }))!];
  for (const t of steps) rows.push((await seq.append([t], { logits: 'last' }))!);
  const layout = seq.layout().layers.map((l) => (l.heads ?? [l]).map((h) => Array.from(h.source).join()));
  return { rows, layout };
}

describe.skipIf(!hasCuda)('bounded policies: CUDA against CPU', () => {
  for (const [name, policy] of bounded) {
    it(`${name}: a 50-token prompt then 60 decode steps keep the same tokens, logits agree`, async () => {
      const prompt = ids(50, 3);
      const steps = ids(60, 5);
      const a = await feed(cpu, policy, prompt, steps);
      const b = await feed(cuda, policy, prompt, steps);
      expect(b.layout).toEqual(a.layout);
      for (let i = 0; i < a.rows.length; i++) expect(maxRelDiff(b.rows[i]!, a.rows[i]!), `row ${i}`).toBeLessThan(1e-3);
    });
  }
});
