#!/usr/bin/env node
// kvfocus against HF transformers on the same checkpoints. scripts/oracle/hf-transformers.py
// builds small random Llama and Qwen2 models from a config (no download), saves them with
// save_pretrained (f32, and the same weights rounded to bf16), and dumps transformers' greedy
// tokens and logits; this script adds the tokenizer files kvfocus needs, loads each checkpoint
// with kvfocus on 'cuda' (when usable) and 'cpu', and compares:
//   f32  (f32 weights, f32 KV):    logits at every position of prompt + transformers' greedy
//        tokens against transformers f32 (TF32 off): max |error|, ||error|| / ||ref||;
//   bf16 (bf16 weights, the device's default KV dtype): the same against transformers' bf16
//        compute, and against f32 compute on the same bf16 weights (the exact function of the
//        stored weights: what kvfocus's own rounding is measured against);
//   greedy: kvfocus generate() (temperature 0) tokens against transformers' greedy tokens
//        over --steps steps (leading tokens equal, and equal anywhere).
// Tolerances (relative L2 of the logits): f32 1e-3 (f32 arithmetic lands far under it; TF32
// would land near 3e-4); bf16 against f32 compute 2e-2; f32 greedy must agree on every step.
// The exit status is 1 when one of those fails.
//
//   node scripts/oracle/hf-compare.mjs [--json out.json] [--devices cuda,cpu] [--arch llama,qwen2]
//       [--steps 32] [--prompt-tokens 16] [--keep DIR]
//
// Needs python3 with torch and transformers (the GPU machine has both; see
// ../shared/device/README.md) and a built kvfocus (dist/cjs).
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { makeFixtures } from '../fixtures/make-fixtures.mjs';

const require = createRequire(import.meta.url);
const { loadModel, buildInfo } = require('../../dist/cjs/index.js');
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const info = buildInfo();
const hasCuda = info.devices.length > 0;
const devices = String(opt('--devices', hasCuda ? 'cuda,cpu' : 'cpu')).split(',');
for (const d of devices) {
  if (d !== 'cuda' && d !== 'cpu') throw new Error(`--devices: expected cuda and/or cpu but received ${d}`);
  if (d === 'cuda' && !hasCuda) {
    console.error(`hf-compare: --devices names cuda, but kvfocus sees no CUDA device (${info.cudaUnavailableReason}). Run it on a GPU machine.`);
    process.exit(2);
  }
}
const archs = String(opt('--arch', 'llama,qwen2')).split(',');
const steps = Number(opt('--steps', 32));
const promptTokens = Number(opt('--prompt-tokens', 16));
const TOLERANCE = { f32RelL2: 1e-3, bf16RelL2VsF32Compute: 2e-2 };
// The fixture whose tokenizer flavour matches each architecture (ids are fed directly; the
// tokenizer files only have to exist and cover the vocabulary).
const TOKENIZER_FIXTURE = { llama: 'llama-gqa', qwen2: 'qwen2' };

const probe = spawnSync('python3', ['-c', 'import torch, transformers'], { encoding: 'utf8' });
if (probe.error || probe.status !== 0) {
  console.error(`hf-compare needs python3 with torch and transformers (the GPU machine has them): ${probe.error?.message ?? (probe.stderr || '').trim().split('\n').pop()}`);
  process.exit(2);
}

const keep = opt('--keep', undefined);
const work = keep ? resolve(keep) : mkdtempSync(join(tmpdir(), 'kvfocus-hf-'));
mkdirSync(work, { recursive: true });

// ---------------------------------------------------------------------------------------------
// Oracle: transformers
// ---------------------------------------------------------------------------------------------

const oracleJson = join(work, 'oracle.json');
const py = spawnSync('python3', [join(repoRoot, 'scripts', 'oracle', 'hf-transformers.py'), '--out', work, '--arch', archs.join(','),
  '--steps', String(steps), '--prompt-tokens', String(promptTokens), '--device', hasCuda ? 'cuda' : 'cpu', '--json', oracleJson],
{ stdio: ['ignore', 'inherit', 'inherit'] });
if (py.status !== 0) throw new Error(`hf-transformers.py failed (exit ${py.status ?? py.signal})`);
const oracle = JSON.parse(readFileSync(oracleJson, 'utf8'));

/** Tokenizer files from the fixture generator; no end-of-sequence id, so generations run to maxTokens. */
function completeCheckpoint(dir, arch, vocabSize) {
  const tokRoot = join(work, `tokenizer-${arch}`);
  const fixture = makeFixtures(tokRoot, [TOKENIZER_FIXTURE[arch]], { sizes: { vocabSize } })[TOKENIZER_FIXTURE[arch]];
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(fixture, f), join(dir, f));
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  config.eos_token_id = null;
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  try {
    const generation = JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8'));
    delete generation.eos_token_id;
    writeFileSync(join(dir, 'generation_config.json'), `${JSON.stringify(generation, null, 2)}\n`);
  } catch {
    // save_pretrained wrote none: nothing to patch
  }
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

