// The test fixtures against independent implementations, before any engine exists:
// - their tokenizer.json loads in HF's Rust `tokenizers` and in the pure-JS
//   `@huggingface/tokenizers`, both agree, and llama.cpp tokenizes the GGUF's vocabulary the
//   same way;
// - the float64 reference forward pass (test/support/reference-llama.ts) on the HF
//   safetensors matches llama.cpp on the GGUF export within 1e-4, over a 64-token prompt and a
//   32-token greedy continuation.
// Agreement shows the fixtures, the GGUF conversion (including the Q/K permutation for
// llama.cpp's RoPE) and the reference are right; the engine is later checked the same way.

import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as JsTokenizer } from '@huggingface/tokenizers';
import { Tokenizer } from 'tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURE_NAMES, makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { disposeLlamaCpp, llamaCppLogits, llamaCppTokenize } from '../../scripts/oracle/llamacpp.mjs';
import { argmax, ReferenceLlama } from '../support/reference-llama';

const PROMPT_LENGTH = 64;
const CONTINUATION_LENGTH = 32;
/** Max |reference - llama.cpp| over all logits. f32 llama.cpp vs float64 lands near 1e-6. */
const LOGIT_TOLERANCE = 1e-4;
const LLAMA_CPP_TIMEOUT_MS = 60_000;

const TEXT =
  'A question arrives: which document names the river that floods in spring? The model reads ' +
  'the prefix, then document 3, then document 7, and answers "the Ouse" (score 0.91).\n' +
  'Cached keys were stored at positions 128..255; re-rotating them by -64 moves them to 64..191.';

let root: string;
let dirs: Record<string, string>;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-fixtures-'));
  dirs = makeFixtures(root);
});

afterAll(async () => {
  await disposeLlamaCpp();
  rmSync(root, { recursive: true, force: true });
});

function readJson(dir: string, file: string): Record<string, any> {
  return JSON.parse(readFileSync(join(dir, file), 'utf8')) as Record<string, any>;
}

it('make-fixtures is deterministic: a second run writes byte-identical files', () => {
  const again = mkdtempSync(join(tmpdir(), 'kvfocus-fixtures-'));
  try {
    const name = 'qwen2';
    const second = makeFixtures(again, [name])[name]!;
    const digest = (dir: string, file: string) => createHash('sha256').update(readFileSync(join(dir, file))).digest('hex');
    for (const file of readdirSync(dirs[name]!)) expect(digest(second, file), file).toBe(digest(dirs[name]!, file));
  } finally {
    rmSync(again, { recursive: true, force: true });
  }
});

