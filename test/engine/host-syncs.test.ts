// A forward step waits for its device once: the upload of the step's inputs does not wait, the
// sampled tokens (and any logits asked for) come back in one copy. The CPU backend counts its
// waits the same way the CUDA backend does, so this checks the step's structure anywhere.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel, type Model } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';

let work: string;
let model: Model;
beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'kvfocus-syncs-'));
  const dir = makeFixtures(work, ['llama-gqa'])['llama-gqa']!;
  model = await loadModel(dir, { device: 'cpu', kvCacheTokens: 256 });
});
afterAll(() => {
  model?.dispose();
  rmSync(work, { recursive: true, force: true });
});

async function syncsDuring(fn: () => Promise<unknown>): Promise<number> {
  const before = native().hostSyncs();
  await fn();
  return native().hostSyncs() - before;
}

describe('host waits per forward step', () => {
  for (const sampling of [{ temperature: 0 }, { temperature: 0.8, topK: 20, topP: 0.9, repetitionPenalty: 1.2, seed: 1 }]) {
    it(`generate(): one per step, i.e. one per token (${sampling.temperature ? 'sampled' : 'greedy'})`, async () => {
      // The 4-token prompt is one step that also samples the first token; then one step a token.
      const n = await syncsDuring(() => model.generate([1, 45, 72, 12], { maxTokens: 9, ...sampling }).result);
      expect(n).toBe(9);
    });
  }

  it('logits(): one for a whole prompt, all rows', async () => {
    expect(await syncsDuring(() => model.logits([1, 45, 72, 12, 9], { all: true }))).toBe(1);
  });
});
