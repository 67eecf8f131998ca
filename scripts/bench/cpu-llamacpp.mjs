#!/usr/bin/env node
// kvfocus next to llama.cpp on the CPU, on one ~100M-parameter Llama-shaped checkpoint with
// random f32 weights: prefill tokens/s (a prompt evaluated from an empty cache) and decode
// tokens/s (greedy, one token per forward step). Same weights (HF safetensors for kvfocus, the
// same values as f32 GGUF for llama.cpp), same thread count, f32 KV cache on both, no flash
// attention, prompts fed in batches of 512 tokens on both.
//
//   node scripts/bench/cpu-llamacpp.mjs [--threads N] [--json out.json] [--prompts 256,512]
//       [--decode 64] [--decode-prompt 128] [--reps 3] [--rounds 1] [--quick]
//
// Each engine runs in its own child process, one after the other (kvfocus reads its thread
// count from KVFOCUS_THREADS when the addon loads; the two never compete for the cores). Every
// measurement is a warm-up run, then the median of --reps runs; with --rounds R the pair of
// children runs R times alternately (kvfocus, llama.cpp, kvfocus, ...) and each number is the
// median over all rounds' runs, so that drift in a shared machine's load hits both engines.
// Decode tokens/s counts the tokens after the first, per second between the first and the last
// token, for both engines. Prefill is model.logits() for kvfocus (which also computes the last
// position's logits: 0.02% of the work) and evaluateWithoutGeneratingNewTokens() for llama.cpp.
//
// The checkpoint is written once to bench/tmp/cpu-llama-100m (git-ignored) by
// scripts/fixtures/make-fixtures.mjs with a size override, and reused while its sizes match.
// Its config declares no end-of-sequence token, so every decode run makes exactly --decode
// tokens (llama.cpp is told to keep going past its EOS the same way).
//
// Needs a built kvfocus (build/Release, dist/cjs) and the llama.cpp oracle
// (node scripts/ensure-oracle.mjs). Ratios are kvfocus / llama.cpp: above 1, kvfocus is faster.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { flag, intList, opt, positiveInt } from './args.mjs';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const benchDir = join(repoRoot, 'bench', 'tmp');

// ~100M parameters: 12 x 6.3M in the layers + 2 x 12.6M in the embedding and the output head.
const SIZES = {
  hiddenSize: 768,
  numLayers: 12,
  numHeads: 12,
  numKvHeads: 4,
  headDim: 64,
  intermediateSize: 2048,
  vocabSize: 16384,
  maxPositionEmbeddings: 2048,
};
const FIXTURE = 'llama-gqa'; // Llama architecture, untied output head, llama2-style tokenizer
const CHECKPOINT_VERSION = 1; // bump when the way the checkpoint is written changes

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