describe.each(FIXTURE_NAMES)('fixture %s', (name) => {
  const dir = () => dirs[name]!;
  const gguf = () => join(dir(), 'model.gguf');

  it('tokenizer.json loads with tokenizers (Rust) and round-trips text', async () => {
    const tokenizer = Tokenizer.fromFile(join(dir(), 'tokenizer.json'));
    const config = readJson(dir(), 'config.json');
    expect(tokenizer.getVocabSize(true)).toBe(config.vocab_size);

    const encoding = await tokenizer.encode(TEXT, null, { addSpecialTokens: false });
    const ids = encoding.getIds();
    expect(ids.length).toBeLessThan(TEXT.length); // merges apply
    expect(Math.max(...ids)).toBeLessThan(config.vocab_size);
    expect(await tokenizer.decode(ids, false)).toBe(TEXT);

    // Encoding with special tokens prepends BOS for Llama and Mistral, nothing for Qwen2.
    const withSpecial = (await tokenizer.encode(TEXT)).getIds();
    expect(withSpecial).toEqual(config.model_type === 'qwen2' ? ids : [config.bos_token_id, ...ids]);
  });

  it('the pure-JS @huggingface/tokenizers encodes the same ids', async () => {
    const rust = Tokenizer.fromFile(join(dir(), 'tokenizer.json'));
    const js = new JsTokenizer(readJson(dir(), 'tokenizer.json'), readJson(dir(), 'tokenizer_config.json'));
    expect(js.encode(TEXT).ids).toEqual((await rust.encode(TEXT)).getIds());
    expect(js.decode(js.encode(TEXT, { add_special_tokens: false }).ids)).toBe(TEXT);
  });

  it('the chat template renders and its special tokens encode as single ids', async () => {
    const tokenizerConfig = readJson(dir(), 'tokenizer_config.json');
    const rendered = new Template(tokenizerConfig.chat_template as string).render({
      messages: [{ role: 'user', content: 'Which river floods?' }, { role: 'assistant', content: 'The Ouse.' }],
      add_generation_prompt: false,
      bos_token: tokenizerConfig.bos_token,
      eos_token: tokenizerConfig.eos_token,
    });
    expect(rendered).toContain('Which river floods?');
    expect(rendered).toContain(tokenizerConfig.eos_token);

    const tokenizer = Tokenizer.fromFile(join(dir(), 'tokenizer.json'));
    const ids = (await tokenizer.encode(rendered, null, { addSpecialTokens: false })).getIds();
    const eosId = tokenizer.tokenToId(tokenizerConfig.eos_token as string);
    expect(eosId).toBe(readJson(dir(), 'config.json').eos_token_id);
    expect(ids).toContain(eosId);
  });

  it('llama.cpp tokenizes text like the HF tokenizer (GGUF vocabulary and merges)', { timeout: LLAMA_CPP_TIMEOUT_MS }, async () => {
    const hf = (await Tokenizer.fromFile(join(dir(), 'tokenizer.json')).encode(TEXT, null, { addSpecialTokens: false })).getIds();
    expect(await llamaCppTokenize(gguf(), TEXT)).toEqual(hf);
  });

  it(`reference logits match llama.cpp within ${LOGIT_TOLERANCE} over a ${PROMPT_LENGTH}-token prompt and a ${CONTINUATION_LENGTH}-token greedy continuation`,
    { timeout: LLAMA_CPP_TIMEOUT_MS }, async () => {
      const tokenizer = Tokenizer.fromFile(join(dir(), 'tokenizer.json'));
      const prompt = (await tokenizer.encode(TEXT)).getIds().slice(0, PROMPT_LENGTH);
      expect(prompt).toHaveLength(PROMPT_LENGTH);

      const oracle = await llamaCppLogits(gguf(), prompt, { continuation: CONTINUATION_LENGTH });
      const sequence = [...prompt, ...oracle.continuation];
      const reference = ReferenceLlama.load(dir()).forward(sequence);
      expect(oracle.logits).toHaveLength(sequence.length);

      let maxError = 0;
      for (let i = 0; i < sequence.length; i++) {
        const expected = reference[i]!;
        const actual = oracle.logits[i]!;
        expect(actual).toHaveLength(expected.length);
        for (let t = 0; t < expected.length; t++) maxError = Math.max(maxError, Math.abs(expected[t]! - actual[t]!));
      }
      console.log(`${name}: max |reference - llama.cpp| = ${maxError.toExponential(2)} over ${sequence.length} positions`);
      expect(maxError).toBeLessThan(LOGIT_TOLERANCE);

      // Same greedy tokens: both models see the same prefix at every step, so by induction the
      // reference's own greedy continuation equals llama.cpp's iff every step's argmax agrees.
      const referenceGreedy = oracle.continuation.map((_, k) => argmax(reference[PROMPT_LENGTH - 1 + k]!));
      expect(referenceGreedy).toEqual(oracle.continuation);

      // The fixture is not degenerate: logits are spread over a few units, so 1e-4 is tight.
      for (const row of reference) {
        const mean = row.reduce((a, b) => a + b, 0) / row.length;
        const std = Math.sqrt(row.reduce((a, b) => a + (b - mean) ** 2, 0) / row.length);
        expect(std).toBeGreaterThan(0.5);
      }
    });
});
