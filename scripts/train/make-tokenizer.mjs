// Builds the embedded model's tokenizer: a GPT-2-style byte-level BPE trained on the
// multi-document QA task's text, written as tokenizer.json + tokenizer_config.json.
//
//   npm run build:ts   # the task generator is read from dist/
//   node scripts/train/make-tokenizer.mjs --out bench/tmp/train/tokenizer [--vocab 1024] [--examples 3000]
//
// - Pre-tokenizer: ByteLevel with GPT-2's regex (no prefix space), decoder: ByteLevel.
// - Merges never touch a digit, so every digit is its own token (" 4821" -> "Ġ", "4", "8", "2",
//   "1") and codes can be copied digit by digit.
// - Special tokens: <pad> = 0, <s> = 1 (prepended by the post-processor), </s> = 2 (end of
//   an answer). The 256 byte symbols follow, then one token per merge.
// - Deterministic: the corpus comes from fixed training seeds, ties between equally frequent
//   pairs break by the pair's text.
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { BYTE_CHARS, bpeModelJson, learnMerges } from '../lib/bpe.mjs';

const require = createRequire(import.meta.url);

export const SPECIAL_TOKENS = ['<pad>', '<s>', '</s>'];
const DIGIT_CHARS = new Set([...'0123456789'].map((d) => BYTE_CHARS[d.charCodeAt(0)]));

/**
 * Trains BPE merges on texts (digits never merge). Returns { vocab: Map<token, id>, merges:
 * [a, b][] } with `vocabSize` entries in all: special tokens, the 256 bytes, then the merges'.
 */
export function trainBpe(texts, vocabSize) {
  const vocab = new Map();
  for (const s of SPECIAL_TOKENS) vocab.set(s, vocab.size);
  for (const c of BYTE_CHARS) vocab.set(c, vocab.size);
  const mergeable = (a, b) => ![...a, ...b].some((ch) => DIGIT_CHARS.has(ch));
  const { merges, tokens } = learnMerges(texts, { newTokens: vocabSize - vocab.size, minCount: 2, mergeable });
  for (const t of tokens) vocab.set(t, vocab.size);
  return { vocab, merges };
}

/** tokenizer.json for a trained BPE. */
export function tokenizerJson({ vocab, merges }) {
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const bos = SPECIAL_TOKENS[1];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content) => ({
      id: vocab.get(content),
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { [bos]: { id: bos, ids: [vocab.get(bos)], tokens: [bos] } },
    },
    decoder: byteLevel,
    model: bpeModelJson(Object.fromEntries(vocab), merges.map(([a, b]) => `${a} ${b}`)),
  };
}

export function tokenizerConfigJson(contextLength) {
  return {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: '<s>',
    eos_token: '</s>',
    pad_token: '<pad>',
    clean_up_tokenization_spaces: false,
    model_max_length: contextLength,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
}

/** Task text the tokenizer is trained on: prompts and completions from training seeds. */
export function corpusTexts(task, count) {
  const texts = [];
  for (let i = 0; i < count; i++) {
    const seed = task.trainSeed(i);
    const rng = new task.Rng(seed + 7_777_777);
    const ex = task.generateExample(seed, {
      numDocs: rng.range(1, 6),
      docLength: rng.range(2, 9),
      confusability: rng.next(),
      extraQuestions: 3,
    });
    texts.push(task.formatPrompt(ex) + task.formatCompletion(ex.answer));
    for (const q of ex.extra) texts.push(q.question + task.formatCompletion(q.answer));
  }
  return texts;
}

/** Writes tokenizer.json and tokenizer_config.json to `out`; returns the vocabulary size. */
export function makeTokenizer({ out, vocabSize = 1024, examples = 3000, contextLength = 1024, task = require('../../dist/cjs/task/multidoc-qa.js') }) {
  const bpe = trainBpe(corpusTexts(task, examples), vocabSize);
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'tokenizer.json'), `${JSON.stringify(tokenizerJson(bpe), null, 1)}\n`);
  writeFileSync(join(out, 'tokenizer_config.json'), `${JSON.stringify(tokenizerConfigJson(contextLength), null, 2)}\n`);
  return bpe.vocab.size;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      vocab: { type: 'string', default: '1024' },
      examples: { type: 'string', default: '3000' },
      context: { type: 'string', default: '1024' },
    },
  });
  if (!values.out) {
    console.error('usage: node scripts/train/make-tokenizer.mjs --out DIR [--vocab 1024] [--examples 3000] [--context 1024]');
    process.exit(2);
  }
  const t0 = performance.now();
  const size = makeTokenizer({ out: values.out, vocabSize: Number(values.vocab), examples: Number(values.examples), contextLength: Number(values.context) });
  console.log(JSON.stringify({ out: values.out, vocabSize: size, seconds: +((performance.now() - t0) / 1000).toFixed(1) }));
}
