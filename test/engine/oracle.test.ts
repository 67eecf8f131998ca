// The engine against llama.cpp (node-llama-cpp, CPU, f32 KV, threads 1): on every fixture,
// kvfocus's logits over a 64-token prompt and a 32-token greedy continuation match within 1e-4,
// and kvfocus's own greedy generation (through the public generate() API) produces the same
// 32 tokens.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel, type Model } from '../../lib/index.js';
import { FIXTURE_NAMES, makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { disposeLlamaCpp, llamaCppLogits } from '../../scripts/oracle/llamacpp.mjs';

const PROMPT_LENGTH = 64;
const CONTINUATION_LENGTH = 32;
const LOGIT_TOLERANCE = 1e-4;
const TEXT =
  'Doc 17. Mira Olsen lives in Tarn. Her locker code is 4821. Doc 18. Ivo Berg lives in Kell; ' +
  'his locker code is 9107. Question: what is the locker code of Mira Olsen? Answer: 4821.';

let root: string;
let dirs: Record<string, string>;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-engine-'));
  dirs = makeFixtures(root);
});

afterAll(async () => {
  await disposeLlamaCpp();
  rmSync(root, { recursive: true, force: true });
});

describe.each(FIXTURE_NAMES)('fixture %s on the CPU backend', (name) => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(dirs[name]!, { device: 'cpu', kvCacheTokens: 256, prefillChunk: 48 });
  });
  afterAll(() => model.dispose());

  it(`logits match llama.cpp within ${LOGIT_TOLERANCE} and greedy generation picks the same ${CONTINUATION_LENGTH} tokens`, { timeout: 120_000 }, async () => {
    const prompt = Array.from(model.encode(TEXT)).slice(0, PROMPT_LENGTH);
    expect(prompt).toHaveLength(PROMPT_LENGTH);
    const oracle = await llamaCppLogits(join(dirs[name]!, 'model.gguf'), prompt, { continuation: CONTINUATION_LENGTH });
    const sequence = [...prompt, ...oracle.continuation];

    // prefillChunk 48 splits the 96 tokens into steps, so the paged cache is exercised across steps.
    const ours = await model.logits(sequence, { all: true });
    const vocab = model.config.vocabSize;
    expect(ours.length).toBe(sequence.length * vocab);
    let maxError = 0;
    for (let i = 0; i < sequence.length; i++) {
      const row = oracle.logits[i]!;
      for (let t = 0; t < vocab; t++) maxError = Math.max(maxError, Math.abs(ours[i * vocab + t]! - row[t]!));
    }
    console.log(`${name}: max |kvfocus - llama.cpp| = ${maxError.toExponential(2)} over ${sequence.length} positions`);
    expect(maxError).toBeLessThan(LOGIT_TOLERANCE);

    const stream = model.generate(prompt, { maxTokens: CONTINUATION_LENGTH, temperature: 0, stopTokens: [] });
    const streamed: number[] = [];
    for await (const { token } of stream) if (token >= 0) streamed.push(token);
    const result = await stream.result;
    // A fixture's end-of-sequence token would stop early; compare what was generated.
    expect(result.tokens).toEqual(oracle.continuation.slice(0, result.tokens.length));
    expect(streamed).toEqual(result.tokens);
    if (result.finishReason === 'length') expect(result.tokens).toHaveLength(CONTINUATION_LENGTH);
  });
});
