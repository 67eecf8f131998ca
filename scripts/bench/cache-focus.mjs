#!/usr/bin/env node
// npm run bench:cachefocus — CacheFocus against plain RAG on the CPU: time to first token
// (TTFT) and total time of model.generate() over N stored documents and a query, under
//   concat           plain RAG: [P; d1..dN; query] prefilled jointly at query time (the store
//                    only supplies the tokens; nothing computed is reused),
//   cacheFocus       the stored documents attached, re-positioned, pruned at the policy's layers
//                    by the query's attention (the policy's defaults: `{ name: 'cacheFocus' }`),
//   cacheFocus topK  the same with an explicit policy `{ pruneLayers: [L/2 - 1], keep: { topK: 4 } }`
//                    (layer 5 of the 100M fixture's 12), so that pruning keeps 4 documents,
//   parallelWindows  every stored document at |P| (for reference).
//
//   node scripts/bench/cache-focus.mjs [--models 100m,default] [--counts 8,16,32] [--reps 3]
//       [--max-tokens 16] [--doc-tokens 200] [--prefix-tokens 30] [--query-tokens 20]
//       [--policies concat,cacheFocus,cacheFocusTopK,parallelWindows] [--default-concat past|cap]
//       [--threads N] [--json out.json] [--quick]
//
// Models:
//   100m     a ~100M-parameter Llama-shaped checkpoint with random f32 weights (the one of
//            scripts/bench/store.mjs: max_position_embeddings 16384), written once to
//            bench/tmp/store-llama-100m (git-ignored) and reused by both scripts.
//   default  the embedded model (loadDefaultModel(), 512 positions). CacheFocus and parallel
//            windows run on it as shipped: documents past its context share the positions in
//            parallel windows. Concat cannot go past the context:
//              --default-concat past (default): concat runs on a second instance of the same
//                weights loaded with maxSequenceTokens large enough for the longest prompt, so
//                past the trained positions (timings are those of any model of its shape; its
//                tokens are not meaningful there);
//              --default-concat cap: concat runs only where [P; docs; query] + the generated
//                tokens fit 512 positions (its cells are '—' elsewhere), and the largest count
//                that fits is added so that one ratio exists.
//
// Per model and document count: documents of --doc-tokens random regular tokens, a prefix of
// --prefix-tokens starting with BOS and a query of --query-tokens, the same seeds for every
// model. The documents are put in the store before any timing (not timed). Each run is one
//   model.generate({ store, documents, query }, { maxTokens, temperature: 0, stopTokens: [], policy })
// read to its end; TTFT is the wall time from the generate() call to the first streamed token
// and total the time to `await stream.result` (the result's own timings are kept in the JSON
// as well). Every policy runs once as a warm-up, then --reps rounds in rotating order
// (a b c d, b c d a, ...) so that drift in a shared machine's load hits each; medians are
// reported. A run that makes fewer than --max-tokens tokens (the model's EOS still stops:
// random weights may sample it) is counted and flagged.
// Once per model and CacheFocus policy, a check at the largest count: layout() after the query
// shows the tokens each layer holds (fewer after the pruning layer, when the policy prunes).
//
// Prints a table and a README-ready markdown table with concat TTFT / CacheFocus TTFT and the
// same ratio of total times per count; --json writes every run. Goal: >= 20x TTFT at 32
// documents on the 100M model. --quick: a tiny run (2 and 3 documents of 48 tokens, 4 tokens
// generated, one rep) that checks the script works.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { concat, ensureCheckpoint, FIXTURE, parameterCount, randomTokens, SIZES, median, now, rotatingRuns } from './store-fixture.mjs';
import { flag, intList, opt, positiveInt, threadsOption } from './args.mjs';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const benchDir = join(repoRoot, 'bench', 'tmp');

const TOP_K = 4;

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

