#!/usr/bin/env node
// Every GPU check in one command, for a GPU machine that is lent for minutes at a time (a start
// costs a minute or more, so everything that needs the GPU runs in one call):
//   build      the carried addon loads; CUDA compiled in; the devices it sees
//   test-gpu   test/gpu (every CUDA kernel against its CPU twin), KVFOCUS_TEST_GPU=1
//   memcheck   the same tests under compute-sanitizer memcheck (skipped when it is not there)
//   bench-ops  scripts/bench/ops.mjs on cuda: rerotate GB/s vs a copy, matmul GFLOP/s; then
//              scripts/bench/rerotate.mjs on cuda: the fused re-rotation (every layer's moved
//              pages in one launch) vs a copy, per-page launches and whole-cache re-rotation
//   bench-7b   scripts/bench/gpu.mjs: Llama-2-7B shapes (8 layers, extrapolated to 32), decode
//              vs the bandwidth roofline, prefill vs HF transformers (sdpa)
//   hf-oracle  scripts/oracle/hf-compare.mjs: logits and greedy tokens vs HF transformers
// Each step runs in its own process group under a time box; the boxes add up to --budget
// (default 450 s), so the whole stays under 8 minutes. Without a CUDA device every GPU step is
// skipped with its reason, which makes this a dry run that any machine can do.
//
// Writes ONE summary JSON (--out, else $OUT/gpu-check.json when $OUT is set, else
// bench/tmp/gpu-check.json) and, beside it, gpu-check.log (every step's output) and the raw
// JSON of the benchmarks and the oracle. scripts/gpu-report.mjs turns the summary into the
// README's GPU section. Exit status 1 when a step failed, else 0.
//
//   node scripts/gpu-check.mjs [--out path.json] [--budget 450] [--only build,test-gpu,...] [--dry-run]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync, appendFileSync } from 'node:fs';
import { cpus, hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : fallback;
};

const outFile = resolve(opt('--out', process.env.OUT ? join(process.env.OUT, 'gpu-check.json') : join(repoRoot, 'bench', 'tmp', 'gpu-check.json')));
const outDir = dirname(outFile);
const logFile = join(outDir, 'gpu-check.log');
const budget = Number(opt('--budget', 450));
if (!(budget > 0)) throw new Error(`--budget: expected seconds > 0 but received ${opt('--budget')}`);

// Time boxes in seconds, in the order the steps run; they sum to the default budget. A larger
// --budget scales them up, a smaller one down.
const STEPS = [
  { name: 'build', title: 'addon loads, CUDA compiled in, devices', box: 15, run: stepBuild },
  { name: 'test-gpu', title: 'CUDA kernels vs CPU twins (test/gpu)', box: 75, run: stepTests },
  { name: 'memcheck', title: 'compute-sanitizer memcheck on test/gpu', box: 90, run: stepMemcheck },
  { name: 'bench-ops', title: 'op throughput (scripts/bench/ops.mjs)', box: 45, run: stepOps },
  { name: 'bench-7b', title: 'Llama-2-7B shapes: decode roofline, prefill vs transformers (scripts/bench/gpu.mjs)', box: 150, run: stepBench7b },
  { name: 'hf-oracle', title: 'logits and greedy tokens vs HF transformers (scripts/oracle/hf-compare.mjs)', box: 75, run: stepOracle },
];
const only = opt('--only', undefined)?.split(',');
const dryRun = argv.includes('--dry-run'); // GPU steps skipped even where a GPU is present
for (const n of only ?? []) if (!STEPS.some((s) => s.name === n)) throw new Error(`--only: unknown step ${n} (${STEPS.map((s) => s.name).join(', ')})`);
const scale = budget / STEPS.reduce((a, s) => a + s.box, 0);

const now = () => Number(process.hrtime.bigint()) / 1e9;
const started = now();
mkdirSync(outDir, { recursive: true });
writeFileSync(logFile, '');
const log = (line) => {
  console.log(line);
  appendFileSync(logFile, `${line}\n`);
};

/**
 * Runs a command in its own process group (so a time-out ends vitest's workers and python too),
 * streaming its output to this process and the log. Resolves with the exit code, whether the box
 * ran out, and the output's tail.
 */