/** max |a - b| and ||a - b|| / ||b|| over rows x vocab, plus positions whose argmax differs. */
function logitError(got, refRows) {
  const vocab = refRows[0].length;
  if (got.length !== refRows.length * vocab) throw new Error(`kvfocus returned ${got.length} logits, expected ${refRows.length} x ${vocab}`);
  let maxAbs = 0;
  let diff2 = 0;
  let ref2 = 0;
  let argmaxDiffers = 0;
  let finite = true;
  refRows.forEach((row, r) => {
    let bestGot = 0;
    let bestRef = 0;
    for (let v = 0; v < vocab; v++) {
      const g = got[r * vocab + v];
      if (!Number.isFinite(g)) finite = false;
      const d = g - row[v];
      maxAbs = Math.max(maxAbs, Math.abs(d));
      diff2 += d * d;
      ref2 += row[v] * row[v];
      if (g > got[r * vocab + bestGot]) bestGot = v;
      if (row[v] > row[bestRef]) bestRef = v;
    }
    if (bestGot !== bestRef) argmaxDiffers++;
  });
  return { maxAbs: finite ? maxAbs : NaN, relL2: finite ? Math.sqrt(diff2 / ref2) : NaN, positions: refRows.length, argmaxDiffers };
}

function agreement(got, ref) {
  let leading = 0;
  while (leading < ref.length && got[leading] === ref[leading]) leading++;
  return { leading, equal: ref.filter((t, i) => got[i] === t).length, of: ref.length };
}

async function compare(dir, device, kvDtype, prompt, greedyRef, refs) {
  const model = await loadModel(dir, { device, ...(kvDtype ? { kvDtype } : {}) });
  try {
    const logits = await model.logits([...prompt, ...greedyRef], { all: true });
    const errors = Object.fromEntries(Object.entries(refs).map(([name, rows]) => [name, logitError(logits, rows)]));
    const stream = model.generate(prompt, { maxTokens: greedyRef.length, temperature: 0 });
    const result = await stream.result;
    return { kvDtype: kvDtype ?? (device === 'cpu' ? 'f32' : 'bf16'), errors, greedy: { tokens: result.tokens, ...agreement(result.tokens, greedyRef) } };
  } finally {
    model.dispose();
  }
}

const results = [];
const failures = [];
for (const arch of archs) {
  const entry = oracle.models[arch];
  const vocabSize = entry.vocabSize;
  for (const dir of Object.values(entry.dirs)) completeCheckpoint(dir, arch, vocabSize);
  for (const device of devices) {
    // One failing configuration (an unsupported dtype on a device, say) is reported, not fatal.
    const attempt = (fn) => fn().catch((error) => ({ error: `${error.name}: ${error.message}` }));
    const f32 = await attempt(() => compare(entry.dirs.f32, device, 'f32', oracle.prompt, entry.f32.greedy, { transformersF32: entry.f32.logits }));
    const bf16 = await attempt(() => compare(entry.dirs.bf16, device, undefined, oracle.prompt, entry.bf16.greedy, {
      transformersBf16: entry.bf16.logits,
      transformersF32ComputeOnBf16Weights: entry.bf16.logitsF32Compute,
    }));
    const checks = {
      f32Logits: !f32.error && f32.errors.transformersF32.relL2 < TOLERANCE.f32RelL2,
      f32Greedy: !f32.error && f32.greedy.leading === steps,
      bf16Logits: !bf16.error && bf16.errors.transformersF32ComputeOnBf16Weights.relL2 < TOLERANCE.bf16RelL2VsF32Compute,
    };
    for (const [name, ok] of Object.entries(checks)) if (!ok) failures.push(`${arch} on ${device}: ${name}`);
    results.push({ arch, device, f32, bf16, checks });
  }
}

const report = {
  oracle: 'hf-compare',
  date: new Date().toISOString(),
  kvfocus: { binary: info.binary, gpu: info.devices.map((d) => d.name) },
  transformers: { versions: oracle.versions, device: oracle.device },
  prompt: oracle.prompt,
  steps,
  tolerance: TOLERANCE,
  results,
  failures,
};
const out = opt('--json', undefined);
if (out) writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
if (!keep) rmSync(work, { recursive: true, force: true });

const e = (x) => x.toExponential(2).padStart(10);
console.log(`kvfocus vs transformers ${oracle.versions.transformers} (${oracle.device}); logits over ${promptTokens} + ${steps} positions`);
console.log(`${'model'.padEnd(8)}${'device'.padEnd(7)}${'f32 max|d|'.padStart(11)}${'f32 rel'.padStart(10)}${'bf16 max|d|'.padStart(12)}${'vs f32c rel'.padStart(12)}${'greedy f32'.padStart(11)}${'greedy bf16'.padStart(12)}`);
for (const r of results) {
  if (r.f32.error || r.bf16.error) {
    console.log(`${r.arch.padEnd(8)}${r.device.padEnd(7)}${[r.f32.error, r.bf16.error].filter(Boolean).join('; ')}`);
    continue;
  }
  const bf = r.bf16.errors;
  console.log(`${r.arch.padEnd(8)}${r.device.padEnd(7)}${e(r.f32.errors.transformersF32.maxAbs)} ${e(r.f32.errors.transformersF32.relL2)}${e(bf.transformersBf16.maxAbs).padStart(12)}${e(bf.transformersF32ComputeOnBf16Weights.relL2).padStart(12)}` +
    `${`${r.f32.greedy.leading}/${steps}`.padStart(11)}${`${r.bf16.greedy.leading}/${steps}`.padStart(12)}`);
}
console.log(failures.length ? `FAILED: ${failures.join('; ')}` : 'all checks passed');
if (out) console.log(`JSON: ${out}`);
process.exitCode = failures.length ? 1 : 0;
