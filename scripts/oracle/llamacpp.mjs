#!/usr/bin/env node
// llama.cpp as an independent oracle: logits for every position of a token list, computed by
// llama.cpp (through node-llama-cpp, CPU) from a GGUF file.
//
//   import { llamaCppLogits } from './scripts/oracle/llamacpp.mjs';
//   const { logits, continuation } = await llamaCppLogits('model.gguf', tokens, { continuation: 32 });
//
//   node scripts/oracle/llamacpp.mjs model.gguf 1,2,3 [--continuation 8] [--top 5]
//
// Settings chosen for reproducible numerics rather than speed: one thread (bitwise
// deterministic, and llama.cpp's default thread count is pathologically slow on small shared
// VMs), an F32 KV cache (the default F16 cache rounds keys and values), no flash attention
// (which accumulates differently), CPU only.
//
// node-llama-cpp is an optional dev dependency (CI installs it); without it every call fails
// with the install command.

import { resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const INSTALL_HINT =
  'npm run oracle:install   (npm install --prefix .oracle --no-save --omit=optional node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1)';

/** @type {Promise<{ nlc: any, llama: any }> | null} */
let llamaPromise = null;

// node-llama-cpp lives in its own prefix, .oracle/node_modules, because installing it with
// --omit=optional into the project's node_modules would prune the project's own optional
// packages (vitest's native bundler binding). A normal install is used when present.
function resolveNodeLlamaCpp() {
  const oracleRoot = fileURLToPath(new URL('../../.oracle/', import.meta.url));
  for (const base of [oracleRoot, fileURLToPath(import.meta.url)]) {
    try {
      return pathToFileURL(createRequire(base).resolve('node-llama-cpp')).href;
    } catch {
      // try the next place
    }
  }
  return 'node-llama-cpp'; // let import() fail with its own message
}

/** Loads node-llama-cpp and its prebuilt CPU binary once per process. */
function getLlamaOnce() {
  llamaPromise ??= (async () => {
    let nlc;
    try {
      nlc = await import(resolveNodeLlamaCpp());
    } catch (error) {
      throw new Error(
        `The llama.cpp oracle needs node-llama-cpp, which is not installed (${error.code ?? error.message}).\n` +
          `Install it without touching package.json:\n  ${INSTALL_HINT}`,
        { cause: error },
      );
    }
    const llama = await nlc.getLlama({
      gpu: false,
      build: 'never', // use the prebuilt binary; never try to compile (or download) llama.cpp
      logLevel: nlc.LlamaLogLevel.error,
      progressLogs: false,
    });
    return { nlc, llama };
  })();
  // Let a later call retry (e.g. after installing) instead of caching the failure forever.
  llamaPromise.catch(() => { llamaPromise = null; });
  return llamaPromise;
}

/** Loads a GGUF, runs `use(model)`, and frees the model whatever happens. */
async function withModel(ggufPath, use) {
  const { llama } = await getLlamaOnce();
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 });
  try {
    return await use(model);
  } finally {
    await model.dispose();
  }
}

/** Sorted (token -> logit) Map from node-llama-cpp as a dense Float32Array indexed by token. */
function denseLogits(logitsByToken, vocabSize) {
  if (logitsByToken.size !== vocabSize) {
    throw new Error(`llama.cpp returned ${logitsByToken.size} logits, expected ${vocabSize}`);
  }
  const dense = new Float32Array(vocabSize);
  for (const [token, logit] of logitsByToken) dense[token] = logit;
  return dense;
}

/** Index of the largest value; ties go to the lowest index. */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Evaluates `tokens` from position 0 and returns the next-token logits at every position.
 * With `continuation: n`, then greedily extends the sequence by n tokens (argmax of the
 * latest logits, ties to the lowest id), evaluating each one, so that
 *   logits[i] are the logits after [...tokens, ...continuation][0..i], for every i,
 *   continuation[k] = argmax(logits[tokens.length - 1 + k]).
 * @param {string} ggufPath
 * @param {number[]} tokens  prompt token ids (no BOS is added)
 * @param {{ continuation?: number }} [options]
 * @returns {Promise<{ logits: Float32Array[], continuation: number[] }>}
 */
