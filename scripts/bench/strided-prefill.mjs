#!/usr/bin/env node
// npm run bench:prefill — time to prefill a long prompt under the Cascading KV cache (strided
// prefill: chunks of `stride` tokens, each attending to the sinks, the cache and itself) against
// full attention (every chunk attending to the whole prompt before it), on the ~100M-parameter
// fixture of the store benchmarks (scripts/bench/store-fixture.mjs: 12 layers, hidden 768,
// 12 query heads and 4 KV heads of 64, random f32 weights).
//
//   npm run bench:prefill -- [--sizes 8192,32768,131072] [--full-max 32768]
//        [--sinks 64] [--cascades 4] [--window 1024] [--stride 1024] [--reps 1] [--threads N]
//        [--mark 4096] [--model DIR] [--json bench/strided-prefill.json] [--readme [README.md]]
//        [--render bench/strided-prefill.json]   (tables again from a report, nothing measured)
//
// Cascading configuration (default): policies.cascading({ sinks: 64, cascades: 4, window: 1024,
// stride: 1024 }), beta and headReduction the defaults (0.9999, 'max'): 64 sinks and stride 1024
// are the authors' (SINKS=64 in every experiment script; --cascade_stride 1024, the default and
// the PG19 script's); 4 cascades as in their PG19 and BookSum scripts, of 1024 slots each, so a
// layer holds 64 + 4 * 1024 = 4160 tokens per KV head (their PG19 runs used 4 x 8192, BookSum
// 4 x 512): at 8K the cache is already full and evicting, and each chunk attends to at most
// 4160 + 1024 tokens whatever N is, so the strided prefill should grow linearly with N.
//
// Full attention: policies.full() on the same weights, loaded with prefillChunk = stride, so
// that both feed the prompt in the same chunks and differ only in what each chunk attends to
// (everything before it: quadratic in N overall). Its sequence must fit the KV pool and the
// model's context: the fixture's max_position_embeddings is 16384, so for sizes above it the
// script makes a variant folder next to the checkpoint (bench/tmp/store-llama-100m-ctxM: its
// config.json with max_position_embeddings M = the largest size full attention runs at, the
// other files hard links to the checkpoint's). The weights are random, so only timings mean
// anything here. Full attention is skipped above --full-max tokens (the reason is recorded in
// the JSON): on a CPU its quadratic cost at 128K takes far longer than the strided prefill.
// --model DIR runs another checkpoint instead of the fixture (a variant of it, when needed, goes
// to bench/tmp/<name>-ctxM); the tests run the script so on the embedded model at small sizes.
//
// Each measurement: a new sequence, the prompt (BOS and N - 1 deterministic random regular
// tokens, the same for both) appended one stride of tokens at a time (the chunks the scheduler
// would cut one whole append into; the last with logits 'last'), each append awaited; the wall
// time from the first append to the last one's end is the prefill time, and the time elapsed at
// every --mark tokens (default 4096) is kept in the JSON (cumulativeMs), so one long run shows how
// the time grows along it. After it the tokens each layer holds (layout()) and the KV pages in
// use (model.stats()) are read, then the sequence is disposed of. One warm-up of each policy on 2 strides of tokens
// first; then --reps rounds per size, the two policies alternating (the order rotating between
// rounds); medians are reported.
//
// Reported per N: strided ms and tokens/s, full ms and tokens/s, full / strided, and the growth
// per 4x tokens from the previous size ((ms(N) / ms(N')) ^ (ln 4 / ln(N / N')): ~4 is linear,
// ~16 quadratic). Writes the JSON (every run, the machine, the command; rewritten after each size
// with complete: false until the last, so an interrupted run keeps what it measured), prints a
// markdown table and with --readme replaces the block between the `prefill-table` markers there.
import { copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { flag, intList, opt, positiveInt, threadsOption } from './args.mjs';
import { ensureCheckpoint, median, now, parameterCount, randomTokens } from './store-fixture.mjs';
import { writeReadmeBlock } from './readme-block.mjs';

threadsOption(); // before the addon loads (below)
const require = createRequire(import.meta.url);
const { loadModel, buildInfo, policies } = require('../../dist/cjs/index.js');
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const benchDir = join(root, 'bench', 'tmp');

const sizes = [...new Set(intList('--sizes', '8192,32768,131072'))].sort((a, b) => a - b);
const fullMax = positiveInt('--full-max', 32768);
const cascadeOptions = {
  sinks: Number(opt('--sinks', 64)),
  cascades: positiveInt('--cascades', 4),
  window: positiveInt('--window', 1024),
  stride: positiveInt('--stride', 1024),
};
if (!Number.isInteger(cascadeOptions.sinks) || cascadeOptions.sinks < 0) throw new Error(`--sinks: expected an integer >= 0 but received ${opt('--sinks')}`);
const reps = positiveInt('--reps', 1);
const mark = positiveInt('--mark', 4096);
const modelArg = opt('--model', undefined);
const jsonPath = resolve(opt('--json', join(root, 'bench/strided-prefill.json')));
const readmeArg = opt('--readme', undefined);
const readmePath = flag('--readme') ? resolve(readmeArg && !readmeArg.startsWith('--') ? readmeArg : join(root, 'README.md')) : null;
const PAGE = 16;
const roundUp = (n, k) => Math.ceil(n / k) * k;

/** The checkpoint, or a variant of it whose context is `context` (config.json edited, the rest linked). */
function checkpointWithContext(dir, context) {
  if (context <= readConfig(dir).max_position_embeddings) return dir;
  const variant = join(benchDir, `${basename(dir)}-ctx${context}`);
  mkdirSync(variant, { recursive: true });
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const f = e.name;
    if (f === 'config.json' || !e.isFile()) continue;
    if (existsSync(join(variant, f))) continue;
    // Hard links (loadModel refuses symbolic links that resolve outside the folder); a copy across file systems.
    try {
      linkSync(join(dir, f), join(variant, f));
    } catch {
      copyFileSync(join(dir, f), join(variant, f));
    }
  }
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  config.max_position_embeddings = context;
  writeFileSync(join(variant, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  return variant;
}

function readConfig(dir) {
  return JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
}

/** One prefill: a new sequence, the prompt appended at once, timed; what it holds after. */
async function prefill(model, policy, tokens, piece) {
  const seq = model.sequence({ policy });
  try {
    const cumulativeMs = [];
    const t0 = now();
    for (let a = 0; a < tokens.length; a += piece) {
      const end = Math.min(tokens.length, a + piece);
      await seq.append(tokens.subarray(a, end), { logits: end === tokens.length ? 'last' : 'none' });
      if (Math.floor(end / mark) > Math.floor(a / mark) || end === tokens.length) cumulativeMs.push([end, +((now() - t0) * 1000).toFixed(1)]);
    }
    const ms = (now() - t0) * 1000;
    const held = seq.layout().layers.map((l) => l.source.length);
    const stats = model.stats();
    return { ms, heldMax: Math.max(...held), kvTokensPerLayer: (stats.usedPages / model.config.numLayers) * stats.pageSize, cumulativeMs };
  } finally {
    seq.dispose();
  }
}

async function measure() {
  const t0 = now();
  const load0 = loadavg()[0];
  const base = modelArg ? resolve(modelArg) : await ensureCheckpoint(benchDir);
  const baseConfig = readConfig(base);
  const fullSizes = sizes.filter((n) => n <= fullMax);
  const context = Math.max(baseConfig.max_position_embeddings, ...fullSizes);
  const dir = checkpointWithContext(base, context);
  const cascading = policies.cascading(cascadeOptions);
  const capacity = cascading.sinks + cascading.cascades * cascading.window;
  // The pool: the longest full-attention prompt, or what one strided step claims (the cache, a
  // chunk and the scratch rows of its insertion), whichever is more, and a few pages to spare.
  const claim = capacity + cascading.stride + Math.min(capacity, cascading.stride * cascading.cascades);
  const kvCacheTokens = roundUp(Math.max(claim, ...fullSizes), PAGE) + 4 * PAGE;
  const model = await loadModel(dir, { device: 'cpu', prefillChunk: cascading.stride, kvCacheTokens, pageSize: PAGE });
  const vocab = model.config.vocabSize;
  const bos = model.tokenizer.bosTokenId;
  const prompt = (n) => {
    const t = randomTokens(n, 7, vocab);
    if (bos !== null) t[0] = bos;
    return t;
  };
  const full = policies.full();
  const rows = [];
  try {
    // Warm-up: two strides of tokens each, not counted.
    const warm = prompt(2 * cascading.stride);
    await prefill(model, cascading, warm, cascading.stride);
    await prefill(model, full, warm, cascading.stride);
    let prev = null;
    for (const n of sizes) {
      const tokens = prompt(n);
      const runFull = n <= fullMax;
      const runs = { strided: [], full: [] };
      for (let r = 0; r < reps; r++) {
        const order = runFull ? (r % 2 === 0 ? ['strided', 'full'] : ['full', 'strided']) : ['strided'];
        for (const k of order) {
          const res = await prefill(model, k === 'strided' ? cascading : full, tokens, cascading.stride);
          runs[k].push(res);
          console.error(`${n} tokens, ${k}: ${res.ms.toFixed(0)} ms (${((n * 1000) / res.ms).toFixed(0)} tokens/s; a layer holds ${res.heldMax} tokens, KV ${res.kvTokensPerLayer} token slots a layer)`);
        }
      }
      const summary = (rs) => {
        const ms = median(rs.map((x) => x.ms));
        return { ms: +ms.toFixed(1), tokensPerSecond: +((n * 1000) / ms).toFixed(1), heldMax: rs[0].heldMax, kvTokensPerLayer: rs[0].kvTokensPerLayer, runsMs: rs.map((x) => +x.ms.toFixed(1)), cumulativeMs: rs.map((x) => x.cumulativeMs) };
      };
      const row = { tokens: n, strided: summary(runs.strided) };
      row.full = runFull ? summary(runs.full) : { skipped: `above --full-max ${fullMax} tokens: full attention's prefill grows quadratically and at this size takes far longer than this CPU run allows` };
      row.fullOverStrided = runFull ? +(row.full.ms / row.strided.ms).toFixed(3) : null;
      if (prev) {
        const e = Math.log(4) / Math.log(n / prev.tokens);
        row.growthPer4x = {
          from: prev.tokens,
          strided: +((row.strided.ms / prev.strided.ms) ** e).toFixed(2),
          full: runFull && prev.full.ms ? +((row.full.ms / prev.full.ms) ** e).toFixed(2) : null,
        };
      } else row.growthPer4x = null;
      rows.push(row);
      console.log(JSON.stringify(row));
      prev = row;
      save(makeReport(rows, false));
    }
  } finally {
    model.dispose();
  }
  return makeReport(rows, true);

  function makeReport(results, complete) {
  const cfg = baseConfig;
  const c = {
    hiddenSize: cfg.hidden_size,
    numLayers: cfg.num_hidden_layers,
    numHeads: cfg.num_attention_heads,
    numKvHeads: cfg.num_key_value_heads ?? cfg.num_attention_heads,
    headDim: cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads,
    intermediateSize: cfg.intermediate_size,
    vocabSize: cfg.vocab_size,
    tieWordEmbeddings: !!cfg.tie_word_embeddings,
  };
  const bi = buildInfo();
  return {
    benchmark: 'strided-prefill',
    command: ['npm run bench:prefill', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
    date: new Date().toISOString(),
    device: 'cpu',
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, threads: bi.cpuThreads, backend: bi.backend, loadAverageAtStart: +load0.toFixed(2) },
    model: {
      checkpoint: modelArg ? base : 'bench/tmp/store-llama-100m (scripts/bench/store-fixture.mjs; random f32 weights)',
      dir,
      parameters: parameterCount(c),
      layers: c.numLayers,
      hidden: c.hiddenSize,
      heads: c.numHeads,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      maxPositionEmbeddings: context,
      kvCacheTokens,
      prefillChunk: cascading.stride,
    },
    cascading: { ...cascading, capacity },
    fullMax,
    reps,
    sizes,
    seconds: +(now() - t0).toFixed(1),
    complete,
    results,
  };
  }
}

function save(rep) {
  mkdirSync(dirname(jsonPath), { recursive: true });
  writeFileSync(jsonPath, `${JSON.stringify(rep, null, 2)}\n`);
}

const renderFrom = opt('--render', undefined);
const report = renderFrom ? JSON.parse(readFileSync(resolve(renderFrom), 'utf8')) : await measure();
if (!renderFrom) save(report);
const table = prefillTable(report);
console.log(`\n${table}\n`);
if (readmePath) updateReadme(readmePath, table);
console.log(JSON.stringify({ json: jsonPath, readme: readmePath, seconds: report.seconds }));

/** Markdown: per N, strided and full prefill times, their ratio and the growth per 4x tokens. */
function prefillTable(rep) {
  const c = rep.cascading;
  const m = rep.model;
  const k = (n) => (n % 1024 === 0 ? `${n / 1024}K` : String(n));
  const lines = [];
  lines.push(
    `Prefill of N tokens on the ${(m.parameters / 1e6).toFixed(m.parameters < 1e7 ? 1 : 0)}M-parameter ${m.checkpoint.startsWith('bench/tmp/store-llama-100m') ? 'fixture' : `model ${m.checkpoint}`} (${m.layers} layers, ${m.heads} query / ${m.kvHeads} KV heads${m.checkpoint.startsWith('bench/tmp/store-llama-100m') ? '; random f32 weights' : ''}; ${rep.device}, ${rep.machine.cpus} cores, load average ${rep.machine.loadAverageAtStart} at start): ` +
      `Cascading, strided (sinks ${c.sinks}, ${c.cascades} cascades of ${c.window}: ${c.capacity} tokens a layer and KV head; stride ${c.stride}), against full attention in the same ${m.prefillChunk}-token chunks. ` +
      `Median of ${rep.reps} run${rep.reps > 1 ? 's' : ''}; growth: time per 4x tokens from the size before (linear ~4x, quadratic ~16x).`,
  );
  lines.push('');
  lines.push('| N | strided ms | strided tokens/s | growth per 4x | full ms | full tokens/s | growth per 4x | full / strided |');
  lines.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rep.results) {
    const g = r.growthPer4x;
    const f = r.full.skipped ? null : r.full;
    lines.push(
      `| ${k(r.tokens)} | ${r.strided.ms.toFixed(0)} | ${r.strided.tokensPerSecond.toFixed(0)} | ${g ? `${g.strided.toFixed(2)}x` : ''} | ${f ? f.ms.toFixed(0) : `not run (above ${k(rep.fullMax)})`} | ${f ? f.tokensPerSecond.toFixed(0) : ''} | ${g?.full ? `${g.full.toFixed(2)}x` : ''} | ${r.fullOverStrided === null ? '' : `${r.fullOverStrided.toFixed(2)}x`} |`,
    );
  }
  lines.push('');
  const missing = rep.sizes.filter((n) => !rep.results.some((r) => r.tokens === n));
  if (rep.complete === false) lines.push(`Interrupted: ${missing.map(k).join(', ')} not measured.`, '');
  lines.push(`Produced by \`${rep.command}\` (${rep.date.slice(0, 10)}, ${rep.seconds} s); JSON in bench/strided-prefill.json.`);
  return lines.join('\n');
}

function updateReadme(path, table) {
  writeReadmeBlock(path, 'prefill-table', table);
}
