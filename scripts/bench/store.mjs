#!/usr/bin/env node
// npm run bench:store — the Context KV Cache Store on the CPU: time to first token (TTFT) of a
// query over N documents, (a) prefilling [P; d1..dN; query] from an empty cache against (b)
// attaching the stored prefix and documents (keys re-rotated to consecutive positions) and
// prefilling only the query; putMany throughput against a plain prefill of the same tokens;
// and a hook for reloading a store from its disk tier.
//
//   node scripts/bench/store.mjs [--models 100m,default] [--counts 5,10,20,40] [--reps 3]
//       [--doc-tokens 200] [--prefix-tokens 30] [--query-tokens 20] [--threads N]
//       [--default-past-context] [--json out.json] [--quick]
//
// Models:
//   100m     a ~100M-parameter Llama-shaped checkpoint with random f32 weights (the sizes of
//            scripts/bench/cpu-llamacpp.mjs, max_position_embeddings 16384 so that 40 documents
//            fit), written once to bench/tmp/store-llama-100m (git-ignored) and reused.
//   default  the embedded model (loadDefaultModel()). Its context (max_position_embeddings) is
//            short: only the counts whose [P; docs; query] fits it run, and the JSON names the
//            skipped ones; when none fits, the largest count that does runs instead. With
//            --default-past-context every count runs, past the trained positions on purpose
//            (maxSequenceTokens): the timings are those of any model of its shape, the logits
//            are not meaningful there.
//
// Per model and document count (documents of --doc-tokens random regular tokens each, a prefix
// of --prefix-tokens starting with BOS, a query of --query-tokens):
//   putMany   a fresh store each run (openStore, which computes P, is not timed), then
//             store.putMany(all documents): document tokens per second. Alternated with one
//             plain prefill of the same number of tokens (the documents concatenated) from an
//             empty cache (model.sequence() + append).
//   TTFT (a)  model.sequence(), append([P; docs; query], { logits: 'last' }): the first
//             token's logits from an empty cache.
//   TTFT (b)  model.sequence({ store, documents }), append(query, { logits: 'last' }): the
//             attach (with re-rotation of moved keys) plus the query's prefill.
//   Each measurement is a warm-up run, then the median of --reps runs; (a) and (b) alternate
//   (a b, b a, a b, ...), as do putMany and its plain prefill, so that drift in a shared
//   machine's load hits both. Sequences are disposed between runs; the store's misses stay 0
//   (every document is on the device: nothing is recomputed).
// Once per model, a sanity check: with ONE document (at its stored positions), the first
// token's logits of (a) and (b) agree (max abs diff, expected below 1e-4).
//
// Reload from disk (hook, see RELOAD FROM DISK below): opens a store with `dir`, puts the
// documents of the largest count, closes it, reopens it from the same dir and times the reopen
// plus the first attach of all the documents (with the query), as GB/s of store.stats().disk.bytes,
// also net of the same attach from the device tier, against a plain read of the store's files.
// Skipped with a note while openStore refuses `dir` (UnsupportedError: no disk tier yet).
//
// Prints a table and a README-ready markdown table; --json writes every run. --quick: a tiny
// run (2 and 3 documents of 48 tokens, one rep) that checks the script works.
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { flag, intList, opt, positiveInt, threadsOption } from './args.mjs';
import { concat, ensureCheckpoint as checkpointIn, FIXTURE, median, now, parameterCount, randomTokens, SIZES, rotatingRuns } from './store-fixture.mjs';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const benchDir = join(repoRoot, 'bench', 'tmp');

const LOGITS_TOLERANCE = 1e-4;

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

const quick = flag('--quick');
const modelNames = String(opt('--models', '100m,default')).split(',');
for (const m of modelNames) if (m !== '100m' && m !== 'default') throw new Error(`--models: expected 100m and/or default but received ${m}`);
const counts = intList('--counts', quick ? '2,3' : '5,10,20,40');
const reps = positiveInt('--reps', quick ? 1 : 3);
const docTokens = positiveInt('--doc-tokens', quick ? 48 : 200);
const prefixTokens = positiveInt('--prefix-tokens', 30);
const queryTokens = positiveInt('--query-tokens', 20);
const pastContext = flag('--default-past-context');
const jsonOut = opt('--json', undefined);
threadsOption(); // before the addon loads (below)

const require = createRequire(import.meta.url);
const kv = require('../../dist/cjs/index.js');
const { loadModel, loadDefaultModel, buildInfo, UnsupportedError } = kv;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

