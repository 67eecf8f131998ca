// The fused re-rotation of CacheFocus (ops.rerotatePages): bytes read + written per second when
// a request attaches stored documents at new positions, every layer's moved pages in one
// launch. Next to it, on the same device and the same bytes:
//   copy        a plain copy of the moved keys (memmove on the CPU, cudaMemcpy on a GPU): the
//               ceiling. Goal: >= 80% of it on the CPU, >= 85% on a GPU.
//   perPage     the same moves as one rerotate launch per page (the engine's former attach path).
//   wholeCache  re-rotating every cached key layer by layer, one launch per layer (llama.cpp's
//               context shift): it moves the tokens that stay put too.
// Ratios measured side by side in one run are the claims; absolute numbers drift on a shared
// machine. On the CPU each thread count runs in its own process (KVFOCUS_THREADS is read once).
//   node scripts/bench/rerotate.mjs [--json out.json] [--device cpu|cuda|all] [--threads 1,2]
//     [--layers 16] [--tokens 2048] [--moved 0.75] [--kv-heads 8] [--head-dim 128]
//     [--page-size 16] [--dtypes bf16,f16,f32] [--reps 5] [--min-seconds 1] [--quick]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { flag, intList, opt, positiveInt } from './args.mjs';
import { uniformF32 } from '../lib/random.mjs';

const require = createRequire(import.meta.url);
const { Tensor, ops, buildInfo } = require('../../dist/cjs/index.js');

const quick = flag('--quick');
const info = buildInfo();
const wanted = opt('--device', 'all');
const dtypes = String(opt('--dtypes', 'bf16,f16,f32')).split(',');
const movedFraction = Number(opt('--moved', '0.75'));
if (!(movedFraction > 0 && movedFraction <= 1)) throw new Error(`--moved: expected a fraction in (0, 1] but received ${opt('--moved')}`);
const reps = positiveInt('--reps', 5);
const minSeconds = Number(opt('--min-seconds', quick ? '0.2' : '1'));

// Waits for everything queued on `device` so far (a 4-byte read is ordered after it).
async function sync(device) {
  const t = Tensor.zeros([1], { device });
  await t.toArray();
  t.dispose();
}

// Seconds per call of each fn (which queue work and return the tensors to dispose), measured in
// interleaved rounds so that every variant sees the same machine: per round, each variant runs
// a batch of calls sized to about minSeconds / reps. Returns, per variant, the median over the
// rounds, and the per-round ratios to the first variant (medians of ratios are steadier than
// ratios of medians on a shared machine).
async function timeSideBySide(device, fns) {
  const names = Object.keys(fns);
  const run = async (fn, iters) => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) for (const t of [fn()].flat()) t.dispose();
    await sync(device);
    return Number(process.hrtime.bigint() - t0) / 1e9 / iters;
  };
  const iters = {};
  for (const name of names) {
    await run(fns[name], 1); // warm-up
    let n = 1;
    while ((await run(fns[name], n)) * n < minSeconds / reps / names.length && n < 1 << 14) n *= 2;
    iters[name] = n;
  }
  const samples = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < reps; r++) for (const name of names) samples[name].push(await run(fns[name], iters[name]));
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const first = names[0];
  return {
    seconds: Object.fromEntries(names.map((n) => [n, median(samples[n])])),
    ratio: Object.fromEntries(names.map((n) => [n, median(samples[n].map((s, r) => s / samples[first][r]))])),
  };
}

const BYTES = { f32: 4, f16: 2, bf16: 2 };

