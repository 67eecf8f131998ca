// npm run demo — the embedded default model answering multi-document questions.
//
// 1. One prompt of documents about invented people (distractors share names and formats), and
//    a few questions about it, each answer streamed token by token.
// 2. Held-out questions (as many documents as fit the model's training length T), answered 8 at
//    a time through the continuous-batching scheduler, with a progress display; accuracy and
//    timings at the end.
//
//   npm run demo -- [--count 100] [--device cpu|cuda] [--concurrency 8] [--model DIR]
//
// The model is a small test and demo model trained by scripts/train/ on this task only; it is
// not a general language model. Without models/ (and without --model) the demo runs the kernel
// smoke job of scripts/demo-kernels.mjs instead.
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { buildInfo, defaultModelDir, loadDefaultModel, loadModel, multidocQa } from 'kvfocus';

import { opt, positiveInt } from './bench/args.mjs';

if (!opt('--model') && !existsSync(join(defaultModelDir(), 'config.json'))) {
  // models/ missing (a package or checkout without it): run the kernel smoke job instead, and say so.
  console.log(`No embedded model in ${defaultModelDir()} (scripts/train/README.md trains one); --model DIR runs this demo on a checkpoint.`);
  await import('./demo-kernels.mjs');
}

const count = positiveInt('--count', 100);
const concurrency = positiveInt('--concurrency', 8);
const info = buildInfo();
const device = opt('--device', info.backend);
const tty = process.stdout.isTTY;
const dim = (s) => (tty ? `\x1b[2m${s}\x1b[0m` : s);
const bold = (s) => (tty ? `\x1b[1m${s}\x1b[0m` : s);
const mark = (ok) => (ok ? (tty ? '\x1b[32m✓\x1b[0m' : '✓') : tty ? '\x1b[31m✗\x1b[0m' : '✗');

const tLoad = performance.now();
const dir = opt('--model');
const model = dir ? await loadModel(dir, { device, kvCacheTokens: 8192 }) : await loadDefaultModel({ device, kvCacheTokens: 8192 });
const loadMs = performance.now() - tLoad;
const T = model.config.maxPositionEmbeddings;
console.log(`kvfocus ${info.version} on ${device}${device === 'cuda' ? ` (${info.devices[0]?.name})` : ` (${info.cpuThreads} threads)`}`);
console.log(
  `model: ${model.config.numLayers} layers, hidden ${model.config.hiddenSize}, ${model.config.numHeads}/${model.config.numKvHeads} heads, ` +
    `vocabulary ${model.config.vocabSize}, trained at T = ${T} tokens; loaded in ${loadMs.toFixed(0)} ms`,
);

// ---- 1. one prompt, a few questions ----------------------------------------------------------
const ex = multidocQa.generateExample(multidocQa.heldOutSeed(7), { numDocs: 4, docLength: 5, extraQuestions: 2 });
console.log(`\n${bold('Documents')} ${dim(`(held-out seed ${ex.seed}; the instruction before them: "${ex.prefix.trim()}")`)}`);
for (const d of ex.documents) console.log(wrap(d.trim(), 100, '  '));
console.log('');
for (const qa of [ex, ...ex.extra]) {
  const prompt = multidocQa.formatPrompt({ ...ex, question: qa.question });
  process.stdout.write(`Question: ${multidocQa.questionText(qa)}\n  Answer: ${dim(qa.lead)}`);
  const stream = model.generate(prompt, { maxTokens: 16, temperature: 0 });
  for await (const { text } of stream) process.stdout.write(text);
  const r = await stream.result;
  const ok = multidocQa.exactMatch(r.text, qa.answer);
  console.log(`  ${mark(ok)} ${dim(`(Doc ${docId(ex.documents[qa.answerDoc])} says "${qa.answer}"; ${r.promptTokens} prompt tokens, first token after ${r.timings.timeToFirstTokenMs.toFixed(1)} ms)`)}`);
}

// ---- 2. held-out questions inside T ----------------------------------------------------------
console.log(`\n${bold(`${count} held-out questions`)}, each over as many documents as fit in T = ${T} tokens, ${concurrency} at a time:`);
const tok = model.tokenizer;
const jobs = Array.from({ length: count }, (_, i) => fill(multidocQa.heldOutSeed(1000 + i)));
let next = 0;
let done = 0;
let correct = 0;
let promptTokens = 0;
let completionTokens = 0;
const ttft = [];
const misses = [];
const t0 = performance.now();
progress();
await Promise.all(
  Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      const r = await model.generate(job.prompt, { maxTokens: 16, temperature: 0 }).result;
      const ok = multidocQa.exactMatch(r.text, job.ex.answer);
      correct += ok ? 1 : 0;
      if (!ok && misses.length < 3) misses.push(`${multidocQa.questionText(job.ex)} expected "${job.ex.answer}", got "${r.text.trim()}"`);
      promptTokens += r.promptTokens;
      completionTokens += r.completionTokens;
      ttft.push(r.timings.timeToFirstTokenMs);
      done++;
      progress();
    }
  }),
);
const seconds = (performance.now() - t0) / 1000;
if (tty) process.stdout.write('\n');
ttft.sort((a, b) => a - b);
console.log(`\naccuracy (exact match): ${bold(`${correct}/${count} = ${((100 * correct) / count).toFixed(1)}%`)}`);
console.log(
  `${(promptTokens / count).toFixed(0)} prompt tokens a question on average; ${seconds.toFixed(1)} s in all: ` +
    `${(count / seconds).toFixed(1)} questions/s, ${((promptTokens + completionTokens) / seconds).toFixed(0)} tokens/s; ` +
    `time to first token median ${ttft[ttft.length >> 1].toFixed(1)} ms (with ${concurrency} in flight)`,
);
for (const m of misses) console.log(dim(`  missed: ${m}`));
model.dispose();

// ---------------------------------------------------------------------------------------------

/** The example of `seed` with as many documents as fit in T (prompt + answer). */
function fill(seed) {
  let numDocs = Math.max(1, Math.floor(T / 80));
  for (;;) {
    const e = multidocQa.generateExample(seed, { numDocs });
    const prompt = multidocQa.formatPrompt(e);
    if (tok.encode(prompt).length + 16 <= T || numDocs === 1) return { ex: e, prompt };
    numDocs--;
  }
}

function progress() {
  const width = 30;
  const filled = Math.round((done / count) * width);
  const line = `  [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${count}  correct ${correct}`;
  if (tty) process.stdout.write(`\r${line}`);
  else if (done === count || done % Math.max(1, Math.ceil(count / 4)) === 0) console.log(line);
}

function docId(doc) {
  return /^Doc (\d+)\./.exec(doc)?.[1] ?? '?';
}

function wrap(text, width, indent) {
  const lines = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.map((l, i) => (i === 0 ? indent : `${indent}  `) + l).join('\n');
}