function maxAbsDiff(a, b) {
  if (a.length !== b.length) throw new Error(`logits of different lengths: ${a.length} and ${b.length}`);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

// (a) and (b) alternated: a b, b a, ... after a warm-up of each.
const alternate = async (fa, fb) => rotatingRuns({ a: fa, b: fb }, reps);

/** Seconds of one plain prefill of `tokens` from an empty cache; its last row of logits. */
async function plainPrefill(model, tokens) {
  const t0 = now();
  const seq = model.sequence();
  try {
    const logits = await seq.append(tokens, { logits: 'last' });
    return { seconds: now() - t0, logits };
  } finally {
    seq.dispose();
  }
}

/** Seconds of attaching the store's prefix and `ids`, then prefilling `query`; its logits. */
async function storedPrefill(model, store, ids, query) {
  const t0 = now();
  const seq = model.sequence({ store, documents: ids });
  try {
    const logits = await seq.append(query, { logits: 'last' });
    return { seconds: now() - t0, logits };
  } finally {
    seq.dispose();
  }
}

const roundUp = (n, page) => Math.ceil(n / page) * page;

// ---------------------------------------------------------------------------------------------
// One model
// ---------------------------------------------------------------------------------------------

/** The documents, prefix and query of a model: the same seeds for every model. */
function workload(vocab, bos, n) {
  const limit = Math.min(vocab, 16000);
  const prefix = concat(bos === null ? [] : [bos], randomTokens(prefixTokens - (bos === null ? 0 : 1), 1, limit));
  const docs = Array.from({ length: n }, (_, i) => ({ id: `d${i}`, tokens: randomTokens(docTokens, 100 + i, limit) }));
  const query = randomTokens(queryTokens, 7, limit);
  return { prefix, docs, query };
}

/** Logits of (a) and (b) with one document at its stored positions: max abs diff. */
async function logitsCheck(model, w) {
  const store = await model.openStore({ prefix: w.prefix });
  try {
    await store.put(w.docs[0].id, w.docs[0].tokens);
    const a = await plainPrefill(model, concat(w.prefix, w.docs[0].tokens, w.query));
    const b = await storedPrefill(model, store, [w.docs[0].id], w.query);
    const diff = maxAbsDiff(a.logits, b.logits);
    let scale = 0;
    for (const x of a.logits) scale = Math.max(scale, Math.abs(x));
    return { documents: 1, maxAbsDiff: diff, maxAbsLogit: scale, tolerance: LOGITS_TOLERANCE, pass: diff < LOGITS_TOLERANCE };
  } finally {
    store.close();
  }
}

/** putMany vs plain prefill, then TTFT (a) vs (b), for n documents. */
async function measureCount(model, n) {
  const w = workload(model.config.vocabSize, model.tokenizer.bosTokenId, n);
  const ids = w.docs.map((d) => d.id);
  const docTotal = n * docTokens;
  const contextTokens = prefixTokens + docTotal + queryTokens;

  // putMany (a fresh store each run) vs one plain prefill of the same number of tokens.
  let store = null;
  const openFresh = async () => {
    store?.close();
    store = await model.openStore({ prefix: w.prefix });
  };
  const allDocs = concat(...w.docs.map((d) => d.tokens));
  const put = await alternate(
    async () => {
      await openFresh();
      const t0 = now();
      await store.putMany(w.docs);
      return now() - t0;
    },
    async () => (await plainPrefill(model, allDocs)).seconds,
  );
  const stored = store.stats();

  // TTFT: (a) full prefill of [P; docs; query] vs (b) stored documents + query.
  const full = concat(w.prefix, ...w.docs.map((d) => d.tokens), w.query);
  const ttft = await alternate(
    async () => (await plainPrefill(model, full)).seconds,
    async () => (await storedPrefill(model, store, ids, w.query)).seconds,
  );
  const after = store.stats();
  store.close();
  if (after.misses !== 0) throw new Error(`${n} documents: ${after.misses} store misses (documents recomputed): the timings of (b) are not of stored documents`);

  const a = median(ttft.a);
  const b = median(ttft.b);
  return {
    documents: n,
    contextTokens,
    ttft: {
      fullPrefill: { seconds: ttft.a, median: a },
      stored: { seconds: ttft.b, median: b },
      speedup: a / b,
    },
    putMany: {
      tokens: docTotal,
      seconds: put.a,
      tokensPerSecond: docTotal / median(put.a),
      plainPrefillSeconds: put.b,
      plainPrefillTokensPerSecond: docTotal / median(put.b),
      ratio: median(put.b) / median(put.a),
      storeDeviceBytes: stored.device.bytes,
    },
    storeHits: after.hits,
  };
}

/** Every file under `dir` (recursively): paths and total bytes. */
function filesUnder(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push({ path: p, bytes: statSync(p).size });
  }
  return out;
}

