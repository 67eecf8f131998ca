// The model-format layer end to end on the checkpoints scripts/fixtures/make-fixtures.mjs writes
// (config.json + model.safetensors + tokenizer files per architecture), generated afresh into a
// temporary folder.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Tokenizer as RustTokenizer } from 'tokenizers';
import { afterAll, describe, expect, it } from 'vitest';
import { readModelConfig } from '../../lib/model/config.js';
import { invFreq } from '../../lib/model/rope.js';
import { openSafetensors } from '../../lib/model/safetensors.js';
import { Tokenizer } from '../../lib/model/tokenizer.js';
import { checkCheckpointTensors } from '../../lib/model/weights.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';

const root = mkdtempSync(path.join(tmpdir(), 'kvfocus-model-fixtures-'));
const dirs = Object.values(makeFixtures(root));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe.each(dirs.map((dir) => [path.basename(dir), dir]))('generated checkpoint %s', (_name, dir) => {
  it('has a valid config whose every tensor is in the checkpoint with the right shape', async () => {
    const config = await readModelConfig(dir);
    const index = await openSafetensors(dir);
    expect(checkCheckpointTensors(config, index, index.source).unexpected).toEqual([]);
    expect(invFreq(config).length).toBe(config.headDim / 2);
  });

  it('has a tokenizer that agrees with Rust tokenizers and fits the model', async () => {
    const config = await readModelConfig(dir);
    const tokenizer = await Tokenizer.load(dir);
    const rust = RustTokenizer.fromFile(path.join(dir, 'tokenizer.json'));
    expect(tokenizer.vocabSize).toBeLessThanOrEqual(config.vocabSize);
    if (config.eosTokenIds.length > 0 && tokenizer.eosTokenId !== null) expect(config.eosTokenIds).toContain(tokenizer.eosTokenId);
    for (const text of ['Hello, world!', '  two  spaces\nand a newline', 'café 日本 🦙', "it's 2024"]) {
      const ids = tokenizer.encode(text);
      expect(ids).toEqual((await rust.encode(text)).getIds());
      expect(tokenizer.decode(ids)).toBe(await rust.decode(ids, false));
    }
    if (tokenizer.hasChatTemplate) {
      const prompt = tokenizer.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
      expect(tokenizer.encodeChat([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true })).toEqual(
        (await rust.encode(prompt, null, { addSpecialTokens: false })).getIds(),
      );
    }
  });
});
