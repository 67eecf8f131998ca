// Sliding-window attention on the engine against the float64 reference (HF's mask: a query at
// position i sees keys at positions > i - sliding_window), on fixtures whose window (8) is far
// shorter than the sequence (40 tokens): Mistral v0.1 style (every layer slides) and Qwen2 with
// use_sliding_window (only layers from max_window_layers on). Prefill in chunks that straddle
// the window and greedy decode both go through the paged cache.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { rng } from '../support/random.js';
import { argmax, readCheckpoint, ReferenceLlama } from '../support/reference-llama';

const WINDOW = 8;
const PROMPT_LENGTH = 40;
const CONTINUATION_LENGTH = 8;
const LOGIT_TOLERANCE = 1e-4;

let root: string;
const dirs: Record<string, string> = {};

function editConfig(dir: string, edit: Record<string, unknown>): void {
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...edit }, null, 2));
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-sliding-'));
  const made = makeFixtures(root, ['mistral', 'qwen2']);
  dirs.mistral = made.mistral!;
  editConfig(dirs.mistral, { sliding_window: WINDOW });
  dirs.qwen2 = made.qwen2!;
  // Layer 0 attends to everything, layer 1 slides.
  editConfig(dirs.qwen2, { use_sliding_window: true, sliding_window: WINDOW, max_window_layers: 1 });
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

function maxAbsDiff(ours: Float32Array, reference: Float64Array[], vocab: number): number {
  let max = 0;
  reference.forEach((row, i) => {
    for (let t = 0; t < vocab; t++) max = Math.max(max, Math.abs(ours[i * vocab + t]! - row[t]!));
  });
  return max;
}

describe.each(['mistral', 'qwen2'])('%s with sliding_window 8', (name) => {
  it(`logits over ${PROMPT_LENGTH} tokens match the float64 reference within ${LOGIT_TOLERANCE}, and greedy decoding agrees`, { timeout: 120_000 }, async () => {
    const model = await loadModel(dirs[name]!, { device: 'cpu', kvCacheTokens: 128, prefillChunk: 12, pageSize: 4 });
    try {
      expect(model.config.slidingWindow).toBe(WINDOW);
      expect(model.maxSequenceTokens).toBe(128);
      const r = rng(name.length);
      const vocab = model.config.vocabSize;
      const prompt = Array.from({ length: PROMPT_LENGTH }, () => Math.floor(r() * (vocab - 10)));
      const reference = ReferenceLlama.load(dirs[name]!);
      const want = reference.forward(prompt);
      const ours = await model.logits(prompt, { all: true });
      const error = maxAbsDiff(ours, want, vocab);
      console.log(`${name}, window ${WINDOW}: max |kvfocus - reference| = ${error.toExponential(2)} over ${PROMPT_LENGTH} positions`);
      expect(error).toBeLessThan(LOGIT_TOLERANCE);

      // The window matters here: full attention gives logits far from these.
      const full = new ReferenceLlama({ ...reference.config, slidingWindow: null }, readCheckpoint(dirs[name]!)).forward(prompt);
      expect(maxAbsDiff(ours, full, vocab)).toBeGreaterThan(0.1);

      const result = await model.generate(prompt, { maxTokens: CONTINUATION_LENGTH, temperature: 0, stopTokens: [] }).result;
      const sequence = [...prompt, ...result.tokens];
      const steps = reference.forward(sequence);
      expect(result.tokens).toEqual(result.tokens.map((_, k) => argmax(steps[PROMPT_LENGTH - 1 + k]!)));
      expect(result.tokens.length).toBeGreaterThan(0);
    } finally {
      model.dispose();
    }
  });
});
