// Scores a checkpoint on held-out multi-document QA with kvfocus's own engine (full attention),
// and optionally checks kvfocus's logits against the PyTorch model of train.py.
//
//   npm run build:ts
//   node scripts/train/eval.mjs --model DIR [--count 500] [--context T] [--docs N]
//        [--doc-length 6] [--confusability 0.7] [--position random|first|middle|last|INDEX]
//        [--start 0] [--device cpu] [--logits-check [--write-reference FILE.json]]
//        [--python /usr/bin/python3] [--out FILE.json]
//
// Question i is held-out seed i (from --start). Without --docs each prompt holds as many
// documents as fit in --context tokens (default: the model's max_position_embeddings), answer
// included, so every question is inside the training length. Greedy decoding, at most 16 new
// tokens, stopping at </s>; the answer is scored by exact match (task/multidoc-qa.ts). Prints
// one JSON object: accuracy, mean time to first token, prompt sizes, accuracy by answer
// position, a few misses, and with --logits-check the largest |logit difference| between
// kvfocus (f32) and train.py --dump-logits (float64) over every position of one prompt;
// --write-reference also saves PyTorch's logits at some positions as a test fixture.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { encodeExample, fitExample, task, Tokenizer } from './common.mjs';

const require = createRequire(import.meta.url);
const { loadModel } = require('../../dist/cjs/index.js');
const here = dirname(fileURLToPath(import.meta.url));

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    count: { type: 'string', default: '500' },
    context: { type: 'string' },
    docs: { type: 'string' },
    'doc-length': { type: 'string', default: String(task.DEFAULT_OPTIONS.docLength) },
    confusability: { type: 'string', default: String(task.DEFAULT_OPTIONS.confusability) },
    position: { type: 'string', default: 'random' },
    start: { type: 'string', default: '0' },
    device: { type: 'string', default: 'cpu' },
    'logits-check': { type: 'boolean', default: false },
    'write-reference': { type: 'string' },
    python: { type: 'string', default: existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3' },
    out: { type: 'string' },
  },
});
if (!values.model) {
  console.error('usage: node scripts/train/eval.mjs --model DIR [--count 500] [--context T] [--docs N] [--logits-check] ...');
  process.exit(2);
}

const config = JSON.parse(readFileSync(join(values.model, 'config.json'), 'utf8'));
const context = Number(values.context ?? config.max_position_embeddings);
// Questions run one at a time: the KV cache holds the longest prompt and the 16 tokens generated
// after it (the tokenizer is read first to size it).
const tok = await Tokenizer.load(values.model);
const position = /^\d+$/.test(values.position) ? Number(values.position) : values.position;
const options = { docLength: Number(values['doc-length']), confusability: Number(values.confusability), answerPosition: position };

function example(i) {
  const seed = task.heldOutSeed(Number(values.start) + i);
  if (values.docs === undefined) return fitExample(tok, seed, context, options);
  const ex = task.generateExample(seed, { ...options, numDocs: Number(values.docs) });
  return { ex, ...encodeExample(tok, ex) };
}

const examples = Array.from({ length: Number(values.count) }, (_, i) => example(i));
const kvCacheTokens = Math.max(...examples.map((e) => e.promptLength)) + 32;
// --docs and --context may ask for prompts past the trained length: allow them.
const model = await loadModel(values.model, { device: values.device, kvCacheTokens, maxSequenceTokens: kvCacheTokens });

const report = { model: values.model, device: model.device, context, count: Number(values.count), options: { ...options, docs: values.docs ?? 'fill' } };

