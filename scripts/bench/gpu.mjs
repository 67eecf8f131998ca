#!/usr/bin/env node
// GPU throughput of kvfocus on a model of Llama-2-7B's shapes (hidden 4096, 32 layers, 32
// heads of 128, intermediate 11008, vocab 32000) with random f16 weights:
//   - decode tokens/s at batch 1, and as a fraction of the memory-bandwidth roofline: the bytes
//     a decode step must read (every weight once, plus the KV cache so far) over the measured
//     device-to-device copy bandwidth (bytes read + written per second);
//   - prefill tokens/s at 512, 2K and 4K prompt tokens (one prompt from an empty cache);
//   - batch-16 decode throughput (16 concurrent generate() calls batched by the scheduler);
//   - the same prefill (and batch-1 decode) through HF transformers (sdpa, f16), from
//     scripts/bench/gpu-transformers.py, when python3 has torch and transformers.
//
//   node scripts/bench/gpu.mjs [--json out.json] [--layers 32] [--prefill 512,2048,4096]
//       [--decode 128] [--decode-prompt 128] [--batch 16] [--reps 3] [--prefill-chunk N]
//       [--dir path] [--no-transformers] [--quick]
//
// Exits with status 2 and a message when no CUDA device is usable (this is a GPU-only bench).
//
// The checkpoint (a 13.5 GB safetensors file at 32 layers) is stream-written with random f16
// values, in chunks, never whole in memory, to bench/tmp/llama2-7b-shape-L<layers> and reused
// while present. `--layers N` writes and measures N layers instead (for a small disk or a short
// lease); the report then adds `extrapolatedTo32Layers`: decode time per token scaled by the
// bytes-per-token ratio (the achieved bandwidth held fixed), prefill time by the layer ratio (the
// output head is one row per prompt, so the layers are nearly all of it). Measured numbers are
// always reported as measured.
//
// Prompts are fed in one forward step each by default (prefillChunk = the longest prompt), like
// one transformers forward; `--prefill-chunk 512` measures the engine's default chunking. The
// checkpoint has no end-of-sequence token, so every generation runs to --decode tokens.
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { flag, opt, positiveInt, intList } from './args.mjs';

const require = createRequire(import.meta.url);
const { loadModel, buildInfo, Tensor } = require('../../dist/cjs/index.js');

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const quick = flag('--quick');
const LLAMA2_7B = { hidden: 4096, layers: 32, heads: 32, kvHeads: 32, headDim: 128, intermediate: 11008, vocab: 32000, maxPositions: 4096 };
const layers = positiveInt('--layers', quick ? 4 : LLAMA2_7B.layers);
const prefillSizes = intList('--prefill', quick ? '512' : '512,2048,4096');
const decodeTokens = positiveInt('--decode', quick ? 32 : 128);
const decodePrompt = positiveInt('--decode-prompt', 128);
const batchSize = positiveInt('--batch', 16);
const reps = positiveInt('--reps', quick ? 1 : 3);
const maxPrefill = Math.max(...prefillSizes);
const prefillChunk = positiveInt('--prefill-chunk', maxPrefill);
const dims = { ...LLAMA2_7B, layers };
const dir = resolve(opt('--dir', join(repoRoot, 'bench', 'tmp', `llama2-7b-shape-L${layers}`)));
if (maxPrefill > dims.maxPositions || decodePrompt + decodeTokens > dims.maxPositions) {
  throw new Error(`prompts and generations must fit ${dims.maxPositions} positions`);
}
if (decodeTokens < 2) throw new Error('--decode: at least 2 tokens (rates count the tokens after the first)');

const info = buildInfo();
if (info.devices.length === 0) {
  console.error(`gpu.mjs measures the CUDA backend, and this process has no usable CUDA device: ${info.cudaUnavailableReason ?? 'none found'} (binary ${info.binary}).`);
  console.error('Run it on a GPU machine (see ../shared/device/README.md); for the CPU, see scripts/bench/cpu-llamacpp.mjs.');
  process.exit(2);
}