function runBoxed(cmd, args, { box, env = {} }) {
  return new Promise((done) => {
    let tail = '';
    let child;
    try {
      child = spawn(cmd, args, { cwd: repoRoot, env: { ...process.env, ...env }, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      done({ code: null, timedOut: false, tail: String(error), error: String(error) });
      return;
    }
    const take = (chunk) => {
      process.stderr.write(chunk);
      appendFileSync(logFile, chunk);
      tail = (tail + chunk.toString()).slice(-20_000);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    let timedOut = false;
    const kill = (sig) => {
      try {
        process.kill(-child.pid, sig);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill('SIGTERM');
      setTimeout(() => kill('SIGKILL'), 5000).unref();
    }, box * 1000);
    child.on('error', (error) => {
      clearTimeout(timer);
      done({ code: null, timedOut, tail, error: String(error) });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, timedOut, tail });
    });
  });
}

const lastLines = (text, n = 12) => text.trim().split('\n').slice(-n).join('\n');
const readJson = (path) => (existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')) : undefined);
const round = (x, digits = 3) => (typeof x === 'number' && Number.isFinite(x) ? Number(x.toPrecision(digits)) : x ?? null);

/** The reason a failed child gives: its time-out, its start failure or its exit status. */
function childFailure(r, box) {
  if (r.timedOut) return `timed out after its ${Math.round(box)} s box`;
  if (r.error) return `could not start: ${r.error}`;
  return `exited with ${r.code ?? r.signal}: ${lastLines(r.tail, 1)}`;
}

// ---------------------------------------------------------------------------------------------
// Steps: each returns { status, reason?, numbers? }
// ---------------------------------------------------------------------------------------------

let info; // buildInfo() of the carried binary, from the build step's child process
const noCuda = () => (dryRun ? 'dry run (--dry-run)' : info ? `no CUDA device (${info.cudaUnavailableReason || 'none found'})` : 'the addon did not load (see the build step)');

async function stepBuild({ box }) {
  // In a child: a broken binary or driver must not take this process down, and this process
  // never holds a CUDA context of its own while the tests run.
  const probe = `console.log('buildInfo=' + JSON.stringify(require(${JSON.stringify(join(repoRoot, 'dist', 'cjs', 'index.js'))}).buildInfo()))`;
  const r = await runBoxed(process.execPath, ['-e', probe], { box });
  const line = r.tail.split('\n').find((l) => l.startsWith('buildInfo='));
  if (r.code !== 0 || !line) return { status: 'failed', reason: childFailure(r, box) };
  info = JSON.parse(line.slice('buildInfo='.length));
  const gpuPresent = nvidiaSmi() !== undefined;
  const numbers = { cudaCompiled: info.cuda, devices: info.devices.map((d) => `${d.name} (sm ${d.computeCapability})`), binary: info.binary };
  if (gpuPresent && info.devices.length === 0) {
    return { status: 'failed', reason: `nvidia-smi sees a GPU but the addon does not: ${info.cudaUnavailableReason} (binary ${info.binary}; built without CUDA?)`, numbers };
  }
  return { status: 'passed', numbers };
}

/** vitest on test/gpu, with its JSON report; the counts are the step's numbers. */
async function vitestGpu(box, reportName, prefix = []) {
  const report = join(outDir, reportName);
  const vitest = [join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs'), 'run', 'test/gpu', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`];
  const [cmd, ...args] = [...prefix, process.execPath, ...vitest];
  const r = await runBoxed(cmd, args, { box, env: { KVFOCUS_TEST_GPU: '1' } });
  const json = readJson(report);
  const numbers = json
    ? { files: json.testResults?.length, tests: json.numTotalTests, passed: json.numPassedTests, failed: json.numFailedTests, skipped: json.numPendingTests + (json.numTodoTests ?? 0) }
    : {};
  return { r, numbers };
}

async function stepTests({ box }) {
  if (dryRun || !info?.devices.length) return { status: 'skipped', reason: noCuda() };
  const { r, numbers } = await vitestGpu(box, 'test-gpu.vitest.json');
  if (r.code !== 0) return { status: 'failed', reason: childFailure(r, box), numbers };
  if (numbers.skipped > 0) return { status: 'failed', reason: `${numbers.skipped} GPU tests skipped with a GPU present`, numbers };
  return { status: 'passed', numbers };
}

function findSanitizer() {
  const which = spawnSync('sh', ['-c', 'command -v compute-sanitizer'], { encoding: 'utf8' });
  if (which.status === 0 && which.stdout.trim()) return which.stdout.trim();
  const roots = ['/usr/local', '/opt/nvidia'].flatMap((d) => (existsSync(d) ? readdirSync(d).filter((n) => n.startsWith('cuda')).map((n) => join(d, n)) : []));
  for (const root of roots) {
    for (const p of [join(root, 'bin', 'compute-sanitizer'), join(root, 'compute-sanitizer', 'compute-sanitizer')]) if (existsSync(p)) return p;
  }
  return undefined;
}

async function stepMemcheck({ box }) {
  if (dryRun || !info?.devices.length) return { status: 'skipped', reason: noCuda() };
  const sanitizer = findSanitizer();
  if (!sanitizer) return { status: 'skipped', reason: 'compute-sanitizer not found (PATH, /usr/local/cuda*/bin, /opt/nvidia)' };
  const prefix = [sanitizer, '--tool', 'memcheck', '--target-processes', 'all', '--error-exitcode', '86', '--print-limit', '20'];
  const { r, numbers } = await vitestGpu(box, 'memcheck.vitest.json', prefix);
  // One summary per process the sanitizer followed (vitest's workers too).
  const summaries = [...r.tail.matchAll(/ERROR SUMMARY: (\d+) error/g)].map((m) => Number(m[1]));
  const all = { ...numbers, sanitizer, processes: summaries.length, errors: summaries.reduce((a, b) => a + b, 0) };
  if (r.code !== 0 || all.errors > 0) return { status: 'failed', reason: all.errors > 0 ? `${all.errors} memcheck errors` : childFailure(r, box), numbers: all };
  return { status: 'passed', numbers: all };
}

async function stepOps({ box }) {
  if (dryRun || !info?.devices.length) return { status: 'skipped', reason: noCuda() };
  const t0 = now();
  const json = join(outDir, 'bench-ops.json');
  const r = await runBoxed(process.execPath, [join(repoRoot, 'scripts', 'bench', 'ops.mjs'), '--device', 'cuda', '--json', json], { box });
  if (r.code !== 0) return { status: 'failed', reason: childFailure(r, box) };
  const results = readJson(json).results;
  const numbers = { rerotate: {}, matmul: {} };
  for (const x of results.filter((x) => x.op === 'rerotate')) {
    numbers.rerotate[x.dtype] = { shape: x.shape, gbPerSecond: round(x.gbPerSecond), inPlaceGbPerSecond: round(x.inPlaceGbPerSecond), copyGbPerSecond: round(x.copyGbPerSecond), ratioToCopy: round(x.ratioToCopy) };
  }
  for (const x of results.filter((x) => x.op === 'matmul')) {
    numbers.matmul[`${x.m}x${x.n}x${x.k} ${x.aDtype}x${x.bDtype}`] = { gflops: round(x.gflops), weightGbPerSecond: round(x.weightGbPerSecond), ms: round(x.ms) };
  }
  // The fused re-rotation, in what is left of the box.
  const left = box - (now() - t0);
  const fusedJson = join(outDir, 'bench-rerotate.json');
  const f = await runBoxed(process.execPath, [join(repoRoot, 'scripts', 'bench', 'rerotate.mjs'), '--device', 'cuda', '--layers', '32', '--tokens', '2048', '--reps', '3', '--min-seconds', '0.5', '--json', fusedJson], { box: left });
  if (f.code !== 0) return { status: 'failed', reason: `scripts/bench/rerotate.mjs: ${childFailure(f, left)}`, numbers };
  numbers.rerotatePages = {};
  for (const x of readJson(fusedJson).results) {
    numbers.rerotatePages[x.dtype] = {
      shape: x.shape, gbPerSecond: round(x.gbPerSecond.fused), copyGbPerSecond: round(x.gbPerSecond.copy), ratioToCopy: round(x.fusedToCopy),
      speedupOverPerPage: round(x.speedupOverPerPage), speedupOverWholeCache: round(x.speedupOverWholeCache),
    };
  }
  return { status: 'passed', numbers };
}

async function stepBench7b({ box }) {
  if (dryRun || !info?.devices.length) return { status: 'skipped', reason: noCuda() };
  const json = join(outDir, 'bench-7b.json');
  // 8 of the 32 layers: a 3.4 GB checkpoint that is written, loaded and measured (with
  // transformers beside it) inside the box; gpu.mjs extrapolates to 32 layers.
  const args = ['--layers', '8', '--prefill', '512,2048,4096', '--decode', '64', '--reps', '2', '--json', json];
  const r = await runBoxed(process.execPath, [join(repoRoot, 'scripts', 'bench', 'gpu.mjs'), ...args], { box });
  const rep = readJson(json); // gpu.mjs writes its kvfocus numbers before transformers runs
  const numbers = rep ? bench7bNumbers(rep) : {};
  if (r.code !== 0) return { status: 'failed', reason: childFailure(r, box), numbers };
  return { status: 'passed', numbers };
}

function bench7bNumbers(rep) {
  const k = rep.kvfocus;
  const t = rep.transformers ?? {};
  return {
    layers: rep.model.dims.layers,
    copyGbPerSecond: round(k.bandwidth.bytesPerSecond / 1e9),
    decode: { tokensPerSecond: round(k.decode.tokensPerSecond), fractionOfRoofline: round(k.decode.fractionOfRoofline), rooflineTokensPerSecond: round(k.decode.rooflineTokensPerSecond), transformersTokensPerSecond: round(t.decode?.tokensPerSecond) },
    prefill: k.prefill.map((p) => ({ tokens: p.tokens, tokensPerSecond: round(p.tokensPerSecond), tflops: round(p.tflops), transformersTokensPerSecond: round(t.prefill?.find((q) => q.tokens === p.tokens)?.tokensPerSecond), ratio: round(rep.ratiosKvfocusOverTransformers?.[`prefill${p.tokens}`]) })),
    batch: { sequences: k.batch.sequences, tokensPerSecond: round(k.batch.tokensPerSecond), fractionOfRoofline: round(k.batch.fractionOfRoofline) },
    transformers: t.skipped ?? t.failed ?? (t.pending ? 'did not finish' : `${t.versions?.transformers ?? ''} ${t.versions?.torch ? `torch ${t.versions.torch}` : ''}`.trim()),
    extrapolatedTo32Layers: rep.extrapolatedTo32Layers
      ? { decodeTokensPerSecond: round(rep.extrapolatedTo32Layers.decodeTokensPerSecond), prefill: rep.extrapolatedTo32Layers.prefill.map((p) => ({ tokens: p.tokens, tokensPerSecond: round(p.tokensPerSecond) })) }
      : undefined,
  };
}

async function stepOracle({ box }) {
  if (dryRun || !info?.devices.length) return { status: 'skipped', reason: noCuda() };
  const json = join(outDir, 'hf-compare.json');
  const r = await runBoxed(process.execPath, [join(repoRoot, 'scripts', 'oracle', 'hf-compare.mjs'), '--json', json], { box });
  const rep = r.code === 2 ? undefined : readJson(json);
  if (r.code === 2) return { status: 'skipped', reason: lastLines(r.tail, 1) }; // no python torch/transformers there
  const numbers = rep
    ? {
        transformers: rep.transformers.versions?.transformers,
        failures: rep.failures,
        results: rep.results.map((x) => ({
          arch: x.arch, device: x.device,
          f32RelL2: round(x.f32.errors?.transformersF32.relL2), bf16RelL2VsF32Compute: round(x.bf16.errors?.transformersF32ComputeOnBf16Weights.relL2),
          greedyF32: x.f32.greedy ? `${x.f32.greedy.leading}/${x.f32.greedy.of}` : x.f32.error, greedyBf16: x.bf16.greedy ? `${x.bf16.greedy.leading}/${x.bf16.greedy.of}` : x.bf16.error,
        })),
      }
    : {};
  if (r.code !== 0) return { status: 'failed', reason: rep?.failures?.length ? rep.failures.join('; ') : childFailure(r, box), numbers };
  return { status: 'passed', numbers };
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

function nvidiaSmi() {
  const r = spawnSync('nvidia-smi', ['--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : undefined;
}

function commit() {
  const r = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoRoot, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null; // the device machine gets the tree without .git
}

const steps = [];
for (const step of STEPS) {
  const t0 = now();
  const left = budget - (t0 - started);
  const box = Math.min(step.box * scale, left);
  let result;
  if (only && !only.includes(step.name)) result = { status: 'skipped', reason: 'not in --only' };
  else if (box < 5) result = { status: 'skipped', reason: `no time left in the ${budget} s budget` };
  else {
    log(`\n=== ${step.name}: ${step.title} (box ${Math.round(box)} s)`);
    try {
      result = await step.run({ box });
    } catch (error) {
      result = { status: 'failed', reason: `${error?.name ?? 'Error'}: ${error?.message ?? error}` };
    }
  }
  const seconds = Math.round((now() - t0) * 100) / 100;
  steps.push({ name: step.name, title: step.title, status: result.status, ...(result.reason ? { reason: result.reason } : {}), seconds, boxSeconds: Math.round(box), numbers: result.numbers ?? {} });
  log(`--- ${step.name}: ${result.status}${result.reason ? `: ${result.reason}` : ''} (${seconds} s)`);
}

const count = (s) => steps.filter((x) => x.status === s).length;
const summary = {
  check: 'gpu-check',
  version: 1,
  date: new Date().toISOString(),
  commit: commit(),
  host: { name: hostname(), cpu: cpus()[0]?.model ?? null, gpu: nvidiaSmi() ?? null, node: process.version },
  budgetSeconds: budget,
  seconds: Math.round((now() - started) * 100) / 100,
  status: count('failed') > 0 ? 'failed' : 'passed',
  counts: { passed: count('passed'), failed: count('failed'), skipped: count('skipped') },
  steps,
};
writeFileSync(outFile, `${JSON.stringify(summary, null, 2)}\n`);

console.log('\ngpu:check');
for (const s of steps) console.log(`  ${s.name.padEnd(10)} ${s.status.padEnd(8)} ${String(s.seconds).padStart(7)} s  ${s.reason ?? ''}`);
console.log(`${summary.status}: ${summary.counts.passed} passed, ${summary.counts.failed} failed, ${summary.counts.skipped} skipped in ${summary.seconds} s; JSON: ${outFile}`);
process.exitCode = summary.status === 'failed' ? 1 : 0;
