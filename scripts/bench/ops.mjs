// Op throughput: rerotate (GB/s, next to a plain copy of the same bytes on the same device) and
// matmul (GFLOP/s), on the CPU and, when one is usable, the GPU. Ratios measured side by side
// in one run are the claims; absolute numbers drift on a shared machine.
//   node scripts/bench/ops.mjs [--json out.json] [--device cpu|cuda|all] [--quick]
import { cpus } from 'node:os';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { flag, opt } from './args.mjs';
import { uniformF32 } from '../lib/random.mjs';

const require = createRequire(import.meta.url);
const { Tensor, ops, buildInfo } = require('../../dist/cjs/index.js');

const quick = flag('--quick');
const info = buildInfo();
const wanted = opt('--device', 'all');
const devices = ['cpu', 'cuda'].filter((d) => (wanted === 'all' || wanted === d) && (d === 'cpu' || info.devices.length > 0));

// Waits for everything queued on `device` so far (a 4-byte read is ordered after it).
async function sync(device) {
  const t = Tensor.zeros([1], { device });
  await t.toArray();
  t.dispose();
}

// Median seconds per call of fn(), which queues work and returns the tensors to dispose.
async function time(device, fn, { minSeconds = quick ? 0.2 : 1, reps = 5 } = {}) {
  for (const t of [fn()].flat()) t.dispose(); // warm-up
  await sync(device);
  let iters = 1;
  for (;;) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) for (const t of [fn()].flat()) t.dispose();
    await sync(device);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    if (s >= minSeconds / reps || iters >= 1 << 16) break;
    iters *= 2;
  }
  const samples = [];
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) for (const t of [fn()].flat()) t.dispose();
    await sync(device);
    samples.push(Number(process.hrtime.bigint() - t0) / 1e9 / iters);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)];
}


const results = [];
for (const device of devices) {
  // rerotate: a 4K-token, 8-KV-head, d=128 key block (one layer of a Llama-3-8B-like cache).
  const tokens = quick ? 1024 : device === 'cuda' ? 32768 : 4096;
  const [heads, d] = [8, 128];
  const from = Tensor.from(Int32Array.from({ length: tokens }, (_, i) => i), { device });
  const to = Tensor.from(Int32Array.from({ length: tokens }, (_, i) => i + 1000), { device });
  const invFreq = Tensor.from(Float32Array.from({ length: d / 2 }, (_, i) => 1 / Math.pow(10000, (2 * i) / d)), { device });
  for (const dtype of ['f32', 'bf16', 'f16']) {
    const keys = Tensor.from(uniformF32(tokens * heads * d, 1), { shape: [tokens, heads, d], dtype, device });
    const bytes = keys.byteLength * 2; // read + write
    const tRerotate = await time(device, () => ops.rerotate(keys, from, to, { invFreq }));
    const tInPlace = await time(device, () => [ops.rerotate(keys, from, to, { invFreq, inPlace: true })].filter((t) => t !== keys));
    const tCopy = await time(device, () => keys.to(device));
    results.push({
      op: 'rerotate', device, dtype, shape: [tokens, heads, d],
      gbPerSecond: bytes / tRerotate / 1e9, inPlaceGbPerSecond: bytes / tInPlace / 1e9, copyGbPerSecond: bytes / tCopy / 1e9,
      ratioToCopy: tCopy / tRerotate,
    });
    keys.dispose();
  }
  for (const t of [from, to, invFreq]) t.dispose();

  // matmul, Linear layout (x W^T): decode (m = 1) and prefill (m = 512) shapes.
  const size = quick ? 512 : device === 'cuda' ? 4096 : 2048;
  for (const m of [1, 512]) {
    for (const wdtype of ['f32', 'bf16']) {
      const x = Tensor.from(uniformF32(m * size, 2), { shape: [m, size], device });
      const w = Tensor.from(uniformF32(size * size, 3), { shape: [size, size], dtype: wdtype, device });
      const s = await time(device, () => ops.matmul(x, w, { transposeB: true }));
      const flops = 2 * m * size * size;
      results.push({
        op: 'matmul', device, m, n: size, k: size, aDtype: 'f32', bDtype: wdtype,
        gflops: flops / s / 1e9, weightGbPerSecond: w.byteLength / s / 1e9, ms: s * 1e3,
      });
      x.dispose();
      w.dispose();
    }
  }
}

const report = {
  bench: 'ops',
  date: new Date().toISOString(),
  host: { cpu: cpus()[0]?.model, cpuThreads: info.cpuThreads, gpu: info.devices.map((d) => d.name) },
  binary: info.binary,
  results,
};
const out = opt('--json', undefined);
if (out) writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
console.log(JSON.stringify(report, null, 2));