if (values['logits-check']) {
  const { ids } = example(0);
  const dir = mkdtempSync(join(tmpdir(), 'kvfocus-logits-'));
  try {
    writeFileSync(join(dir, 'ids.json'), JSON.stringify(ids));
    execFileSync(values.python, [join(here, 'train.py'), '--dump-logits', values.model, '--ids', join(dir, 'ids.json'), '--out-logits', join(dir, 'ref.bin')], { stdio: ['ignore', 'ignore', 'inherit'] });
    const buf = readFileSync(join(dir, 'ref.bin'));
    const ref = new Float64Array(buf.buffer, buf.byteOffset, buf.byteLength / 8);
    const ours = await model.logits(ids, { all: true });
    const vocab = model.config.vocabSize;
    let maxAbs = 0;
    let maxRef = 0;
    let argmaxAgree = 0;
    for (let r = 0; r < ids.length; r++) {
      let a = 0;
      let b = 0;
      for (let v = 0; v < vocab; v++) {
        const x = ours[r * vocab + v];
        const y = ref[r * vocab + v];
        maxAbs = Math.max(maxAbs, Math.abs(x - y));
        maxRef = Math.max(maxRef, Math.abs(y));
        if (x > ours[r * vocab + a]) a = v;
        if (y > ref[r * vocab + b]) b = v;
      }
      if (a === b) argmaxAgree++;
    }
    report.logitsCheck = { tokens: ids.length, maxAbsDiff: maxAbs, maxAbsLogit: maxRef, argmaxAgreement: argmaxAgree / ids.length };
    if (values['write-reference']) {
      // A test fixture: PyTorch's logits (rounded to f32) at every 8th position and the last 8,
      // for test/task/default-model.test.ts to hold kvfocus to.
      const rows = [...new Set([...Array.from({ length: Math.ceil(ids.length / 8) }, (_, k) => k * 8), ...Array.from({ length: 8 }, (_, k) => ids.length - 8 + k)])].filter((r) => r >= 0 && r < ids.length).sort((a, b) => a - b);
      const f32 = new Float32Array(rows.length * vocab);
      rows.forEach((r, k) => f32.set(ref.subarray(r * vocab, (r + 1) * vocab), k * vocab));
      const fixture = {
        what: 'PyTorch float64 logits of the shipped model (scripts/train/train.py --dump-logits), rounded to float32, at the listed positions of one held-out prompt',
        command: `node scripts/train/eval.mjs --model ${values.model} --count ${values.count} --logits-check --write-reference ${values['write-reference']}`,
        seed: task.heldOutSeed(Number(values.start)),
        vocab,
        ids,
        rows,
        logitsF32Base64: Buffer.from(f32.buffer).toString('base64'),
      };
      writeFileSync(values['write-reference'], `${JSON.stringify(fixture)}\n`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

let correct = 0;
let ttft = 0;
let promptTokens = 0;
let maxPrompt = 0;
let docs = 0;
const byPosition = [0, 1, 2, 3].map(() => ({ n: 0, correct: 0 }));
const misses = [];
const t0 = performance.now();
for (let i = 0; i < report.count; i++) {
  const { ex, ids, promptLength } = examples[i];
  const prompt = ids.slice(0, promptLength);
  const r = await model.generate(prompt, { maxTokens: 16, temperature: 0 }).result;
  const ok = task.exactMatch(r.text, ex.answer);
  correct += ok ? 1 : 0;
  ttft += r.timings.timeToFirstTokenMs;
  promptTokens += prompt.length;
  maxPrompt = Math.max(maxPrompt, prompt.length);
  docs += ex.documents.length;
  const q = Math.min(3, Math.floor((ex.answerDoc / ex.documents.length) * 4));
  byPosition[q].n++;
  byPosition[q].correct += ok ? 1 : 0;
  if (!ok && misses.length < 8) misses.push({ seed: ex.seed, question: ex.question, answer: ex.answer, got: r.text, answerDoc: ex.answerDoc, docs: ex.documents.length });
}
Object.assign(report, {
  accuracy: correct / report.count,
  correct,
  meanTimeToFirstTokenMs: +(ttft / report.count).toFixed(2),
  meanPromptTokens: +(promptTokens / report.count).toFixed(1),
  maxPromptTokens: maxPrompt,
  meanDocs: +(docs / report.count).toFixed(2),
  accuracyByAnswerQuarter: byPosition.map((b) => (b.n ? +(b.correct / b.n).toFixed(4) : null)),
  seconds: +((performance.now() - t0) / 1000).toFixed(1),
  misses,
});
const text = JSON.stringify(report, null, 2);
if (values.out) writeFileSync(values.out, `${text}\n`);
console.log(text);
model.dispose();