const quick = flag('--quick');
const modelNames = String(opt('--models', '100m,default')).split(',');
for (const m of modelNames) if (m !== '100m' && m !== 'default') throw new Error(`--models: expected 100m and/or default but received ${m}`);
const counts = [...new Set(intList('--counts', quick ? '2,3' : '8,16,32'))].sort((a, b) => a - b);
const reps = positiveInt('--reps', quick ? 1 : 3);
const maxTokens = positiveInt('--max-tokens', quick ? 4 : 16);
const docTokens = positiveInt('--doc-tokens', quick ? 48 : 200);
const prefixTokens = positiveInt('--prefix-tokens', 30);
const queryTokens = positiveInt('--query-tokens', 20);
const defaultConcat = String(opt('--default-concat', 'past'));
if (defaultConcat !== 'past' && defaultConcat !== 'cap') throw new Error(`--default-concat: expected past or cap but received ${defaultConcat}`);
const POLICY_KEYS = ['concat', 'cacheFocus', 'cacheFocusTopK', 'parallelWindows'];
const policyKeys = String(opt('--policies', POLICY_KEYS.join(','))).split(',');
for (const k of policyKeys) if (!POLICY_KEYS.includes(k)) throw new Error(`--policies: expected some of ${POLICY_KEYS.join(', ')} but received ${k}`);
if (!policyKeys.includes('concat')) throw new Error('--policies: concat is the baseline of every ratio: keep it');
const jsonOut = opt('--json', undefined);
threadsOption(); // before the addon loads (below)

const require = createRequire(import.meta.url);
const kv = require('../../dist/cjs/index.js');
const { loadModel, loadDefaultModel, buildInfo } = kv;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const roundUp = (n, page) => Math.ceil(n / page) * page;

const concatTokens = concat;

/** The documents, prefix and query of a model: the same seeds for every model. */
function workload(vocab, bos, n) {
  const limit = Math.min(vocab, 16000);
  const prefix = concatTokens(bos === null ? [] : [bos], randomTokens(prefixTokens - (bos === null ? 0 : 1), 1, limit));
  const docs = Array.from({ length: n }, (_, i) => ({ id: `d${i}`, tokens: randomTokens(docTokens, 100 + i, limit) }));
  const query = randomTokens(queryTokens, 7, limit);
  return { prefix, docs, query };
}

/** The policy objects of a model of `layers` layers, by key. */
function policyObjects(layers) {
  const layer = layers <= 2 ? 0 : Math.floor(layers / 2) - 1;
  return {
    concat: { name: 'concat' },
    cacheFocus: { name: 'cacheFocus' },
    cacheFocusTopK: { name: 'cacheFocus', pruneLayers: [layer], keep: { topK: TOP_K } },
    parallelWindows: { name: 'parallelWindows' },
  };
}

const policyLabel = (key, p) =>
  key === 'cacheFocusTopK' ? `cacheFocus (prune L${p.pruneLayers[0]}, top-${p.keep.topK})` : key === 'cacheFocus' ? 'cacheFocus (defaults)' : key;

/**
 * One generate() over the stored documents, read to its end: wall seconds to the first token
 * and to the result, and the result's own timings.
 */
async function timedGenerate(model, store, ids, query, policy) {
  const t0 = now();
  const stream = model.generate({ store, documents: ids, query }, { maxTokens, temperature: 0, stopTokens: [], policy });
  let first = null;
  for await (const ev of stream) if (first === null && ev.token >= 0) first = now();
  const result = await stream.result;
  const end = now();
  return {
    ttft: (first ?? end) - t0,
    total: end - t0,
    tokens: result.completionTokens,
    finishReason: result.finishReason,
    promptTokens: result.promptTokens,
    timings: result.timings,
  };
}


