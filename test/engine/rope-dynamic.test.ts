// Dynamic NTK RoPE scaling on the engine against a float64 reference with HF transformers'
// semantics: each forward pass with sequence length L (largest position id + 1) above
// max_position_embeddings rotates its queries and keys with
//   base' = base * (factor * L / max_position_embeddings - (factor - 1)) ^ (dim / (dim - 2)),
// and cached keys keep the base of the pass that wrote them. The fixture's
// max_position_embeddings is 64, and the sequences run to 160 tokens.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';

import { loadModel, type Model } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { rng } from '../support/random.js';
import { argmax, readCheckpoint, ReferenceLlama } from '../support/reference-llama';

const MAX_POSITIONS = 64;
const LOGIT_TOLERANCE = 1e-4;

let root: string;
let dir: string;
let model: Model;
let reference: ReferenceLlama;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-dynamic-'));
  dir = makeFixtures(root, ['llama-gqa'])['llama-gqa']!;
  const file = join(dir, 'config.json');
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeFileSync(file, JSON.stringify({ ...config, max_position_embeddings: MAX_POSITIONS, rope_scaling: { type: 'dynamic', factor: 2.0 } }, null, 2));
  // Past the scaled length (factor x 64) on purpose: the formula holds there too.
  model = await loadModel(dir, { device: 'cpu', kvCacheTokens: 256, maxSequenceTokens: 256, prefillChunk: 48 });
  reference = ReferenceLlama.load(dir);
});

afterAll(() => {
  model?.dispose();
  rmSync(root, { recursive: true, force: true });
});

function tokens(n: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * (model.config.vocabSize - 10)));
}

function maxAbsDiff(ours: Float32Array, want: Float64Array[], vocab: number): number {
  let max = 0;
  want.forEach((row, i) => {
    for (let t = 0; t < vocab; t++) max = Math.max(max, Math.abs(ours[i * vocab + t]! - row[t]!));
  });
  return max;
}

it('logits of a 160-token sequence (one pass, read in 48-token chunks) match the reference within 1e-4', { timeout: 120_000 }, async () => {
  const sequence = tokens(160, 1);
  const ours = await model.logits(sequence, { all: true });
  const error = maxAbsDiff(ours, reference.forward(sequence), model.config.vocabSize);
  console.log(`dynamic rope, 160 tokens: max |kvfocus - reference| = ${error.toExponential(2)}`);
  expect(error).toBeLessThan(LOGIT_TOLERANCE);
  // Plain RoPE is far off past max_position_embeddings.
  const plain = new ReferenceLlama({ ...reference.config, ropeScaling: null }, readCheckpoint(dir)).forward(sequence);
  expect(maxAbsDiff(ours, plain, model.config.vocabSize)).toBeGreaterThan(0.1);
});

it('below max_position_embeddings the frequencies are the plain ones', async () => {
  const sequence = tokens(MAX_POSITIONS, 2);
  const ours = await model.logits(sequence, { all: true });
  expect(maxAbsDiff(ours, reference.forward(sequence), model.config.vocabSize)).toBeLessThan(LOGIT_TOLERANCE);
});

for (const [promptLength, continuation] of [[120, 24], [50, 40]] as const) {
  it(`greedy generation after a ${promptLength}-token prompt follows HF's cache semantics (prompt in one pass, each decode step its own length)`, { timeout: 120_000 }, async () => {
    const prompt = tokens(promptLength, promptLength);
    const result = await model.generate(prompt, { maxTokens: continuation, temperature: 0, stopTokens: [] }).result;
    expect(result.tokens).toHaveLength(continuation);
    const sequence = [...prompt, ...result.tokens];
    const steps = reference.forward(sequence, { prefill: promptLength });
    expect(result.tokens).toEqual(result.tokens.map((_, k) => argmax(steps[promptLength - 1 + k]!)));
    // The semantics matter: reading the whole sequence in one pass gives other logits.
    const onePass = reference.forward(sequence);
    let gap = 0;
    for (let i = promptLength; i < sequence.length; i++) {
      for (let t = 0; t < model.config.vocabSize; t++) gap = Math.max(gap, Math.abs(onePass[i]![t]! - steps[i]![t]!));
    }
    expect(gap).toBeGreaterThan(1e-2);
  });
}