const quick = flag('--quick');
const threads = positiveInt('--threads', 2);
const prompts = intList('--prompts', quick ? '256' : '256,512');
const decodeTokens = positiveInt('--decode', quick ? 16 : 64);
const decodePrompt = positiveInt('--decode-prompt', 128);
const reps = positiveInt('--reps', quick ? 1 : 3);
const rounds = positiveInt('--rounds', 1);
const batch = 512; // kvfocus prefillChunk and llama.cpp batchSize: prompts go in 512-token steps
const engine = opt('--engine', undefined); // set in the child processes
if (decodeTokens < 2) throw new Error('--decode: at least 2 tokens (the rate counts tokens after the first)');
if (Math.max(...prompts, decodePrompt + decodeTokens) > SIZES.maxPositionEmbeddings) {
  throw new Error(`prompts and decode must fit ${SIZES.maxPositionEmbeddings} positions`);
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/** Deterministic prompt token ids in [0, 16000): regular (filler) tokens, never the specials. */
function promptTokens(n, seed) {
  const out = [];
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(s % 16000);
  }
  return out;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => Number(process.hrtime.bigint()) / 1e9;

/** Warm-up, then `reps` runs of fn() (which returns seconds, or an object with .seconds). */
async function measure(fn) {
  await fn();
  const runs = [];
  for (let r = 0; r < reps; r++) runs.push(await fn());
  return runs;
}

/** Decode rate from token arrival times: tokens after the first per second after the first. */
function decodeRate(times) {
  return (times.length - 1) / (times[times.length - 1] - times[0]);
}

// ---------------------------------------------------------------------------------------------
// Engines (child processes)
// ---------------------------------------------------------------------------------------------

/** Prefill seconds of every prompt size: `timeOne(tokens)` runs one prefill and returns its seconds. */
async function prefillRuns(timeOne) {
  const prefill = [];
  for (const n of prompts) {
    const tokens = promptTokens(n, n);
    const runs = await measure(() => timeOne(tokens));
    prefill.push({ tokens: n, seconds: runs, tokensPerSecond: n / median(runs) });
  }
  return prefill;
}

/** The decode record of one engine: its runs' token rates (tokens after the first per second). */
function decodeSummary(runs, generated, extra = {}) {
  const rates = runs.map((r) => r.rate);
  return { promptTokens: decodePrompt, tokens: decodeTokens, tokensPerSecondRuns: rates, tokensPerSecond: median(rates), ...extra, generated };
}

async function runKvfocus(dir) {
  const require = createRequire(import.meta.url);
  const { loadModel, buildInfo } = require('../../dist/cjs/index.js');
  const info = buildInfo();
  if (info.cpuThreads !== threads) throw new Error(`kvfocus runs ${info.cpuThreads} threads, expected ${threads} (KVFOCUS_THREADS is read when the addon loads)`);
  const t0 = now();
  const model = await loadModel(dir, { device: 'cpu', kvDtype: 'f32', prefillChunk: batch, kvCacheTokens: SIZES.maxPositionEmbeddings });
  const loadSeconds = now() - t0;
  try {
    const prefill = await prefillRuns(async (tokens) => {
      const s = now();
      await model.logits(tokens);
      return now() - s;
    });
    const prompt = promptTokens(decodePrompt, 7);
    let generated = [];
    const runs = await measure(async () => {
      const times = [];
      const tokens = [];
      const stream = model.generate(prompt, { maxTokens: decodeTokens, temperature: 0 });
      for await (const { token } of stream) {
        if (token < 0) continue;
        times.push(now());
        tokens.push(token);
      }
      const result = await stream.result;
      if (result.completionTokens !== decodeTokens) throw new Error(`kvfocus generated ${result.completionTokens} tokens, expected ${decodeTokens} (${result.finishReason})`);
      generated = tokens;
      return { rate: decodeRate(times), engineRate: result.timings.decodeTokensPerSecond };
    });
    return {
      engine: 'kvfocus',
      binary: info.binary,
      threads: info.cpuThreads,
      loadSeconds,
      prefill,
      decode: decodeSummary(runs, generated, { engineReportedTokensPerSecond: median(runs.map((r) => r.engineRate)) }),
    };
  } finally {
    model.dispose();
  }
}

/** node-llama-cpp from .oracle/ (see scripts/oracle/llamacpp.mjs), else a normal install. */
async function importNodeLlamaCpp() {
  const oracleRoot = join(repoRoot, '.oracle') + '/';
  for (const base of [oracleRoot, fileURLToPath(import.meta.url)]) {
    try {
      return await import(pathToFileURL(createRequire(base).resolve('node-llama-cpp')).href);
    } catch {
      // try the next place
    }
  }
  throw new Error('node-llama-cpp is not installed: run `node scripts/ensure-oracle.mjs`');
}

async function runLlamaCpp(dir) {
  const nlc = await importNodeLlamaCpp();
  const llama = await nlc.getLlama({
    gpu: false,
    build: 'never',
    maxThreads: threads,
    logLevel: nlc.LlamaLogLevel.error,
    progressLogs: false,
  });
  const t0 = now();
  const model = await llama.loadModel({ modelPath: join(dir, 'model.gguf'), gpuLayers: 0 });
  const loadSeconds = now() - t0;
  const context = await model.createContext({
    contextSize: SIZES.maxPositionEmbeddings,
    sequences: 1,
    batchSize: batch,
    threads: { ideal: threads, min: threads },
    flashAttention: false,
    experimentalKvCacheKeyType: 'F32',
    experimentalKvCacheValueType: 'F32',
  });
  try {
    const sequence = context.getSequence();
    const prefill = await prefillRuns(async (tokens) => {
      await sequence.clearHistory();
      const s = now();
      await sequence.evaluateWithoutGeneratingNewTokens(tokens);
      return now() - s;
    });
    const prompt = promptTokens(decodePrompt, 7);
    let generated = [];
    const runs = await measure(async () => {
      await sequence.clearHistory();
      const times = [];
      const tokens = [];
      // Greedy (temperature 0); past EOS too, as the kvfocus checkpoint has none.
      for await (const token of sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
        times.push(now());
        tokens.push(token);
        if (tokens.length === decodeTokens) break;
      }
      generated = tokens;
      return { rate: decodeRate(times) };
    });
    return {
      engine: 'llama.cpp',
      version: nlc.getModuleVersion ? await nlc.getModuleVersion() : undefined,
      llamaCppRelease: llama.llamaCppRelease,
      threads: context.currentThreads,
      loadSeconds,
      prefill,
      decode: decodeSummary(runs, generated),
    };
  } finally {
    await context.dispose();
    await model.dispose();
    await llama.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint
// ---------------------------------------------------------------------------------------------

async function ensureCheckpoint() {
  const dir = join(benchDir, 'cpu-llama-100m');
  const stamp = JSON.stringify({ version: CHECKPOINT_VERSION, fixture: FIXTURE, sizes: SIZES });
  const stampFile = join(dir, 'bench-stamp.json');
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return dir;
  console.error(`writing the benchmark checkpoint to ${dir} (once; ~800 MB) ...`);
  const { makeFixtures } = await import('../fixtures/make-fixtures.mjs');
  const staging = `${dir}.partial`;
  rmSync(staging, { recursive: true, force: true });
  const written = makeFixtures(staging, [FIXTURE], { sizes: SIZES })[FIXTURE];
  // No end-of-sequence token: every decode run makes exactly the tokens asked for.
  const config = JSON.parse(readFileSync(join(written, 'config.json'), 'utf8'));
  config.eos_token_id = null;
  writeFileSync(join(written, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  const generation = JSON.parse(readFileSync(join(written, 'generation_config.json'), 'utf8'));
  delete generation.eos_token_id;
  writeFileSync(join(written, 'generation_config.json'), `${JSON.stringify(generation, null, 2)}\n`);
  writeFileSync(join(written, 'bench-stamp.json'), stamp);
  rmSync(dir, { recursive: true, force: true });
  renameSync(written, dir);
  rmSync(staging, { recursive: true, force: true });
  return dir;
}

function parameterCount() {
  const { hiddenSize: h, numLayers, numHeads, numKvHeads, headDim, intermediateSize: i, vocabSize: v } = SIZES;
  const layer = h * numHeads * headDim * 2 + h * numKvHeads * headDim * 2 + 3 * h * i + 2 * h;
  return numLayers * layer + 2 * v * h + h;
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

const RESULT_MARK = 'BENCH_RESULT ';

/** One engine's result over all rounds: every run pooled, medians over the pool. */
function mergeRounds(list) {
  const first = list[0];
  if (list.length === 1) return first;
  const prefill = first.prefill.map((p, i) => {
    const seconds = list.flatMap((r) => r.prefill[i].seconds);
    return { tokens: p.tokens, seconds, tokensPerSecond: p.tokens / median(seconds) };
  });
  const runs = list.flatMap((r) => r.decode.tokensPerSecondRuns);
  const decode = { ...first.decode, tokensPerSecondRuns: runs, tokensPerSecond: median(runs) };
  if (first.decode.engineReportedTokensPerSecond !== undefined) {
    decode.engineReportedTokensPerSecond = median(list.map((r) => r.decode.engineReportedTokensPerSecond));
  }
  return { ...first, rounds: list.length, prefill, decode };
}

if (engine) {
  // Child: one engine, result on stdout after a marker (anything else goes to stderr).
  const dir = opt('--dir', undefined);
  const result = engine === 'kvfocus' ? await runKvfocus(dir) : engine === 'llamacpp' ? await runLlamaCpp(dir) : null;
  if (!result) throw new Error(`--engine: expected kvfocus or llamacpp but received ${engine}`);
  process.stdout.write(`${RESULT_MARK}${JSON.stringify(result)}\n`);
} else {
  mkdirSync(benchDir, { recursive: true });
  const dir = await ensureCheckpoint();
  const forward = ['--threads', String(threads), '--prompts', prompts.join(','), '--decode', String(decodeTokens),
    '--decode-prompt', String(decodePrompt), '--reps', String(reps), '--dir', dir];
  // The 1-minute load average before and after each child: other work on a small shared
  // machine slows both engines, llama.cpp's spinning thread barriers the most.
  const loadAverageBefore = loadavg()[0];
  const perRound = { kvfocus: [], llamacpp: [] };
  for (let round = 0; round < rounds; round++) for (const name of ['kvfocus', 'llamacpp']) {
    console.error(`${name}: ${threads} threads${rounds > 1 ? `, round ${round + 1}/${rounds}` : ''} ...`);
    const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--engine', name, ...forward], {
      env: { ...process.env, KVFOCUS_THREADS: String(threads) },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 64 << 20,
    });
    const line = (child.stdout ?? '').split('\n').find((l) => l.startsWith(RESULT_MARK));
    if (child.status !== 0 || !line) {
      process.stderr.write(child.stdout ?? '');
      throw new Error(`${name} benchmark failed (exit ${child.status ?? child.signal})`);
    }
    perRound[name].push({ ...JSON.parse(line.slice(RESULT_MARK.length)), loadAverageAfter: loadavg()[0] });
  }
  const kv = mergeRounds(perRound.kvfocus);
  const lc = mergeRounds(perRound.llamacpp);
  const ratios = {};
  for (const p of kv.prefill) {
    const other = lc.prefill.find((q) => q.tokens === p.tokens);
    ratios[`prefill${p.tokens}`] = p.tokensPerSecond / other.tokensPerSecond;
  }
  ratios.decode = kv.decode.tokensPerSecond / lc.decode.tokensPerSecond;
  // Same f32 weights and greedy decoding: the two should produce the same tokens (a check that
  // both ran the same model, not a precision claim: a near-tie can flip one token).
  let agree = 0;
  while (agree < decodeTokens && kv.decode.generated[agree] === lc.decode.generated[agree]) agree++;
  const report = {
    bench: 'cpu-llamacpp',
    date: new Date().toISOString(),
    host: { cpu: cpus()[0]?.model, logicalCores: cpus().length, loadAverageBefore,
      loadAverageAfter: Object.fromEntries(Object.entries(perRound).map(([k, v]) => [k, v.map((r) => r.loadAverageAfter)])) },
    model: { dir, fixture: FIXTURE, sizes: SIZES, parameters: parameterCount(), weights: 'f32', kvCache: 'f32' },
    settings: { threads, prompts, decodeTokens, decodePrompt, reps, rounds, batch, flashAttention: false },
    kvfocus: kv,
    llamacpp: lc,
    greedyAgreement: { leadingTokensEqual: agree, of: decodeTokens },
    ratios,
  };
  const out = opt('--json', undefined);
  if (out) writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
  const f = (x) => x.toFixed(1).padStart(9);
  console.log(`kvfocus vs llama.cpp, CPU f32, ${(report.model.parameters / 1e6).toFixed(1)}M params, ${threads} threads (median of ${reps * rounds} runs)`);
  console.log(`${'measure'.padEnd(22)}${'kvfocus'.padStart(9)}${'llama.cpp'.padStart(11)}${'ratio'.padStart(8)}`);
  for (const p of kv.prefill) {
    const other = lc.prefill.find((q) => q.tokens === p.tokens);
    console.log(`${`prefill ${p.tokens} tok/s`.padEnd(22)}${f(p.tokensPerSecond)}${f(other.tokensPerSecond).padStart(11)}${ratios[`prefill${p.tokens}`].toFixed(2).padStart(8)}`);
  }
  console.log(`${`decode ${decodeTokens} tok/s`.padEnd(22)}${f(kv.decode.tokensPerSecond)}${f(lc.decode.tokensPerSecond).padStart(11)}${ratios.decode.toFixed(2).padStart(8)}`);
  console.log(`greedy tokens equal: ${agree}/${decodeTokens}; 1-min load average ${loadAverageBefore.toFixed(1)} before, ` +
    `${[...perRound.kvfocus, ...perRound.llamacpp].map((r) => r.loadAverageAfter.toFixed(1)).join('/')} after the runs${out ? `; JSON: ${out}` : ''}`);
}