/** Tokens each layer holds after the query (layout()): pruning shows as fewer after its layer. */
async function pruneCheck(model, store, ids, query, policy) {
  const seq = model.sequence({ store, documents: ids, policy });
  try {
    await seq.append(query, { logits: 'last' });
    const held = seq.layout().layers.map((l) => l.source.length);
    return { documents: ids.length, heldPerLayer: held, pruned: held.some((h) => h < held[0]) };
  } finally {
    seq.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// One model
// ---------------------------------------------------------------------------------------------

/** Tokens of the longest sequence of n documents: [P; docs; query] + the generated tokens. */
const need = (n) => prefixTokens + n * docTokens + queryTokens + maxTokens;

/**
 * KV pool (tokens of every layer): the store's pages (prefix and each document in whole
 * pages), plus two sequences of the longest prompt in whole pages per document (CacheFocus's
 * own pages for moved documents, or concat's full prefill; only one runs at a time, the second
 * is slack for a sequence whose pages are freed late), with a margin: about 3x the prompt.
 */
function pool(n, page) {
  const storePages = roundUp(prefixTokens, page) + n * roundUp(docTokens, page);
  const sequence = roundUp(prefixTokens, page) + n * roundUp(docTokens, page) + roundUp(queryTokens + maxTokens + 1, page) + page;
  return storePages + 2 * sequence + 8 * page;
}

/** Every policy over n documents: rotated runs, medians, ratios against concat. */
async function measureCount(m, n) {
  const { model, concatModel, policies, concatFits } = m;
  const w = workload(model.config.vocabSize, model.tokenizer.bosTokenId, n);
  const ids = w.docs.map((d) => d.id);
  const store = await model.openStore({ prefix: w.prefix });
  const concatStore = concatModel === model ? store : await concatModel.openStore({ prefix: w.prefix });
  try {
    const t0 = now();
    await store.putMany(w.docs); // not timed in the comparison
    if (concatStore !== store) await concatStore.putMany(w.docs);
    const putSeconds = now() - t0;
    const fns = {};
    const keys = policyKeys.filter((k) => k !== 'concat' || concatFits(n));
    for (const k of keys) {
      const target = k === 'concat' ? concatModel : model;
      const s = k === 'concat' ? concatStore : store;
      fns[k] = () => timedGenerate(target, s, ids, w.query, policies[k]);
    }
    const runs = await rotatingRuns(fns, reps);
    for (const s of new Set([store, concatStore])) {
      const misses = s.stats().misses;
      if (misses !== 0) throw new Error(`${n} documents: ${misses} store misses (documents recomputed): the timings are not of stored documents`);
    }
    const out = {};
    for (const k of keys) {
      const rs = runs[k];
      out[k] = {
        policy: policies[k],
        onConcatInstance: k === 'concat' && concatModel !== model,
        ttft: { seconds: rs.map((r) => r.ttft), median: median(rs.map((r) => r.ttft)) },
        total: { seconds: rs.map((r) => r.total), median: median(rs.map((r) => r.total)) },
        reported: rs.map((r) => r.timings),
        completionTokens: rs.map((r) => r.tokens),
        finishReasons: rs.map((r) => r.finishReason),
        promptTokens: rs[0].promptTokens,
        shortRuns: rs.filter((r) => r.tokens < maxTokens).length,
      };
    }
    const ratios = {};
    if (out.concat) {
      for (const k of keys) {
        if (k === 'concat') continue;
        ratios[k] = { ttft: out.concat.ttft.median / out[k].ttft.median, total: out.concat.total.median / out[k].total.median };
      }
    }
    return { documents: n, contextTokens: prefixTokens + n * docTokens + queryTokens, putSeconds, policies: out, ratios };
  } finally {
    if (concatStore !== store) concatStore.close();
    store.close();
  }
}

async function runModel(name) {
  const t0 = now();
  let model;
  let concatModel;
  let info;
  let note;
  let runCounts = counts;
  let concatFits = () => true;
  if (name === '100m') {
    const dir = await ensureCheckpoint(benchDir);
    if (need(counts[counts.length - 1]) > SIZES.maxPositionEmbeddings) {
      throw new Error(`--counts: ${need(counts[counts.length - 1])} tokens exceed the checkpoint's ${SIZES.maxPositionEmbeddings} positions`);
    }
    model = await loadModel(dir, { device: 'cpu', kvCacheTokens: pool(counts[counts.length - 1], 16) });
    concatModel = model;
    info = { name, dir: dir.slice(repoRoot.length + 1), fixture: FIXTURE, sizes: SIZES, weights: 'f32 (random)' };
  } else {
    const config = JSON.parse(readFileSync(join(kv.defaultModelDir(), 'config.json'), 'utf8'));
    const context = config.max_position_embeddings;
    // Shipped: CacheFocus and parallel windows within the model's own positions.
    const largest = counts[counts.length - 1];
    model = await loadDefaultModel({ device: 'cpu', kvCacheTokens: pool(largest, 16) });
    if (defaultConcat === 'past') {
      const maxSequenceTokens = Math.max(context, need(largest));
      concatModel = maxSequenceTokens > context ? await loadDefaultModel({ device: 'cpu', kvCacheTokens: pool(largest, 16), maxSequenceTokens }) : model;
      if (concatModel !== model) {
        note = `concat ran on a second instance loaded with maxSequenceTokens ${maxSequenceTokens}, past the trained ${context} positions (timings only); cacheFocus and parallelWindows on the shipped one (${context} positions: documents past them share positions in parallel windows)`;
      }
    } else {
      concatModel = model;
      concatFits = (n) => need(n) <= context;
      const fitting = Math.floor((context - prefixTokens - queryTokens - maxTokens) / docTokens);
      if (counts.some((n) => !concatFits(n))) {
        if (fitting >= 1 && !counts.includes(fitting)) runCounts = [...counts, fitting].sort((a, b) => a - b);
        note = `concat capped at the context (${context} positions): ${counts.filter((n) => !concatFits(n)).join(', ')} documents of ${docTokens} tokens (+ prefix ${prefixTokens}, query ${queryTokens}, ${maxTokens} generated) do not fit it${fitting >= 1 ? `; ${fitting} is the most that fits` : ''}`;
      }
    }
    info = { name, dir: 'models', maxPositionEmbeddings: context, weights: config.torch_dtype, concat: defaultConcat, concatMaxSequenceTokens: concatModel.maxSequenceTokens };
  }
  const c = model.config;
  const policies = policyObjects(c.numLayers);
  info = { ...info, parameters: parameterCount(c), layers: c.numLayers, hidden: c.hiddenSize, kvHeads: c.numKvHeads, headDim: c.headDim, vocab: c.vocabSize, kvCacheTokens: model.kvCacheTokens, maxSequenceTokens: model.maxSequenceTokens, loadSeconds: now() - t0 };
  try {
    console.error(`${name}: ${(info.parameters / 1e6).toFixed(1)}M params, ${c.numLayers} layers, counts ${runCounts.join(',')}, KV pool ${model.kvCacheTokens} tokens${note ? ` (${note})` : ''}`);
    const points = [];
    for (const n of runCounts) {
      console.error(`${name}: ${n} documents (${prefixTokens + n * docTokens + queryTokens} tokens + ${maxTokens} generated) ...`);
      const p = await measureCount({ model, concatModel, policies, concatFits }, n);
      const parts = Object.entries(p.policies).map(([k, v]) => `${k} ${(v.ttft.median * 1e3).toFixed(1)}/${(v.total.median * 1e3).toFixed(1)} ms`);
      console.error(`${name}: ${n} documents: TTFT/total ${parts.join(', ')}`);
      points.push(p);
    }
    // Pruning check at the largest count: tokens per layer after the query.
    const checks = {};
    const n = runCounts[runCounts.length - 1];
    const w = workload(c.vocabSize, model.tokenizer.bosTokenId, n);
    const store = await model.openStore({ prefix: w.prefix });
    try {
      await store.putMany(w.docs);
      for (const k of policyKeys.filter((k) => k.startsWith('cacheFocus'))) {
        checks[k] = await pruneCheck(model, store, w.docs.map((d) => d.id), w.query, policies[k]);
        console.error(`${name}: ${k}, ${n} documents: tokens held per layer ${checks[k].heldPerLayer.join(' ')}`);
      }
    } finally {
      store.close();
    }
    return { model: info, policies, countsRun: runCounts, note, points, pruneChecks: checks };
  } finally {
    if (concatModel !== model) concatModel.dispose();
    model.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

const ms = (s) => (s * 1e3).toFixed(1);
const x = (r) => (r === undefined ? '—' : `${r >= 100 ? r.toFixed(0) : r.toFixed(1)}x`);
const label = (r) => (r.model.name === '100m' ? `${(r.model.parameters / 1e6).toFixed(0)}M fixture` : `default (${(r.model.parameters / 1e6).toFixed(2)}M)`);
const cell = (p, k, what) => (p.policies[k] ? ms(p.policies[k][what].median) : '—');
const focusKeys = () => policyKeys.filter((k) => k.startsWith('cacheFocus'));

/** A README-ready markdown table of the report, with notes under it. */
function markdownTable(report) {
  const head = ['model', 'documents', 'context tokens', 'concat TTFT / total (ms)'];
  for (const k of policyKeys.filter((k) => k !== 'concat')) head.push(`${k} TTFT / total (ms)`);
  for (const k of focusKeys()) head.push(`TTFT ratio ${k}`, `total ratio ${k}`);
  const lines = [`| ${head.join(' | ')} |`, `|---|${head.slice(1).map(() => '---:').join('|')}|`];
  for (const r of report.results) {
    for (const p of r.points) {
      const row = [label(r), p.documents, p.contextTokens];
      for (const k of policyKeys) row.push(p.policies[k] ? `${cell(p, k, 'ttft')} / ${cell(p, k, 'total')}` : '—');
      for (const k of focusKeys()) row.push(x(p.ratios[k]?.ttft), x(p.ratios[k]?.total));
      lines.push(`| ${row.join(' | ')} |`);
    }
  }
  const s = report.settings;
  lines.push('');
  lines.push(
    `CPU, ${report.host.threads} threads, f32 weights and KV; documents of ${s.docTokens} tokens after a ${s.prefixTokens}-token prefix, a ${s.queryTokens}-token query, ${s.maxTokens} tokens generated greedily; ` +
      `median of ${s.reps} runs after a warm-up, policies alternated. Documents are put in the store before timing. TTFT: generate() to the first token; total: to the result. ` +
      'Ratio = concat / CacheFocus (TTFT, total time). concat prefills [P; docs; query] jointly at query time; cacheFocus attaches the stored documents, re-positions them and prunes at its pruning layers by the query\'s attention ' +
      `(defaults: the middle layer, layers/2, none with 2 layers, keep half; topK: the same layer, keep ${TOP_K}; documents past the model's positions share them in parallel windows until pruning makes room); parallelWindows puts every document at |P|.`,
  );
  for (const r of report.results) {
    const extra = [];
    if (r.note) extra.push(r.note);
    for (const [k, c] of Object.entries(r.pruneChecks)) extra.push(`${k} at ${c.documents} documents holds ${c.heldPerLayer[0]} tokens in layer 0 and ${c.heldPerLayer[c.heldPerLayer.length - 1]} in layer ${c.heldPerLayer.length - 1}`);
    const short = r.points.flatMap((p) => Object.entries(p.policies).filter(([, v]) => v.shortRuns > 0).map(([k, v]) => `${k} at ${p.documents} (${v.shortRuns} runs)`));
    if (short.length > 0) extra.push(`fewer than ${s.maxTokens} tokens (EOS sampled): ${short.join(', ')}`);
    lines.push(`${label(r)}: ${extra.join('; ')}.`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

mkdirSync(benchDir, { recursive: true });
const started = now();
const threads = buildInfo().cpuThreads;
const loadAverageBefore = loadavg()[0];
const results = [];
for (const name of modelNames) results.push(await runModel(name));
const report = {
  bench: 'cache-focus',
  date: new Date().toISOString(),
  command: `node scripts/bench/cache-focus.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  seconds: now() - started,
  host: { cpu: cpus()[0]?.model, logicalCores: cpus().length, threads, loadAverageBefore, loadAverageAfter: loadavg()[0] },
  settings: { counts, reps, maxTokens, docTokens, prefixTokens, queryTokens, policies: policyKeys, defaultConcat, quick, device: 'cpu', kvDtype: 'f32', temperature: 0, stopTokens: [] },
  goal: { ttftRatioAt32Documents100m: 20 },
  results,
};
if (jsonOut) writeFileSync(jsonOut, `${JSON.stringify(report, null, 2)}\n`);

console.log(`CacheFocus vs concat (plain RAG), CPU, ${threads} threads, ${maxTokens} tokens generated (median of ${reps} runs; TTFT / total ms)`);
console.log(`${'model'.padEnd(16)}${'docs'.padStart(5)}${'tokens'.padStart(8)}${policyKeys.map((k) => k.padStart(22)).join('')}${focusKeys().map((k) => `${k} x`.padStart(20)).join('')}`);
for (const r of results) {
  for (const p of r.points) {
    const cols = policyKeys.map((k) => (p.policies[k] ? `${cell(p, k, 'ttft')}/${cell(p, k, 'total')}` : '—').padStart(22)).join('');
    const rat = focusKeys().map((k) => `${x(p.ratios[k]?.ttft)}/${x(p.ratios[k]?.total)}`.padStart(20)).join('');
    console.log(`${label(r).padEnd(16)}${String(p.documents).padStart(5)}${String(p.contextTokens).padStart(8)}${cols}${rat}`);
  }
  if (r.note) console.log(`${label(r)}: ${r.note}`);
  for (const [k, c] of Object.entries(r.pruneChecks)) console.log(`${label(r)}: ${policyLabel(k, r.policies[k])}, ${c.documents} documents: tokens held per layer ${c.heldPerLayer.join(' ')}${c.pruned ? '' : ' (nothing pruned)'}`);
}
const at32 = results.find((r) => r.model.name === '100m')?.points.find((p) => p.documents === 32);
if (at32) {
  const parts = focusKeys().filter((k) => at32.ratios[k]).map((k) => `${k} ${x(at32.ratios[k].ttft)} (${at32.ratios[k].ttft >= 20 ? 'met' : 'not met'})`);
  console.log(`goal: concat TTFT / CacheFocus TTFT >= 20x at 32 documents on the 100M model: ${parts.join(', ')}`);
}
console.log(`1-min load average ${loadAverageBefore.toFixed(1)} before, ${report.host.loadAverageAfter.toFixed(1)} after; ${report.seconds.toFixed(1)} s${jsonOut ? `; JSON: ${jsonOut}` : ''}`);
console.log('\nMarkdown (README):\n');
console.log(markdownTable(report));
