// The task tokenizer of scripts/train/make-tokenizer.mjs: a byte-level BPE trained on the task
// text. It must load in kvfocus's Tokenizer and in HF's Rust `tokenizers` with the same ids,
// keep every digit a token of its own, and tokenize prompt parts independently (the prefix and
// each document can be encoded apart, as the document cache does).
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Tokenizer as RustTokenizer } from 'tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Tokenizer } from '../../lib/model/tokenizer.js';
import * as task from '../../lib/task/multidoc-qa.js';
import { encodeExample, fitExample } from '../../scripts/train/common.mjs';
import { makeTokenizer } from '../../scripts/train/make-tokenizer.mjs';
import { makeTempDir } from '../model/helpers.js';

const temp = makeTempDir('kvfocus-task-tokenizer-');
afterAll(temp.cleanup);

let dir: string;
let ours: Tokenizer;
let rust: RustTokenizer;

beforeAll(async () => {
  dir = path.join(temp.dir, 'a');
  const size = makeTokenizer({ out: dir, vocabSize: 700, examples: 300, contextLength: 512, task });
  expect(size).toBe(700);
  ours = await Tokenizer.load(dir);
  rust = RustTokenizer.fromFile(path.join(dir, 'tokenizer.json'));
}, 120_000);

function heldOut(i: number, opts: task.MultiDocQaOptions = {}): task.MultiDocQaExample {
  return task.generateExample(task.heldOutSeed(i), { numDocs: 4, extraQuestions: 1, ...opts });
}

describe('task tokenizer', () => {
  it('has the special tokens the prompt format needs', () => {
    expect(ours.vocabSize).toBe(700);
    expect(ours.padTokenId).toBe(0);
    expect(ours.bosTokenId).toBe(1);
    expect(ours.eosTokenId).toBe(2);
    expect([...ours.specialTokenIds].sort()).toEqual([0, 1, 2]);
    const ids = ours.encode('Doc 1.');
    expect(ids[0]).toBe(1);
    expect(ours.encode('Doc 1.', { addSpecialTokens: false })[0]).not.toBe(1);
    expect(ours.encode('x</s>', { addSpecialTokens: false }).at(-1)).toBe(2);
  });

  it('encodes held-out prompts and answers as the Rust library does, and decodes them back', async () => {
    for (let i = 0; i < 40; i++) {
      const ex = heldOut(i, { confusability: (i % 5) / 4 });
      const text = task.formatPrompt(ex) + task.formatCompletion(ex.answer);
      const ids = ours.encode(text);
      expect((await rust.encode(text)).getIds()).toEqual(ids);
      expect(ours.decode(ids, { skipSpecialTokens: true })).toBe(text);
    }
    // Text outside the task still round-trips through the byte alphabet.
    const odd = 'Ünïcødé 🦙 and tabs\t\n';
    expect(ours.decode(ours.encode(odd, { addSpecialTokens: false }))).toBe(odd);
  });

  it('keeps every digit a token of its own', () => {
    const vocab = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')).model.vocab as Record<string, number>;
    for (const token of Object.keys(vocab)) if (/\d/.test(token)) expect(token).toMatch(/^\d$/);
    const pieces = ours.encode(' 4821 KT-492 B214 1987', { addSpecialTokens: false }).map((id) => ours.decode([id]));
    for (const p of pieces) if (/\d/.test(p)) expect(p).toMatch(/^\d$/);
    expect(pieces.filter((p) => /\d/.test(p)).join('')).toBe('48214922141987');
  });

  it('tokenizes prefix, documents and question independently', () => {
    for (let i = 0; i < 40; i++) {
      const ex = heldOut(100 + i, { numDocs: 1 + (i % 7), docLength: 1 + (i % 9) });
      const whole = ours.encode(task.formatPrompt(ex));
      const parts = [
        ...ours.encode(ex.prefix),
        ...ex.documents.flatMap((d) => ours.encode(d, { addSpecialTokens: false })),
        ...ours.encode(ex.question, { addSpecialTokens: false }),
      ];
      expect(parts).toEqual(whole);
      // The completion continues the prompt's tokens unchanged too.
      const completed = ours.encode(task.formatPrompt(ex) + task.formatCompletion(ex.answer));
      expect(completed.slice(0, whole.length)).toEqual(whole);
    }
  });

  it('is deterministic', () => {
    const again = path.join(temp.dir, 'b');
    makeTokenizer({ out: again, vocabSize: 700, examples: 300, contextLength: 512, task });
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      expect(readFileSync(path.join(again, f), 'utf8')).toBe(readFileSync(path.join(dir, f), 'utf8'));
    }
  });

  it('lays out training examples with completion spans and fits a context length (scripts/train/common.mjs)', () => {
    const ex = heldOut(7, { extraQuestions: 3 });
    const enc = encodeExample(ours, ex);
    expect(enc.ids[0]).toBe(1);
    expect(enc.answers).toHaveLength(4);
    expect(enc.ids.slice(0, enc.promptLength)).toEqual(ours.encode(task.formatPrompt(ex)));
    expect(enc.answers[0]![0]).toBe(enc.promptLength);
    [ex, ...ex.extra].forEach((qa, k) => {
      const [s, e] = enc.answers[k]!;
      expect(ours.decode(enc.ids.slice(s, e))).toBe(` ${qa.answer}</s>`);
    });
    expect(enc.docStarts.map((s) => ours.decode([enc.ids[s]!]))).toEqual(ex.documents.map(() => 'Doc'));
    for (const context of [256, 512, 1024]) {
      const fit = fitExample(ours, task.heldOutSeed(9), context, { docLength: 6 });
      expect(fit.ids.length).toBeLessThanOrEqual(context);
      expect(fit.ids.length).toBeGreaterThan(context * 0.75);
    }
  });
});
