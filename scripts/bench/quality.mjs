// npm run bench:quality — answer accuracy (exact match) on held-out multi-document questions
// against the number of documents, from well inside the model's training length T to 4x T and
// beyond, for every context method kvfocus has, with time to first token.
//
//   npm run bench:quality -- [--model models,models/deep] [--count 100] [--docs 2,4,6,8,12,16,24,32,48]
//        [--methods full,full-unbounded] [--device cpu] [--start 0]
//        [--json bench/quality.json] [--svg bench/quality.svg] [--readme README.md | --no-readme]
//
// --model takes one checkpoint folder or several, comma-separated (default: every embedded
// model, models/ and models/deep/); they must share a tokenizer, and each answers the same prompts.
// Question i of every point is held-out seed i (from --start), generated with numDocs documents
// (the task's other knobs at their defaults: 6 sentences a document, confusability 0.7, answer
// document anywhere), so each method answers the very same questions. Greedy decoding, at most
// 16 new tokens, stop at </s>, scored by task.exactMatch.
//
// Methods (a later method adds an entry to METHODS and its row appears everywhere):
//   full            full attention over [prefix; documents; question], truncated to the model's
//                   length where it must be: whole documents are dropped from the front (the
//                   prefix and the question stay) until prompt + answer fit in T.
//   full-unbounded  the same prompt untruncated: positions run past T (what happens when the
//                   limit is ignored).
//
// Writes JSON (every point, the machine, the command) and an SVG chart, and replaces the table
// between the `quality-table` markers in the README.
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { encodeExample, task, Tokenizer } from '../train/common.mjs';
import { flag, intList, opt, positiveInt } from './args.mjs';
import { MAX_NEW_TOKENS, METHODS } from './quality-methods.mjs';
import { writeReadmeBlock } from './readme-block.mjs';

const require = createRequire(import.meta.url);
const { loadModel, buildInfo } = require('../../dist/cjs/index.js');
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const embedded = [join(root, 'models'), join(root, 'models/deep')].filter((d) => existsSync(join(d, 'config.json')));
const modelDirs = String(opt('--model', embedded.join(','))).split(',').map((d) => resolve(d));
const count = positiveInt('--count', 100);
const docCounts = intList('--docs', '2,4,6,8,12,16,24,32,48');
const methodNames = String(opt('--methods', Object.keys(METHODS).join(','))).split(',');
for (const m of methodNames) if (!METHODS[m]) throw new Error(`--methods: unknown method ${m} (known: ${Object.keys(METHODS).join(', ')})`);
const device = opt('--device', 'cpu');
const start = Number(opt('--start', 0));
const jsonPath = resolve(opt('--json', join(root, 'bench/quality.json')));
const svgPath = resolve(opt('--svg', join(root, 'bench/quality.svg')));
const readmePath = flag('--no-readme') ? null : resolve(opt('--readme', join(root, 'README.md')));

const models = modelDirs.map((dir) => {
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const rel = relative(root, dir);
  const label = rel && !rel.startsWith('..') ? rel : dir;
  return { dir, label, contextLength: config.max_position_embeddings, layers: config.num_hidden_layers, hidden: config.hidden_size };
});

// Encode every point's examples first (one tokenizer: the models must share it): the longest
// prompt sizes the KV cache.
const tok = await Tokenizer.load(modelDirs[0]);
for (const m of models.slice(1)) {
  if (readFileSync(join(m.dir, 'tokenizer.json'), 'utf8') !== readFileSync(join(modelDirs[0], 'tokenizer.json'), 'utf8')) throw new Error(`--model: ${m.dir} has another tokenizer than ${modelDirs[0]}`);
}
const points = docCounts.map((numDocs) => {
  const examples = Array.from({ length: count }, (_, i) => {
    const ex = task.generateExample(task.heldOutSeed(start + i), { numDocs });
    return { ex, enc: encodeExample(tok, ex) };
  });
  return { numDocs, examples };
});
const longest = Math.max(...points.flatMap((p) => p.examples.map((e) => e.enc.promptLength)));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : 0;
};

