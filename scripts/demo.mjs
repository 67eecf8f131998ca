// npm run demo — the embedded default model answering multi-document questions.
//
// 1. One prompt of documents about invented people (distractors share names and formats), and
//    a few questions about it, each answer streamed token by token.
// 2. Held-out questions (as many documents as fit the model's training length T), answered 8 at
//    a time through the continuous-batching scheduler, with a progress display; accuracy and
//    timings at the end.
//
// 3. Held-out questions over about 3x T of documents kept in a Context KV Cache Store, answered
//    with CacheFocus, next to plain RAG truncated to T.
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

// ---- 3. stored documents beyond T, with CacheFocus --------------------------------------------
// Each question's documents are put in a Context KV Cache Store once (encoded after the shared
// instruction); the question then prefills only itself. CacheFocus lays documents that do not
// fit T out in parallel windows, and (on models deeper than two layers) prunes the least
// relevant at the middle layer. Plain RAG must drop documents from the front to fit T.
const storedCount = Math.min(count, 30);
const numDocs = Math.max(2, Math.round((3 * T) / 80)); // about 3x T of documents
console.log(`\n${bold(`${storedCount} held-out questions over ${numDocs} stored documents each`)} ${dim(`(~3x T; CacheFocus vs plain RAG truncated to T)`)}:`);
const cf = { correct: 0, ttft: [] };
const rag = { correct: 0, ttft: [] };
let storeFor = null;
for (let i = 0; i < storedCount; i++) {
  const e = multidocQa.generateExample(multidocQa.heldOutSeed(2000 + i), { numDocs });
  if (!storeFor || storeFor.prefix !== e.prefix) {
    storeFor?.store.close();
    storeFor = { prefix: e.prefix, store: await model.openStore({ prefix: e.prefix }) };
  }
  const { store } = storeFor;
  const documents = e.documents.map((_, k) => `q${i}-d${k}`);
  await store.putMany(e.documents.map((text, k) => ({ id: documents[k], text })));
  const r = await model.generate({ store, documents, query: e.question }, { maxTokens: 16, temperature: 0, policy: { name: 'cacheFocus' } }).result;
  cf.correct += multidocQa.exactMatch(r.text, e.answer) ? 1 : 0;
  cf.ttft.push(r.timings.timeToFirstTokenMs);
  // Plain RAG: as many of the last documents as fit T, prefilled with the question.
  let keep = e.documents.length;
  let prompt;
  do prompt = multidocQa.formatPrompt({ ...e, documents: e.documents.slice(e.documents.length - keep--) });
  while (tok.encode(prompt).length + 16 > T && keep > 0);
  const p = await model.generate(prompt, { maxTokens: 16, temperature: 0 }).result;
  rag.correct += multidocQa.exactMatch(p.text, e.answer) ? 1 : 0;
  rag.ttft.push(p.timings.timeToFirstTokenMs);
  for (const id of documents) store.delete(id);
  if (tty) process.stdout.write(`\r  ${i + 1}/${storedCount}  CacheFocus ${cf.correct}  plain RAG ${rag.correct}`);
}
storeFor?.store.close();
if (tty) process.stdout.write('\n');
const med = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
console.log(`  CacheFocus over stored documents: ${bold(`${cf.correct}/${storedCount}`)} correct, time to first token median ${med(cf.ttft).toFixed(1)} ms`);
console.log(`  plain RAG truncated to T:          ${bold(`${rag.correct}/${storedCount}`)} correct, time to first token median ${med(rag.ttft).toFixed(1)} ms`);
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
