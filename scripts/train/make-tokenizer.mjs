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

const require = createRequire(import.meta.url);

export const SPECIAL_TOKENS = ['<pad>', '<s>', '</s>'];
export const GPT2_REGEX = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's byte -> printable character table. */
export function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const table = new Array(256);
  bs.forEach((b, i) => (table[b] = String.fromCodePoint(cs[i])));
  return table;
}

const BYTE_CHARS = bytesToUnicode();
const DIGIT_CHARS = new Set([...'0123456789'].map((d) => BYTE_CHARS[d.charCodeAt(0)]));
const encoder = new TextEncoder();

/** Pre-tokens of a text, each as byte-level characters. */
export function pretokenize(text) {
  return (text.match(GPT2_REGEX) ?? []).map((piece) => Array.from(encoder.encode(piece), (b) => BYTE_CHARS[b]).join(''));
}

/**
 * Trains BPE merges on texts. Returns { vocab: Map<token, id>, merges: [a, b][] } with
 * `vocabSize` entries in all (special tokens and the 256 bytes included).
 */
export function trainBpe(texts, vocabSize) {
  const freq = new Map();
  for (const text of texts) for (const w of pretokenize(text)) freq.set(w, (freq.get(w) ?? 0) + 1);
  // Words as symbol lists; a word made only of digits (or holding one) still merges its letters.
  const words = [...freq.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([w, f]) => ({ symbols: [...w], f }));
  const vocab = new Map();
  for (const s of SPECIAL_TOKENS) vocab.set(s, vocab.size);
  for (const c of BYTE_CHARS) vocab.set(c, vocab.size);
  const merges = [];
  const mergeable = (a, b) => ![...a, ...b].some((ch) => DIGIT_CHARS.has(ch));
  while (vocab.size < vocabSize) {
    const pairs = new Map();
    for (const { symbols, f } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const a = symbols[i];
        const b = symbols[i + 1];
        if (!mergeable(a, b)) continue;
        const key = `${a}\u0000${b}`;
        pairs.set(key, (pairs.get(key) ?? 0) + f);
      }
    }
    let best = null;
    let bestCount = 0;
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === null || bestCount < 2) break;
    const [a, b] = best.split('\u0000');
    const merged = a + b;
    merges.push([a, b]);
    if (!vocab.has(merged)) vocab.set(merged, vocab.size);
    for (const w of words) {
      const s = w.symbols;
      if (s.length < 2) continue;
      const out = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(merged);
          i++;
        } else out.push(s[i]);
      }
      w.symbols = out;
    }
  }
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
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
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