// One store per model and prompt prefix; the example's documents are put before it is asked
// (not timed) and deleted after.
const stores = new Map();
let storedId = 0;
async function stored(model, enc) {
  const prefix = enc.ids.slice(0, enc.docStarts[0]);
  const key = prefix.join(',');
  let store = stores.get(key);
  if (!store || store.closed) stores.set(key, (store = await model.openStore({ prefix })));
  const bounds = [...enc.docStarts, enc.docEnd];
  const documents = enc.docStarts.map(() => `doc${storedId++}`);
  await store.putMany(documents.map((id, k) => ({ id, tokens: enc.ids.slice(bounds[k], bounds[k + 1]) })));
  return { store, documents, query: enc.ids.slice(enc.docEnd, enc.promptLength) };
}
// --policy '{"pruneLayers":[2]}' overrides options of every store method (for sweeps).
const policyOverride = JSON.parse(opt('--policy', '{}'));

/** One method on one model at every point: a result row per number of documents. */
async function measure(model, m, name) {
  const method = METHODS[name];
  const rows = [];
  for (const { numDocs, examples } of points) {
    let correct = 0;
    let answerKept = 0;
    const ttft = [];
    const promptTokens = [];
    const fullTokens = [];
    for (const { ex, enc } of examples) {
      let tokens;
      let keptDocs;
      let r;
      if (method.policy) {
        const { store, documents, query } = await stored(model, enc);
        tokens = enc.ids.slice(0, enc.promptLength);
        keptDocs = documents.length;
        r = await model.generate({ store, documents, query }, { maxTokens: MAX_NEW_TOKENS, temperature: 0, policy: { ...method.policy, ...policyOverride } }).result;
        for (const id of documents) store.delete(id);
      } else {
        ({ tokens, keptDocs } = method.prompt(enc, m.contextLength));
        r = await model.generate(tokens, { maxTokens: MAX_NEW_TOKENS, temperature: 0 }).result;
      }
      if (task.exactMatch(r.text, ex.answer)) correct++;
      if (ex.answerDoc >= ex.documents.length - keptDocs) answerKept++;
      ttft.push(r.timings.timeToFirstTokenMs);
      promptTokens.push(tokens.length);
      fullTokens.push(enc.promptLength);
    }
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const row = {
      model: m.label,
      method: name,
      docs: numDocs,
      count,
      accuracy: correct / count,
      correct,
      answerDocInPrompt: answerKept / count,
      meanDocumentTokens: +mean(fullTokens).toFixed(1),
      meanPromptTokens: +mean(promptTokens).toFixed(1),
      ttftMsMean: +mean(ttft).toFixed(2),
      ttftMsMedian: +median(ttft).toFixed(2),
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  return rows;
}

const results = [];
const t0 = performance.now();
// full-unbounded runs past T on purpose: the sequence limit is the pool, not the model's context.
// Stored documents hold their pages in the store, and a sequence over them takes pages of its
// own for every document whose keys move: room for three prompts.
const kvCacheTokens = Math.ceil((3 * (longest + 16 * (points.at(-1)?.numDocs ?? 1)) + MAX_NEW_TOKENS + 16) / 16) * 16;
for (const m of models) {
  const model = await loadModel(m.dir, { device, kvCacheTokens, maxSequenceTokens: kvCacheTokens });
  for (const name of methodNames) results.push(...(await measure(model, m, name)));
  for (const st of stores.values()) st.close();
  stores.clear();
  model.dispose();
}
const seconds = (performance.now() - t0) / 1000;

const info = buildInfo();
const report = {
  benchmark: 'quality',
  command: ['npm run bench:quality', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  date: new Date().toISOString(),
  models,
  device,
  machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, threads: info.cpuThreads, backend: info.backend },
  task: { ...task.DEFAULT_OPTIONS, heldOutStart: start, maxNewTokens: MAX_NEW_TOKENS },
  methods: Object.fromEntries(methodNames.map((m) => [m, METHODS[m].label])),
  seconds: +seconds.toFixed(1),
  results,
};
mkdirSync(dirname(jsonPath), { recursive: true });
writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
writeFileSync(svgPath, chart(report));
if (readmePath) updateReadme(readmePath, report);
console.log(JSON.stringify({ json: jsonPath, svg: svgPath, readme: readmePath, seconds: report.seconds }));

// ---------------------------------------------------------------------------------------------

/** Accuracy against prompt length (mean tokens of the untruncated prompt), one line a method. */
function chart(rep) {
  const W = 720;
  const H = 420;
  const m = { l: 64, r: 24, t: 44, b: 64 };
  const xs = [...new Set(rep.results.map((r) => r.meanDocumentTokens))];
  const T = rep.models[0].contextLength;
  const xMax = Math.max(...xs, T) * 1.05;
  const X = (v) => m.l + (v / xMax) * (W - m.l - m.r);
  const Y = (a) => H - m.b - a * (H - m.t - m.b);
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="14">Multi-document QA: exact match vs prompt length (${rep.results[0]?.count ?? 0} questions a point)</text>`);
  for (let a = 0; a <= 1.0001; a += 0.2) {
    out.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${Y(a)}" y2="${Y(a)}" stroke="#ddd"/>`);
    out.push(`<text x="${m.l - 8}" y="${Y(a) + 4}" text-anchor="end">${Math.round(a * 100)}%</text>`);
  }
  const step = xMax > 4000 ? 1000 : 500;
  for (let v = 0; v <= xMax; v += step) out.push(`<text x="${X(v)}" y="${H - m.b + 18}" text-anchor="middle">${v}</text>`);
  out.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}" stroke="#333"/>`);
  out.push(`<line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}" stroke="#333"/>`);
  out.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 20}" text-anchor="middle">prompt tokens (documents + question); the number of documents labels each point</text>`);
  out.push(`<text transform="translate(16 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">exact match</text>`);
  const Tx = X(T);
  out.push(`<line x1="${Tx}" x2="${Tx}" y1="${m.t}" y2="${H - m.b}" stroke="#888" stroke-dasharray="5 4"/>`);
  out.push(`<text x="${Tx + 4}" y="${m.t + 12}" fill="#555">T = ${T}</text>`);
  series(rep).forEach(({ model, method: name, label }, i) => {
    const rows = rep.results.filter((r) => r.model === model && r.method === name);
    const c = colors[i % colors.length];
    out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${rows.map((r) => `${X(r.meanDocumentTokens).toFixed(1)},${Y(r.accuracy).toFixed(1)}`).join(' ')}"/>`);
    for (const r of rows) {
      out.push(`<circle cx="${X(r.meanDocumentTokens).toFixed(1)}" cy="${Y(r.accuracy).toFixed(1)}" r="3.5" fill="${c}"/>`);
      if (i === 0) out.push(`<text x="${X(r.meanDocumentTokens).toFixed(1)}" y="${H - m.b - 6}" text-anchor="middle" fill="#777" font-size="10">${r.docs}</text>`);
    }
    const ly = m.t + 16 + i * 18;
    out.push(`<line x1="${W - m.r - 390}" x2="${W - m.r - 366}" y1="${ly}" y2="${ly}" stroke="${c}" stroke-width="2"/>`);
    out.push(`<text x="${W - m.r - 360}" y="${ly + 4}">${escapeXml(label)}: ${escapeXml(rep.methods[name])}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** The chart's lines and the table's rows: every method on every model, in run order. */
function series(rep) {
  const many = rep.models.length > 1;
  return rep.models.flatMap((m) => Object.keys(rep.methods).map((method) => ({ model: m.label, method, label: many ? `${m.label} (${m.layers} layers), ${method}` : method })));
}

function escapeXml(s) {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Markdown tables (accuracy, then time to first token) between the README's markers. */
export function qualityTable(rep) {
  const docs = [...new Set(rep.results.map((r) => r.docs))];
  const tokens = (d) => Math.round(rep.results.find((r) => r.docs === d).meanDocumentTokens);
  const T = rep.models[0].contextLength;
  const head = `| model, method | ${docs.map((d) => `${d} docs (~${tokens(d)} tok${tokens(d) > T ? `, ${(tokens(d) / T).toFixed(1)}xT` : ''})`).join(' | ')} |`;
  const rule = `| --- | ${docs.map(() => '---:').join(' | ')} |`;
  const cell = (s, d, f) => {
    const r = rep.results.find((x) => x.model === s.model && x.method === s.method && x.docs === d);
    return r ? f(r) : '';
  };
  const rows = (f) => series(rep).map((s) => `| ${s.label} | ${docs.map((d) => cell(s, d, f)).join(' | ')} |`);
  return [
    `Exact match on ${rep.results[0].count} held-out questions a point (T = ${T} tokens, ${rep.device}):`,
    '',
    head,
    rule,
    ...rows((r) => `${(r.accuracy * 100).toFixed(0)}%`),
    '',
    'Time to first token, median ms:',
    '',
    head,
    rule,
    ...rows((r) => r.ttftMsMedian.toFixed(1)),
    '',
    `Produced by \`${rep.command}\` (${rep.date.slice(0, 10)}, ${rep.seconds} s); JSON in bench/quality.json, chart in bench/quality.svg.`,
  ].join('\n');
}

function updateReadme(path, rep) {
  writeReadmeBlock(path, 'quality-table', qualityTable(rep));
}