const now = () => Number(process.hrtime.bigint()) / 1e9;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const log = (...m) => console.error(...m);

// ---------------------------------------------------------------------------------------------
// Checkpoint: config.json, tokenizer files, one stream-written f16 model.safetensors
// ---------------------------------------------------------------------------------------------

/** HF tensor names and shapes of a Llama checkpoint with these dims, in name order. */
function tensorList(d) {
  const list = [['model.embed_tokens.weight', [d.vocab, d.hidden]], ['model.norm.weight', [d.hidden]], ['lm_head.weight', [d.vocab, d.hidden]]];
  for (let l = 0; l < d.layers; l++) {
    const p = `model.layers.${l}.`;
    list.push(
      [`${p}input_layernorm.weight`, [d.hidden]],
      [`${p}self_attn.q_proj.weight`, [d.heads * d.headDim, d.hidden]],
      [`${p}self_attn.k_proj.weight`, [d.kvHeads * d.headDim, d.hidden]],
      [`${p}self_attn.v_proj.weight`, [d.kvHeads * d.headDim, d.hidden]],
      [`${p}self_attn.o_proj.weight`, [d.hidden, d.heads * d.headDim]],
      [`${p}post_attention_layernorm.weight`, [d.hidden]],
      [`${p}mlp.gate_proj.weight`, [d.intermediate, d.hidden]],
      [`${p}mlp.up_proj.weight`, [d.intermediate, d.hidden]],
      [`${p}mlp.down_proj.weight`, [d.hidden, d.intermediate]],
    );
  }
  return list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * A pool of random f16 bit patterns: random sign and mantissa, exponent 2^-7 or 2^-6, so
 * |w| is uniform-ish in [0.0078, 0.031) (std ~0.02, like an initialized Llama). Norm weights
 * get 1 + the same noise. Tensors are cut from the pool at random offsets: the values only
 * need to be realistic numbers (never zeros), not independent across tensors.
 */
function randomF16Pool(count) {
  const bits = new Uint16Array(count);
  randomFillSync(bits);
  for (let i = 0; i < count; i++) {
    const r = bits[i];
    bits[i] = (r & 0x83ff) | ((8 + ((r >>> 10) & 1)) << 10);
  }
  return bits;
}

/** writeSync until every byte is written (a regular file takes all at once, but nothing promises it). */
function writeAll(fd, buffer, offset = 0, length = buffer.length - offset) {
  while (length > 0) {
    const n = writeSync(fd, buffer, offset, length);
    offset += n;
    length -= n;
  }
}

async function writeCheckpoint(target, d) {
  const stamp = JSON.stringify({ version: 1, dims: d });
  const stampFile = join(target, 'bench-stamp.json');
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return false;
  const staging = `${target}.partial`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging, { recursive: true });

  // Tokenizer: the fixture generator's llama2-style BPE, filled out to the 32000-token vocab.
  const { makeFixtures } = await import('../fixtures/make-fixtures.mjs');
  const tokDir = join(tmpdir(), `kvfocus-gpu-bench-tok-${process.pid}`);
  const fixture = makeFixtures(tokDir, ['llama-gqa'], { sizes: { vocabSize: d.vocab } })['llama-gqa'];
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(fixture, f), join(staging, f));
  const tokConfig = JSON.parse(readFileSync(join(fixture, 'config.json'), 'utf8'));
  rmSync(tokDir, { recursive: true, force: true });

  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: tokConfig.bos_token_id,
    eos_token_id: null, // every generation runs to maxTokens
    head_dim: d.headDim,
    hidden_act: 'silu',
    hidden_size: d.hidden,
    initializer_range: 0.02,
    intermediate_size: d.intermediate,
    max_position_embeddings: d.maxPositions,
    mlp_bias: false,
    num_attention_heads: d.heads,
    num_hidden_layers: d.layers,
    num_key_value_heads: d.kvHeads,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    rope_theta: 10000.0,
    tie_word_embeddings: false,
    torch_dtype: 'float16',
    use_cache: true,
    vocab_size: d.vocab,
  };
  writeFileSync(join(staging, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeFileSync(join(staging, 'generation_config.json'), `${JSON.stringify({ bos_token_id: config.bos_token_id }, null, 2)}\n`);

  // safetensors: u64 header length, JSON header (space-padded to 8 bytes), then the data.
  const tensors = tensorList(d);
  const header = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, shape] of tensors) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2;
    header[name] = { dtype: 'F16', shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let headerText = JSON.stringify(header);
  headerText += ' '.repeat((8 - (Buffer.byteLength(headerText) % 8)) % 8);
  const headerBytes = Buffer.from(headerText, 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(headerBytes.length));

  const POOL = 32 << 20; // f16 values; tensors are written in slices of up to half of it
  const pool = randomF16Pool(POOL);
  const poolBytes = Buffer.from(pool.buffer);
  const one = Buffer.alloc(d.hidden * 2);
  const fd = openSync(join(staging, 'model.safetensors'), 'w');
  const t0 = now();
  try {
    writeAll(fd, length);
    writeAll(fd, headerBytes);
    let seed = 12345;
    for (const [, shape] of tensors) {
      let left = shape.reduce((a, b) => a * b, 1);
      if (shape.length === 1) {
        // RMSNorm weights: 1 + noise in [0, 0.25) (f16 1.0 is 0x3c00, plus 8 random mantissa bits).
        for (let i = 0; i < left; i++) one.writeUInt16LE(0x3c00 + (pool[i] & 0x00ff), i * 2);
        writeAll(fd, one, 0, left * 2);
        continue;
      }
      while (left > 0) {
        const n = Math.min(left, POOL >> 1);
        seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
        const start = seed % (POOL - n + 1);
        writeAll(fd, poolBytes, start * 2, n * 2);
        left -= n;
      }
    }
  } finally {
    closeSync(fd);
  }
  log(`wrote ${((8 + headerBytes.length + offset) / 1e9).toFixed(2)} GB in ${(now() - t0).toFixed(1)} s`);
  writeFileSync(join(staging, 'bench-stamp.json'), stamp);
  rmSync(target, { recursive: true, force: true });
  renameSync(staging, target);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Costs: bytes a decode step reads, FLOPs of a prefill
// ---------------------------------------------------------------------------------------------

function weightBytes(d, bytesPerWeight = 2) {
  const perLayer = (d.heads * d.headDim * d.hidden) * 2 + (d.kvHeads * d.headDim * d.hidden) * 2 + 3 * d.hidden * d.intermediate;
  return {
    // Read by every decode step: all layer matrices, the output head, one embedding row, the
    // norms (kept in f32 on the device).
    perStep: (d.layers * perLayer + d.vocab * d.hidden + d.hidden) * bytesPerWeight + (2 * d.layers + 1) * d.hidden * 4,
    perLayer: perLayer * bytesPerWeight + 2 * d.hidden * 4,
  };
}

/** KV bytes attention reads for one token at context length `ctx` (keys and values, all layers). */
function kvBytes(d, ctx, kvBytesPerValue = 2) {
  return ctx * d.layers * 2 * d.kvHeads * d.headDim * kvBytesPerValue;
}

function prefillFlops(d, n) {
  const perTokenMatmul = 2 * (d.layers * ((d.heads * d.headDim * d.hidden) * 2 + (d.kvHeads * d.headDim * d.hidden) * 2 + 3 * d.hidden * d.intermediate));
  const attention = d.layers * d.heads * 2 * 2 * d.headDim * ((n * (n + 1)) / 2); // QK^T and PV, causal
  return perTokenMatmul * n + attention + 2 * d.vocab * d.hidden; // + one row of the output head
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

function tokens(n, seed) {
  const out = new Int32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = 3 + (s % (dims.vocab - 3)); // no special tokens
  }
  return out;
}

async function sync() {
  const t = Tensor.zeros([1], { device: 'cuda' });
  await t.toArray();
  t.dispose();
}

/** Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB buffer. */
async function copyBandwidth() {
  const bytes = 1 << 30;
  const host = randomFillSync(new Uint8Array(bytes));
  const x = Tensor.from(host, { device: 'cuda' });
  const samples = [];
  for (let r = 0; r < 2 + 10; r++) {
    await sync();
    const t0 = now();
    const copies = [];
    for (let i = 0; i < 4; i++) copies.push(x.to('cuda'));
    await sync();
    const s = (now() - t0) / 4;
    for (const c of copies) c.dispose();
    if (r >= 2) samples.push(s); // the first two are warm-up
  }
  x.dispose();
  const s = median(samples);
  return { bufferBytes: bytes, secondsPerCopy: s, bytesPerSecond: (2 * bytes) / s };
}

/**
 * Waits (at most 2 s) until every KV page is back in the pool: a released sequence's pages
 * return once the native step that held it is destroyed, which can be just after its promise
 * resolved, so a run started at once could find the previous run's pages still taken.
 */
async function settle(model, totalPages) {
  for (let i = 0; i < 200 && model.freeKvPages < totalPages; i++) await new Promise((r) => setTimeout(r, 10));
}

/** Runs generate() on `count` prompts at once; per-token arrival times for each. */
async function generateConcurrently(model, count, seedBase) {
  const streams = [];
  for (let i = 0; i < count; i++) {
    streams.push(model.generate(tokens(decodePrompt, seedBase + i), { maxTokens: decodeTokens, temperature: 0 }));
  }
  const start = now();
  const times = await Promise.all(
    streams.map(async (stream) => {
      const t = [];
      for await (const { token } of stream) if (token >= 0) t.push(now());
      const result = await stream.result;
      if (result.completionTokens !== decodeTokens) throw new Error(`a generation made ${result.completionTokens} tokens, expected ${decodeTokens} (${result.finishReason})`);
      return t;
    }),
  );
  const end = now();
  // Steady state: from the moment every stream has its first token to the moment the first one
  // finishes, all `count` are decoding in every step.
  const from = Math.max(...times.map((t) => t[0]));
  const to = Math.min(...times.map((t) => t[t.length - 1]));
  const inWindow = times.reduce((n, t) => n + t.filter((x) => x > from && x <= to).length, 0);
  return {
    tokensPerSecond: to > from ? inWindow / (to - from) : NaN,
    endToEndTokensPerSecond: (count * decodeTokens) / (end - start),
    perStreamTokensPerSecond: median(times.map((t) => (t.length - 1) / (t[t.length - 1] - t[0]))),
  };
}

async function runKvfocus() {
  const t0 = now();
  const kvCacheTokens = Math.max(maxPrefill, batchSize * (decodePrompt + decodeTokens + 16)) + 64;
  const model = await loadModel(dir, { device: 'cuda', prefillChunk, kvCacheTokens });
  const loadSeconds = now() - t0;
  log(`loaded in ${loadSeconds.toFixed(1)} s (kvCacheTokens ${kvCacheTokens}, prefillChunk ${prefillChunk})`);
  const totalPages = model.freeKvPages;
  try {
    const bandwidth = await copyBandwidth();
    log(`device-to-device copy: ${(bandwidth.bytesPerSecond / 1e9).toFixed(0)} GB/s`);
    const weights = weightBytes(dims);

    // Batch-1 decode.
    const runs = [];
    for (let r = 0; r < reps + 1; r++) {
      await settle(model, totalPages);
      const run = await generateConcurrently(model, 1, 100 + r);
      if (r > 0) runs.push(run.perStreamTokensPerSecond);
    }
    const decodeRate = median(runs);
    const meanCtx = decodePrompt + (decodeTokens - 1) / 2;
    const bytesPerToken = weights.perStep + kvBytes(dims, meanCtx);
    const rooflineRate = bandwidth.bytesPerSecond / bytesPerToken;
    const decode = {
      promptTokens: decodePrompt, tokens: decodeTokens, tokensPerSecondRuns: runs, tokensPerSecond: decodeRate,
      msPerToken: 1000 / decodeRate, bytesPerToken, rooflineTokensPerSecond: rooflineRate, fractionOfRoofline: decodeRate / rooflineRate,
      achievedBytesPerSecond: decodeRate * bytesPerToken,
    };
    log(`decode b=1: ${decodeRate.toFixed(1)} tok/s, ${(100 * decode.fractionOfRoofline).toFixed(0)}% of the ${rooflineRate.toFixed(0)} tok/s roofline`);

    // Prefill.
    const prefill = [];
    for (const n of prefillSizes) {
      const prompt = tokens(n, n);
      const samples = [];
      for (let r = 0; r < reps + 1; r++) {
        await settle(model, totalPages);
        const s = now();
        await model.logits(prompt);
        if (r > 0) samples.push(now() - s);
      }
      const sec = median(samples);
      prefill.push({ tokens: n, seconds: samples, tokensPerSecond: n / sec, tflops: prefillFlops(dims, n) / sec / 1e12 });
      log(`prefill ${n}: ${(n / sec).toFixed(0)} tok/s`);
    }

    // Batch-N decode.
    const batched = [];
    for (let r = 0; r < reps + 1; r++) {
      await settle(model, totalPages);
      const run = await generateConcurrently(model, batchSize, 1000 * (r + 1));
      if (r > 0) batched.push(run);
    }
    const batchRate = median(batched.map((b) => b.tokensPerSecond));
    const batchRoofline = (batchSize * bandwidth.bytesPerSecond) / (weights.perStep + batchSize * kvBytes(dims, meanCtx));
    const batch = {
      sequences: batchSize, promptTokens: decodePrompt, tokens: decodeTokens,
      tokensPerSecond: batchRate,
      endToEndTokensPerSecond: median(batched.map((b) => b.endToEndTokensPerSecond)),
      perSequenceTokensPerSecond: median(batched.map((b) => b.perStreamTokensPerSecond)),
      rooflineTokensPerSecond: batchRoofline, fractionOfRoofline: batchRate / batchRoofline,
      runs: batched,
    };
    log(`decode b=${batchSize}: ${batchRate.toFixed(0)} tok/s`);
    return { loadSeconds, kvCacheTokens, prefillChunk, kvDtype: 'bf16', bandwidth, decode, prefill, batch };
  } finally {
    model.dispose();
  }
}

function runTransformers() {
  if (flag('--no-transformers')) return { skipped: '--no-transformers' };
  const probe = spawnSync('python3', ['-c', 'import torch, transformers; assert torch.cuda.is_available()'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    return { skipped: `python3 with torch (CUDA) and transformers is not available: ${probe.error?.message ?? (probe.stderr || '').trim().split('\n').pop()}` };
  }
  const out = join(tmpdir(), `kvfocus-gpu-transformers-${process.pid}.json`);
  const script = join(repoRoot, 'scripts', 'bench', 'gpu-transformers.py');
  const r = spawnSync('python3', [script, '--dir', dir, '--prefill', prefillSizes.join(','), '--decode', String(decodeTokens),
    '--decode-prompt', String(decodePrompt), '--reps', String(reps), '--json', out], { encoding: 'utf8', stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0 || !existsSync(out)) return { failed: `gpu-transformers.py exited with ${r.status ?? r.signal}` };
  const result = JSON.parse(readFileSync(out, 'utf8'));
  rmSync(out, { force: true });
  return result;
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

mkdirSync(dirname(dir), { recursive: true });
const t0 = now();
const wrote = await writeCheckpoint(dir, dims);
log(wrote ? `checkpoint written to ${dir}` : `reusing ${dir}`);
const checkpointSeconds = now() - t0;
const kvfocus = await runKvfocus();
const out = opt('--json', undefined);
const header = () => ({
  bench: 'gpu',
  date: new Date().toISOString(),
  host: { cpu: cpus()[0]?.model, gpu: info.devices.map((d) => d.name), binary: info.binary },
  model: { shape: 'Llama-2-7B', dims, weights: 'f16 (random)', weightBytesPerDecodeStep: weightBytes(dims).perStep, dir, checkpointSeconds },
  settings: { prefill: prefillSizes, decodeTokens, decodePrompt, batch: batchSize, reps, prefillChunk },
});
// kvfocus's numbers first: a run stopped while transformers measures (a time box) keeps them.
if (out) writeFileSync(out, JSON.stringify({ ...header(), kvfocus, transformers: { pending: true } }, null, 2) + '\n');
const transformers = runTransformers();

const comparison = {};
if (transformers.prefill) {
  for (const p of kvfocus.prefill) {
    const other = transformers.prefill.find((q) => q.tokens === p.tokens);
    if (other) comparison[`prefill${p.tokens}`] = p.tokensPerSecond / other.tokensPerSecond;
  }
  if (transformers.decode) comparison.decode = kvfocus.decode.tokensPerSecond / transformers.decode.tokensPerSecond;
}

let extrapolatedTo32Layers;
if (layers < LLAMA2_7B.layers) {
  const full = LLAMA2_7B;
  const meanCtx = decodePrompt + (decodeTokens - 1) / 2;
  const bytesNow = kvfocus.decode.bytesPerToken;
  const bytesFull = weightBytes(full).perStep + kvBytes(full, meanCtx);
  const layerRatio = full.layers / layers;
  extrapolatedTo32Layers = {
    method: 'decode: time per token x (bytes per token at 32 layers / at N); prefill: time x (32 / N)',
    decodeTokensPerSecond: kvfocus.decode.tokensPerSecond * (bytesNow / bytesFull),
    prefill: kvfocus.prefill.map((p) => ({ tokens: p.tokens, tokensPerSecond: p.tokensPerSecond / layerRatio })),
    transformersPrefill: transformers.prefill?.map((p) => ({ tokens: p.tokens, tokensPerSecond: p.tokensPerSecond / layerRatio })),
  };
}

const report = {
  ...header(),
  kvfocus,
  transformers,
  ratiosKvfocusOverTransformers: comparison,
  ...(extrapolatedTo32Layers ? { extrapolatedTo32Layers } : {}),
};
if (out) writeFileSync(out, JSON.stringify(report, null, 2) + '\n');

const row = (label, a, b, ratio) =>
  console.log(`${label.padEnd(24)}${(a === undefined ? '-' : a.toFixed(1)).padStart(10)}${(b === undefined ? '-' : b.toFixed(1)).padStart(14)}${(ratio === undefined ? '' : ratio.toFixed(2)).padStart(8)}`);
console.log(`kvfocus on ${info.devices[0].name}, Llama-2-7B shapes, ${layers} layers, f16 weights (median of ${reps})`);
console.log(`copy bandwidth ${(kvfocus.bandwidth.bytesPerSecond / 1e9).toFixed(0)} GB/s; decode b=1 at ${(100 * kvfocus.decode.fractionOfRoofline).toFixed(0)}% of roofline (${kvfocus.decode.rooflineTokensPerSecond.toFixed(0)} tok/s)`);
console.log(`${'tok/s'.padEnd(24)}${'kvfocus'.padStart(10)}${'transformers'.padStart(14)}${'ratio'.padStart(8)}`);
row('decode b=1', kvfocus.decode.tokensPerSecond, transformers.decode?.tokensPerSecond, comparison.decode);
for (const p of kvfocus.prefill) {
  row(`prefill ${p.tokens}`, p.tokensPerSecond, transformers.prefill?.find((q) => q.tokens === p.tokens)?.tokensPerSecond, comparison[`prefill${p.tokens}`]);
}
row(`decode b=${batchSize} (total)`, kvfocus.batch.tokensPerSecond, undefined, undefined);
if (transformers.skipped || transformers.failed) console.log(`transformers: ${transformers.skipped ?? transformers.failed}`);
if (out) console.log(`JSON: ${out}`);