export async function llamaCppLogits(ggufPath, tokens, { continuation = 0 } = {}) {
  if (!Array.isArray(tokens) || tokens.length === 0 || !tokens.every(Number.isInteger)) {
    throw new TypeError('Expected a non-empty array of integer token ids for tokens');
  }
  if (!Number.isInteger(continuation) || continuation < 0) {
    throw new TypeError(`Expected a non-negative integer for continuation but received ${continuation}`);
  }
  return withModel(ggufPath, async (model) => {
    const vocabSize = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
    const context = await model.createContext({
      contextSize: tokens.length + continuation,
      sequences: 1,
      threads: 1,
      flashAttention: false,
      experimentalKvCacheKeyType: 'F32',
      experimentalKvCacheValueType: 'F32',
    });
    try {
      const sequence = context.getSequence();
      const withLogits = (token) => [token, { generateNext: { logits: true } }];

      // The whole prompt in one call: llama.cpp decodes it as a batch (like a prefill).
      const results = await sequence.controlledEvaluate(tokens.map(withLogits));
      const logits = tokens.map((_, i) => {
        const next = results[i]?.next.logits;
        if (!next) throw new Error(`llama.cpp returned no logits for prompt position ${i}`);
        return denseLogits(next, vocabSize);
      });

      // Then one token at a time (like decoding).
      const generated = [];
      for (let k = 0; k < continuation; k++) {
        const token = argmax(logits[logits.length - 1]);
        generated.push(token);
        const [result] = await sequence.controlledEvaluate([withLogits(token)]);
        if (!result?.next.logits) throw new Error(`llama.cpp returned no logits for continuation step ${k}`);
        logits.push(denseLogits(result.next.logits, vocabSize));
      }
      return { logits, continuation: generated };
    } finally {
      await context.dispose();
    }
  });
}

/**
 * llama.cpp's tokenization of `text` with the GGUF's own vocabulary and merges.
 * No BOS is added; special-token text is parsed as special tokens only if `specialTokens`.
 */
export async function llamaCppTokenize(ggufPath, text, { specialTokens = false } = {}) {
  return withModel(ggufPath, async (model) => model.tokenize(text, specialTokens));
}

/** Frees the llama.cpp backend (optional; the process can also just exit). */
export async function disposeLlamaCpp() {
  if (!llamaPromise) return;
  const pending = llamaPromise;
  llamaPromise = null;
  const { llama } = await pending;
  await llama.dispose();
}

// CLI: prints { tokens, continuation, logits } as JSON (logits: top-k per position with --top,
// else full rows).
async function main(argv) {
  const usage = 'usage: node scripts/oracle/llamacpp.mjs MODEL.gguf TOKEN,TOKEN,... [--continuation N] [--top K]';
  const positional = [];
  const options = { continuation: 0, top: 0 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--continuation' || arg === '--top') options[arg.slice(2)] = Number(argv[++i]);
    else if (arg === '--help' || arg === '-h') { console.log(usage); return; }
    else positional.push(arg);
  }
  const [ggufPath, tokenList] = positional;
  if (!ggufPath || !tokenList) throw new Error(usage);
  const tokens = tokenList.split(',').map(Number);
  const { logits, continuation } = await llamaCppLogits(ggufPath, tokens, { continuation: options.continuation });
  const rows = logits.map((row) => {
    if (!options.top) return Array.from(row);
    return [...row.keys()].sort((a, b) => row[b] - row[a]).slice(0, options.top).map((t) => [t, row[t]]);
  });
  console.log(JSON.stringify({ tokens, continuation, logits: rows }));
  await disposeLlamaCpp();
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((error) => {
    console.error(error.message);
    process.exitCode = 1;
  });
}
