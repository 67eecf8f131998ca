// The fixture the bounded-policy engine tests share: the llama-gqa checkpoint (4 query heads,
// 2 KV heads) with `layers` layers, loaded on the CPU with small pages, and its float64
// reference. Registers its own beforeAll/afterAll; read `fixture.model` inside tests.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';

import { loadModel, type Model } from '../../lib/index.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { ReferenceLlama } from './reference-llama';

export interface GqaFixture {
  model: Model;
  reference: ReferenceLlama;
  /** The checkpoint's directory (for loading it again with other options). */
  dir: string;
}

export function useGqaFixture(layers: number): GqaFixture {
  const fixture = {} as GqaFixture;
  let root = '';
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'kvfocus-gqa-'));
    const dir = makeFixtures(root, ['llama-gqa'], { sizes: { numLayers: layers } })['llama-gqa']!;
    fixture.dir = dir;
    fixture.model = await loadModel(dir, { device: 'cpu', kvCacheTokens: 1024, pageSize: 8 });
    fixture.reference = ReferenceLlama.load(dir);
  });
  afterAll(() => {
    fixture.model?.dispose();
    if (root) rmSync(root, { recursive: true, force: true });
  });
  return fixture;
}

/** A deterministic stream of `n` token ids (seeded), inside every fixture's vocabulary. */
export const streamIds = (n: number, seed = 1): number[] => Array.from({ length: n }, (_, j) => 3 + ((seed * 31 + j * 7 + ((seed * j) % 11)) % 250));