async function benchDevice(device) {
  const gpu = device !== 'cpu';
  const layers = positiveInt('--layers', quick ? 4 : gpu ? 32 : 16);
  const tokens = positiveInt('--tokens', quick ? 512 : gpu ? 4096 : 2048); // cached tokens per layer
  const kvHeads = positiveInt('--kv-heads', 8);
  const headDim = positiveInt('--head-dim', 128);
  const pageSize = positiveInt('--page-size', 16);
  // The documents after the prefix move: whole pages of them, every layer alike.
  const movedPages = Math.max(1, Math.round((tokens * movedFraction) / pageSize));
  const moved = movedPages * pageSize;
  const numPages = 2 * layers * movedPages; // stored pages, then the request's own
  const shift = 1000;
  const moves = [];
  for (let l = 0; l < layers; l++) {
    for (let i = 0; i < movedPages; i++) {
      const from = Int32Array.from({ length: pageSize }, (_, k) => tokens - moved + i * pageSize + k);
      moves.push({ srcPage: l * movedPages + i, dstPage: (layers + l) * movedPages + i, from, to: from.map((p) => p + shift) });
    }
  }
  const plan = ops.keyMoves(moves, { numPages, pageSize, device });
  const invFreq = Tensor.from(Float32Array.from({ length: headDim / 2 }, (_, i) => 1 / Math.pow(500000, (2 * i) / headDim)), { device });
  const allFrom = Tensor.from(Int32Array.from({ length: tokens }, (_, i) => i), { device });
  const allTo = Tensor.from(Int32Array.from({ length: tokens }, (_, i) => i + shift), { device });
  const results = [];
  for (const dtype of dtypes) {
    const rowBytes = kvHeads * headDim * BYTES[dtype];
    const movedBytes = layers * moved * rowBytes;
    const pool = Tensor.from(uniformF32(numPages * pageSize * kvHeads * headDim, 1), { shape: [numPages, pageSize, kvHeads, headDim], dtype, device });
    const keys = Tensor.from(uniformF32(layers * moved * kvHeads * headDim, 2), { dtype, device }); // the moved bytes, contiguous
    const cache = Array.from({ length: layers }, (_, l) => Tensor.from(uniformF32(tokens * kvHeads * headDim, 3 + l), { shape: [tokens, kvHeads, headDim], dtype, device }));
    const t = await timeSideBySide(device, {
      fused: () => [ops.rerotatePages(pool, plan, { invFreq })].filter((x) => x !== pool),
      copy: () => keys.to(device),
      perPage: () => [ops.rerotatePages(pool, plan, { invFreq, perRun: true })].filter((x) => x !== pool),
      wholeCache: () => cache.map((k) => ops.rerotate(k, allFrom, allTo, { invFreq, inPlace: true })).filter((x) => !cache.includes(x)),
    });
    const gbps = (bytes, s) => bytes / s / 1e9;
    const ms = Object.fromEntries(Object.entries(t.seconds).map(([k, v]) => [k, v * 1e3]));
    results.push({
      device, threads: gpu ? undefined : info.cpuThreads, dtype,
      shape: { layers, tokensPerLayer: tokens, movedPerLayer: moved, pages: layers * movedPages, pageSize, kvHeads, headDim },
      movedMB: (2 * movedBytes) / 1e6,
      rounds: reps,
      ms,
      gbPerSecond: {
        fused: gbps(2 * movedBytes, t.seconds.fused), copy: gbps(2 * movedBytes, t.seconds.copy), perPage: gbps(2 * movedBytes, t.seconds.perPage),
        wholeCache: gbps(2 * layers * tokens * rowBytes, t.seconds.wholeCache),
      },
      // medians over the rounds of (variant time / fused time) in the same round
      fusedToCopy: t.ratio.copy,
      speedupOverPerPage: t.ratio.perPage,
      speedupOverWholeCache: t.ratio.wholeCache,
    });
    pool.dispose();
    keys.dispose();
    for (const t of cache) t.dispose();
  }
  for (const t of [invFreq, allFrom, allTo]) t.dispose();
  plan.dispose();
  return results;
}

const results = [];
if (flag('--child')) {
  process.stdout.write(JSON.stringify(await benchDevice('cpu')));
  process.exit(0);
}
if (wanted === 'all' || wanted === 'cpu') {
  const threads = intList('--threads', `1,${cpus().length}`);
  const self = fileURLToPath(import.meta.url);
  for (const t of [...new Set(threads)]) {
    const out = execFileSync(process.execPath, [self, ...process.argv.slice(2), '--child'], { env: { ...process.env, KVFOCUS_THREADS: String(t) }, maxBuffer: 1 << 24 });
    results.push(...JSON.parse(out.toString()));
  }
}
if ((wanted === 'all' || wanted === 'cuda') && info.devices.length > 0) results.push(...(await benchDevice('cuda')));

const report = {
  bench: 'rerotate',
  date: new Date().toISOString(),
  host: { cpu: cpus()[0]?.model, cpuCount: cpus().length, gpu: info.devices.map((d) => d.name) },
  binary: info.binary,
  results,
};
const out = opt('--json', undefined);
if (out) writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
console.log(JSON.stringify(report, null, 2));
console.log('\ndevice threads dtype  fused GB/s  copy GB/s  fused/copy  vs perPage  vs wholeCache');
for (const r of results) {
  console.log(
    [r.device.padEnd(6), String(r.threads ?? '-').padStart(7), r.dtype.padEnd(5), r.gbPerSecond.fused.toFixed(2).padStart(10), r.gbPerSecond.copy.toFixed(2).padStart(10),
      r.fusedToCopy.toFixed(2).padStart(11), `${r.speedupOverPerPage.toFixed(2)}x`.padStart(11), `${r.speedupOverWholeCache.toFixed(2)}x`.padStart(13)].join(' '),
  );
}