const isUnsupported = (e) => e instanceof UnsupportedError || e?.name === 'UnsupportedError';

// =============================================================================================
// RELOAD FROM DISK (hook for the store's disk tier)
// ---------------------------------------------------------------------------------------------
// Assumes: openStore({ prefix, dir }) persists what put() stores under `dir`; close() leaves it
// there; openStore with the same prefix and dir finds the entries again (by id); the first
// sequence over them reads their pages back; store.stats().disk.bytes is what the tier holds.
// Measures GB/s of that reload (reopen + first attach of every document, less the same attach
// from the device tier) against a plain read of the store's files (the same bytes; both from a
// warm page cache). Skipped with a note while openStore refuses `dir` (UnsupportedError).
// =============================================================================================
async function diskReload(model, n, warmStoredSeconds) {
  const w = workload(model.config.vocabSize, model.tokenizer.bosTokenId, n);
  const ids = w.docs.map((d) => d.id);
  const dir = join(benchDir, `store-disk-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  try {
    let store;
    try {
      store = await model.openStore({ prefix: w.prefix, dir });
    } catch (e) {
      if (isUnsupported(e)) return { documents: n, skipped: true, note: `openStore({ dir }) refused with UnsupportedError (no disk tier yet): ${e.message}` };
      throw e;
    }
    try {
      await store.putMany(w.docs);
    } finally {
      store.close();
    }
    const runs = [];
    for (let r = 0; r <= reps; r++) { // the first is a warm-up (its files enter the page cache)
      const t0 = now();
      const reopened = await model.openStore({ prefix: w.prefix, dir });
      const openSeconds = now() - t0;
      try {
        const missing = ids.filter((id) => !reopened.has(id));
        if (missing.length > 0) {
          return { documents: n, skipped: true, note: `the reopened store does not list ${missing.length} of ${n} documents (e.g. ${missing[0]}): the disk tier does not keep ids as assumed here` };
        }
        const t1 = now();
        const first = await storedPrefill(model, reopened, ids, w.query);
        const firstAttachSeconds = now() - t1;
        const s = reopened.stats();
        const warm = await storedPrefill(model, reopened, ids, w.query); // now on the device
        const diskBytes = s.disk?.bytes;
        const files = filesUnder(dir);
        const fileBytes = files.reduce((x, f) => x + f.bytes, 0);
        const t2 = now();
        let read = 0;
        for (const f of files) read += readFileSync(f.path).length;
        const readSeconds = now() - t2;
        if (read !== fileBytes) throw new Error(`read ${read} bytes of ${fileBytes}`);
        // Gross: reopen + first attach (with the query's prefill). Net: less the same attach and
        // query from the device tier (the reload's own time; null when within noise of it).
        const grossSeconds = openSeconds + firstAttachSeconds;
        const netSeconds = grossSeconds - Math.min(warm.seconds, warmStoredSeconds ?? Infinity);
        runs.push({ openSeconds, firstAttachSeconds, warmAttachSeconds: warm.seconds, grossSeconds, netSeconds, diskBytes, fileBytes, fileReadSeconds: readSeconds, storeMisses: s.misses });
      } finally {
        reopened.close();
      }
    }
    const measured = runs.slice(1);
    const gross = median(measured.map((r) => r.grossSeconds));
    const net = median(measured.map((r) => r.netSeconds));
    const read = median(measured.map((r) => r.fileReadSeconds));
    const bytes = measured[0].diskBytes ?? measured[0].fileBytes;
    return {
      documents: n,
      skipped: false,
      runs: measured,
      bytes,
      reloadGBps: bytes / gross / 1e9,
      reloadNetGBps: net > 0.1 * gross ? bytes / net / 1e9 : null,
      fileReadGBps: measured[0].fileBytes / read / 1e9,
      note: 'reload = reopen + first attach of all documents with the query prefill (net: less the same from the device tier); page cache warm for the reload and the file read',
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function runModel(name) {
  let model;
  let info;
  let skippedCounts = [];
  let runCounts = counts;
  let note;
  const need = (n) => prefixTokens + n * docTokens + queryTokens;
  // KV pool: the store (whole pages per block), plus two sequences of the longest context
  // (a full prefill, or an attach's re-rotated key pages and the query), with room to spare.
  const pool = (ns, page = 16) => {
    const m = Math.max(...ns);
    return roundUp(prefixTokens, page) + m * roundUp(docTokens, page) + 2 * roundUp(need(m), page) + 4 * page;
  };
  const t0 = now();
  if (name === '100m') {
    const dir = await checkpointIn(benchDir);
    if (need(Math.max(...counts)) > SIZES.maxPositionEmbeddings) throw new Error(`--counts: ${need(Math.max(...counts))} tokens exceed the checkpoint's ${SIZES.maxPositionEmbeddings} positions`);
    model = await loadModel(dir, { device: 'cpu', kvCacheTokens: pool(counts) });
    info = { name, dir: dir.slice(repoRoot.length + 1), fixture: FIXTURE, sizes: SIZES, weights: 'f32' };
  } else {
    const config = JSON.parse(readFileSync(join(kv.defaultModelDir(), 'config.json'), 'utf8'));
    const context = config.max_position_embeddings;
    const fits = counts.filter((n) => need(n) <= context);
    skippedCounts = counts.filter((n) => need(n) > context);
    let maxSequenceTokens;
    if (pastContext) {
      maxSequenceTokens = Math.max(context, need(Math.max(...counts)));
      skippedCounts = [];
      if (fits.length < counts.length) note = `--default-past-context: counts over ${context} tokens run past the trained positions (timings only)`;
    } else if (fits.length > 0) {
      runCounts = fits;
    } else {
      const largest = Math.floor((context - prefixTokens - queryTokens) / docTokens);
      if (largest < 1) throw new Error(`default model: one document of ${docTokens} tokens does not fit its ${context} positions`);
      runCounts = [largest];
    }
    if (skippedCounts.length > 0) {
      note = `max_position_embeddings ${context}: ${skippedCounts.join(', ')} documents of ${docTokens} tokens (+ prefix ${prefixTokens}, query ${queryTokens}) do not fit; ran ${runCounts.join(', ')} (--default-past-context runs past it)`;
    }
    model = await loadDefaultModel({ device: 'cpu', kvCacheTokens: pool(runCounts), ...(maxSequenceTokens ? { maxSequenceTokens } : {}) });
    info = { name, dir: 'models', maxPositionEmbeddings: context, weights: config.torch_dtype };
  }
  const loadSeconds = now() - t0;
  const c = model.config;
  info = { ...info, parameters: parameterCount(c), layers: c.numLayers, hidden: c.hiddenSize, kvHeads: c.numKvHeads, headDim: c.headDim, vocab: c.vocabSize, kvCacheTokens: model.kvCacheTokens, maxSequenceTokens: model.maxSequenceTokens, loadSeconds };
  try {
    console.error(`${name}: ${(info.parameters / 1e6).toFixed(1)}M params, counts ${runCounts.join(',')}${note ? ` (${note})` : ''}`);
    const check = await logitsCheck(model, workload(c.vocabSize, model.tokenizer.bosTokenId, 1));
    console.error(`${name}: logits (a) vs (b), one document: max abs diff ${check.maxAbsDiff.toExponential(2)} (${check.pass ? 'ok' : `OVER ${LOGITS_TOLERANCE}`})`);
    const points = [];
    for (const n of runCounts) {
      console.error(`${name}: ${n} documents (${need(n)} tokens) ...`);
      const p = await measureCount(model, n);
      console.error(`${name}: ${n} documents: TTFT ${(p.ttft.fullPrefill.median * 1e3).toFixed(1)} ms full, ${(p.ttft.stored.median * 1e3).toFixed(1)} ms stored (${p.ttft.speedup.toFixed(1)}x)`);
      points.push(p);
    }
    const largest = points[points.length - 1];
    const disk = await diskReload(model, largest.documents, largest.ttft.stored.median);
    if (disk.skipped) console.error(`${name}: reload from disk skipped: ${disk.note}`);
    return { model: info, countsRun: runCounts, skippedCounts, note, logitsCheck: check, points, diskReload: disk };
  } finally {
    model.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

const ms = (s) => (s * 1e3).toFixed(1);
const rate = (x) => x.toFixed(0);
const label = (r) => (r.model.name === '100m' ? `${(r.model.parameters / 1e6).toFixed(0)}M fixture` : `default (${(r.model.parameters / 1e6).toFixed(2)}M)`);

const diskRates = (d) =>
  `${d.reloadGBps.toFixed(2)} GB/s reopen + first attach${d.reloadNetGBps === null ? '' : ` (${d.reloadNetGBps.toFixed(2)} GB/s net of the device-tier attach)`}, plain file read ${d.fileReadGBps.toFixed(2)} GB/s`;

/** A README-ready markdown table of the report, with notes under it. */
function markdownTable(report) {
  const lines = [
    '| model | documents | context tokens | TTFT full prefill (ms) | TTFT stored docs (ms) | speedup | putMany tok/s | plain prefill tok/s |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of report.results) {
    for (const p of r.points) {
      lines.push(`| ${label(r)} | ${p.documents} | ${p.contextTokens} | ${ms(p.ttft.fullPrefill.median)} | ${ms(p.ttft.stored.median)} | ${p.ttft.speedup.toFixed(1)}x | ${rate(p.putMany.tokensPerSecond)} | ${rate(p.putMany.plainPrefillTokensPerSecond)} |`);
    }
  }
  const s = report.settings;
  lines.push('');
  lines.push(`CPU, ${report.host.threads} threads, f32 weights and KV; documents of ${s.docTokens} tokens after a ${s.prefixTokens}-token prefix, a ${s.queryTokens}-token query; median of ${s.reps} runs after a warm-up, (a) and (b) alternated. ` +
    'Speedup = full prefill TTFT / stored-documents TTFT (attach with key re-rotation + query prefill). putMany tok/s: each [P; d] computed on its own; plain prefill: the same tokens in one sequence.');
  for (const r of report.results) {
    const extra = [];
    extra.push(`logits (a) vs (b), one document: max abs diff ${r.logitsCheck.maxAbsDiff.toExponential(1)}`);
    if (r.note) extra.push(r.note);
    extra.push(r.diskReload.skipped ? `reload from disk: skipped (${r.diskReload.note.split(': ')[0]})` : `reload from disk (${r.diskReload.documents} documents, ${(r.diskReload.bytes / 1e6).toFixed(1)} MB): ${diskRates(r.diskReload)}`);
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
  bench: 'store',
  date: new Date().toISOString(),
  command: `node scripts/bench/store.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  seconds: now() - started,
  host: { cpu: cpus()[0]?.model, logicalCores: cpus().length, threads, loadAverageBefore, loadAverageAfter: loadavg()[0] },
  settings: { counts, reps, docTokens, prefixTokens, queryTokens, quick, defaultPastContext: pastContext, device: 'cpu', kvDtype: 'f32' },
  goal: { speedupAt20Documents100m: 20 },
  results,
};
if (jsonOut) writeFileSync(jsonOut, `${JSON.stringify(report, null, 2)}\n`);

console.log(`Context store vs full prefill, CPU, ${threads} threads (median of ${reps} runs)`);
console.log(`${'model'.padEnd(16)}${'docs'.padStart(5)}${'tokens'.padStart(8)}${'full ms'.padStart(10)}${'stored ms'.padStart(11)}${'speedup'.padStart(9)}${'putMany/s'.padStart(11)}${'plain/s'.padStart(9)}`);
for (const r of results) {
  for (const p of r.points) {
    console.log(`${label(r).padEnd(16)}${String(p.documents).padStart(5)}${String(p.contextTokens).padStart(8)}${ms(p.ttft.fullPrefill.median).padStart(10)}${ms(p.ttft.stored.median).padStart(11)}${`${p.ttft.speedup.toFixed(1)}x`.padStart(9)}${rate(p.putMany.tokensPerSecond).padStart(11)}${rate(p.putMany.plainPrefillTokensPerSecond).padStart(9)}`);
  }
  const c = r.logitsCheck;
  console.log(`${label(r)}: logits (a) vs (b), one document: max abs diff ${c.maxAbsDiff.toExponential(2)} (tolerance ${c.tolerance}: ${c.pass ? 'ok' : 'FAIL'})`);
  if (r.note) console.log(`${label(r)}: ${r.note}`);
  console.log(`${label(r)}: reload from disk: ${r.diskReload.skipped ? `skipped, ${r.diskReload.note}` : diskRates(r.diskReload)}`);
}
const at20 = results.find((r) => r.model.name === '100m')?.points.find((p) => p.documents === 20);
if (at20) console.log(`goal: >= 20x at 20 documents on the 100M model: ${at20.ttft.speedup.toFixed(1)}x (${at20.ttft.speedup >= 20 ? 'met' : 'not met'})`);
console.log(`1-min load average ${loadAverageBefore.toFixed(1)} before, ${report.host.loadAverageAfter.toFixed(1)} after; ${report.seconds.toFixed(1)} s${jsonOut ? `; JSON: ${jsonOut}` : ''}`);
console.log('\nMarkdown (README):\n');
console.log(markdownTable(report));
if (results.some((r) => !r.logitsCheck.pass)) process.exitCode = 1;
