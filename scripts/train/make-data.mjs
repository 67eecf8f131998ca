// Writes a training (or validation) corpus for the embedded model: JSONL, one example a line,
//   {"seed": 17, "ids": [1, ...], "ans": [[start, end], ...], "p": promptLength}
// where ids is the whole token sequence (at most --context tokens), ans the [start, end) ranges
// of completion tokens (" answer" and </s>) that the loss weighs up, and p the length of the
// prompt before the first completion.
//
//   npm run build:ts
//   node scripts/train/make-data.mjs --tokenizer DIR --out FILE.jsonl --count 20000 --context 1024 [--split train|valid] [--start 0]
//        [--max-docs 500] [--doc-length 3-8] [--extra 3-8]
//   node scripts/train/make-data.mjs --copy --tokenizer DIR --out FILE.jsonl --count 40000   (copy warm-up)
//        [--alphabet 4-64] [--copy-length 16-96]
//
// Each example draws its knobs from its own seed: 3-8 sentences per document (--doc-length),
// confusability uniform in [0, 1], the answer document anywhere, 3-8 extra questions (--extra) after the main one (more
// answers per forward pass), and as many documents as fit (at most --max-docs); 30% of examples are cut to a random
// shorter length (a quarter of the context up to all of it) so that every length is trained.
// --split train uses training seeds; --split valid uses held-out seeds from index 100000 on,
// apart from the ones eval.mjs scores (held-out indices from 0).
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';

import { fitExample, task, Tokenizer } from './common.mjs';

export const VALID_OFFSET = 100_000;

export function exampleKnobs(seed, context, { docLength: [dlo, dhi] = [3, 8], extra: [elo, ehi] = [3, 8] } = {}) {
  const rng = new task.Rng(seed + 123_456_789);
  const docLength = rng.range(dlo, dhi);
  const confusability = rng.next();
  const extraQuestions = rng.range(elo, ehi);
  const length = rng.chance(0.3) ? rng.range(Math.floor(context / 4), context) : context;
  return { length, options: { docLength, confusability, extraQuestions, answerPosition: 'random' } };
}

/**
 * The copy warm-up corpus: <s>, a random token sequence x, "\n", x again; the loss is on the
 * second copy from its fifth token on. Each sequence draws its tokens from a random alphabet
 * (--alphabet, 4 to 64 tokens by default: one token then rarely says where to copy from, and
 * the model must match the two or three before it, as it must to find an answer after its
 * lead) with a random length (--copy-length). This is the match-and-copy (induction) circuit. Trained on the QA corpus alone the model sat on a plateau for as
 * long as we waited; after this warm-up (a few hundred steps) the circuit is there to build on.
 */
async function writeCopyCorpus(path, count, start, tokenizerDir, [alo, ahi], [nlo, nhi]) {
  const tok = await Tokenizer.load(tokenizerDir);
  const vocab = tok.vocabSize;
  const newline = tok.tokenToId('Ċ');
  const rng = new task.Rng(start + 99_991);
  mkdirSync(dirname(path), { recursive: true });
  const lines = [];
  for (let i = 0; i < count; i++) {
    const alphabet = Array.from({ length: Math.min(rng.range(alo, ahi), vocab - 3) }, () => 3 + rng.int(vocab - 3));
    const n = rng.range(nlo, nhi);
    const xs = Array.from({ length: n }, () => rng.pick(alphabet));
    const ids = [tok.bosTokenId, ...xs, newline, ...xs];
    lines.push(JSON.stringify({ seed: start + i, ids, ans: [[n + 2 + 4, ids.length]], p: n + 2 }));
  }
  writeFileSync(path, `${lines.join('\n')}\n`);
  console.log(JSON.stringify({ out: path, examples: count, copy: true }));
}

const range = (text) => {
  const [lo, hi = lo] = text.split('-').map(Number);
  if (!(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && hi >= lo)) throw new Error(`expected a range like 3-8 but received ${text}`);
  return [lo, hi];
};

async function main() {
  const { values } = parseArgs({
    options: {
      tokenizer: { type: 'string' },
      out: { type: 'string' },
      count: { type: 'string', default: '20000' },
      context: { type: 'string', default: '1024' },
      split: { type: 'string', default: 'train' },
      start: { type: 'string', default: '0' },
      'max-docs': { type: 'string', default: '500' },
      'doc-length': { type: 'string', default: '3-8' },
      extra: { type: 'string', default: '3-8' },
      copy: { type: 'boolean', default: false },
      alphabet: { type: 'string', default: '4-64' },
      'copy-length': { type: 'string', default: '16-96' },
    },
  });
  if (!values.tokenizer || !values.out || !['train', 'valid'].includes(values.split)) {
    console.error('usage: node scripts/train/make-data.mjs --tokenizer DIR --out FILE.jsonl [--count N] [--context T] [--split train|valid] [--start I]');
    process.exit(2);
  }
  const count = Number(values.count);
  if (values.copy) return writeCopyCorpus(values.out, count, Number(values.start), values.tokenizer, range(values.alphabet), range(values['copy-length']));
  const tok = await Tokenizer.load(values.tokenizer);
  const context = Number(values.context);
  const start = Number(values.start);
  mkdirSync(dirname(values.out), { recursive: true });
  const out = createWriteStream(values.out);
  const t0 = performance.now();
  let tokens = 0;
  let answers = 0;
  for (let i = 0; i < count; i++) {
    const seed = values.split === 'train' ? task.trainSeed(start + i) : task.heldOutSeed(VALID_OFFSET + start + i);
    const { length, options } = exampleKnobs(seed, context, { docLength: range(values['doc-length']), extra: range(values.extra) });
    const { ids, answers: ans, promptLength } = fitExample(tok, seed, length, options, Number(values['max-docs']));
    tokens += ids.length;
    answers += ans.length;
    if (!out.write(`${JSON.stringify({ seed, ids, ans, p: promptLength })}\n`)) await new Promise((r) => out.once('drain', r));
  }
  await new Promise((r) => out.end(r));
  console.log(JSON.stringify({ out: values.out, examples: count, tokens, meanTokens: +(tokens / count).toFixed(1), answers, seconds: +((performance.now() - t0) / 1000).toFixed(1) }));
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
