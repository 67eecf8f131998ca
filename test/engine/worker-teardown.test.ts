// Ending a worker_thread while it has native work queued (worker.terminate(), process.exit() in
// the worker) tears down only that worker: its queued jobs and completions are cancelled or
// drained, and the process, the main thread's own model, and the shared device queue go on.
// Each scenario runs in a child process, so a crash fails the test instead of killing vitest.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(__dirname, '..', '..');

// Workers run one of two jobs: streaming a generation from the embedded model, or a loop of
// matmul + toArray. They post 'busy' once work is in flight; the parent then ends them after a
// random delay (terminate), or they end themselves with work still queued (exit).
const WORKER = `
const k = require(process.env.KVFOCUS_ROOT);
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  if (workerData.job === 'generate') {
    const model = await k.loadDefaultModel({ device: 'cpu' });
    let n = 0;
    for await (const _ of model.generate('Doc 1. Ada Lind lives in Oslo. Question: where does Ada Lind live?', { maxTokens: 500, stopTokens: [] })) {
      if (++n === 2) parentPort.postMessage('busy');
      if (n === 3 && workerData.end === 'exit') process.exit(0);
    }
  } else {
    const a = k.Tensor.from(new Float32Array(128 * 128).fill(0.5), { shape: [128, 128] });
    for (let n = 1; ; n++) {
      const y = k.ops.matmul(a, a);
      const read = y.toArray();
      if (n === 3) parentPort.postMessage('busy');
      if (n === 5 && workerData.end === 'exit') process.exit(0); // the read is still queued
      await read;
      y.dispose();
    }
  }
})();`;

// The parent: a reference generation on the main thread, then rounds of workers ended
// mid-work while the main thread keeps generating; every main-thread generation must match
// the reference exactly (greedy decoding) and the process must exit by itself.
const PARENT = `
const k = require(process.env.KVFOCUS_ROOT);
const { Worker } = require('node:worker_threads');
const PROMPT = 'Doc 1. Ada Lind lives in Oslo. Question: where does Ada Lind live?';
const ROUNDS = Number(process.env.ROUNDS);
(async () => {
  const model = await k.loadDefaultModel({ device: 'cpu' });
  const gen = async () => (await model.generate(PROMPT, { maxTokens: 16, stopTokens: [] }).result).text;
  const reference = await gen();
  let stop = false, mainRuns = 0, mismatches = 0;
  const main = (async () => { while (!stop) { if ((await gen()) !== reference) mismatches++; mainRuns++; } })();
  const ended = { terminate: 0, exit: 0 };
  for (let i = 0; i < ROUNDS; i++) {
    const job = i % 2 === 0 ? 'generate' : 'matmul';
    const end = i % 4 < 2 ? 'terminate' : 'exit';
    const w = new Worker(process.env.WORKER, { eval: true, workerData: { job, end } });
    await new Promise((resolve, reject) => {
      w.on('error', reject);
      w.on('exit', resolve);
      w.on('message', () => { if (end === 'terminate') setTimeout(() => w.terminate(), Math.random() * 15); });
    });
    ended[end]++;
  }
  stop = true;
  await main;
  const after = await gen();
  model.dispose();
  console.log(JSON.stringify({ ended, mainRuns, mismatches, after: after === reference }));
})().catch((e) => { console.error(e); process.exit(1); });`;

describe('worker_threads teardown', () => {
  it('terminating or exiting workers mid-generation and mid-op leaves the process and the main model working', () => {
    const rounds = 24;
    const r = spawnSync(process.execPath, ['-e', PARENT], {
      env: { ...process.env, KVFOCUS_ROOT: root, WORKER, ROUNDS: String(rounds) },
      encoding: 'utf8',
      timeout: 240_000,
    });
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ended: { terminate: number; exit: number }; mainRuns: number; mismatches: number; after: boolean };
    expect(out.ended).toEqual({ terminate: rounds / 2, exit: rounds / 2 });
    expect(out.mainRuns).toBeGreaterThan(0);
    expect(out.mismatches).toBe(0);
    expect(out.after).toBe(true);
  }, 300_000);
});
