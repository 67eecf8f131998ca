// The ~100M-parameter checkpoint and the workload of the store benchmarks (scripts/bench/store.mjs,
// scripts/bench/store-remote.mjs): a Llama-shaped model with random f32 weights (the sizes of
// scripts/bench/cpu-llamacpp.mjs, max_position_embeddings 16384 so that 40 documents of 200
// tokens fit), written once to bench/tmp/store-llama-100m (git-ignored) and reused by both.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const SIZES = {
  hiddenSize: 768,
  numLayers: 12,
  numHeads: 12,
  numKvHeads: 4,
  headDim: 64,
  intermediateSize: 2048,
  vocabSize: 16384,
  maxPositionEmbeddings: 16384,
};
export const FIXTURE = 'llama-gqa'; // Llama architecture, untied output head, llama2-style tokenizer
const CHECKPOINT_VERSION = 1; // bump when the way the checkpoint is written changes

/** The checkpoint's folder under `benchDir`, written first when missing or stale (~400 MB). */
export async function ensureCheckpoint(benchDir) {
  const dir = join(benchDir, 'store-llama-100m');
  const stamp = JSON.stringify({ version: CHECKPOINT_VERSION, fixture: FIXTURE, sizes: SIZES });
  const stampFile = join(dir, 'bench-stamp.json');
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return dir;
  console.error(`writing the benchmark checkpoint to ${dir} (once; ~400 MB) ...`);
  const { makeFixtures } = await import('../fixtures/make-fixtures.mjs');
  const staging = `${dir}.partial`;
  rmSync(staging, { recursive: true, force: true });
  const written = makeFixtures(staging, [FIXTURE], { sizes: SIZES })[FIXTURE];
  rmSync(join(written, 'model.gguf'), { force: true }); // llama.cpp's copy: not used here
  writeFileSync(join(written, 'bench-stamp.json'), stamp);
  rmSync(dir, { recursive: true, force: true });
  renameSync(written, dir);
  rmSync(staging, { recursive: true, force: true });
  return dir;
}

export function parameterCount(c) {
  const h = c.hiddenSize;
  const layer = h * c.numHeads * c.headDim * 2 + h * c.numKvHeads * c.headDim * 2 + 3 * h * c.intermediateSize + 2 * h;
  return c.numLayers * layer + (c.tieWordEmbeddings ? 1 : 2) * c.vocabSize * h + h;
}

/** Deterministic token ids in [3, limit): regular tokens, never the specials (0, 1, 2). */
export function randomTokens(n, seed, limit) {
  const out = new Int32Array(n);
  let s = (seed * 2654435761) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = 3 + (s % (limit - 3));
  }
  return out;
}

export const concat = (...parts) => {
  const out = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
export const now = () => Number(process.hrtime.bigint()) / 1e9;

/**
 * A warm-up of each function, then `reps` rounds of all of them with the order rotating (a b,
 * b a, ... for two), so that drift in a shared machine's load hits each alike. Returns
 * key -> results (without the warm-ups).
 */
export async function rotatingRuns(fns, reps) {
  const keys = Object.keys(fns);
  for (const k of keys) await fns[k]();
  const runs = Object.fromEntries(keys.map((k) => [k, []]));
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < keys.length; i++) {
      const k = keys[(i + r) % keys.length];
      runs[k].push(await fns[k]());
    }
  }
  return runs;
}
