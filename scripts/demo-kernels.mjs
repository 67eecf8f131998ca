// The kernel smoke job `npm run demo` runs when no embedded model is present (a checkout
// without models/), and `node scripts/demo-kernels.mjs` runs on its own: a document's keys are
// cached once at positions 0..n-1, moved to a new place in the context by re-rotation, and
// attention over the moved cache is checked against attention computed from scratch at the new
// positions.
import { createRequire } from 'node:module';
import { uniformF32 } from './lib/random.mjs';

const require = createRequire(import.meta.url);
const { Tensor, ops, buildInfo } = require('../dist/cjs/index.js');

const info = buildInfo();
const device = process.argv.includes('--cpu') ? 'cpu' : info.backend;
console.log(`kvfocus ${info.version} — backend ${device}${info.devices.length ? ` (${info.devices.map((d) => d.name).join(', ')})` : ''}, ${info.cpuThreads} CPU threads`);
console.log('Re-positioning smoke job on the CacheFocus kernels.\n');


const [docTokens, heads, d] = [2048, 8, 128];
const shift = 5000;
const base = 500000;
const keysRaw = Tensor.from(uniformF32(docTokens * heads * d, 1), { shape: [docTokens, heads, d], dtype: 'bf16', device });
const values = Tensor.from(uniformF32(docTokens * heads * d, 2), { shape: [docTokens, heads, d], dtype: 'bf16', device });
const query = Tensor.from(uniformF32(heads * d, 3), { shape: [1, heads, d], device });
const at = (start, n) => Int32Array.from({ length: n }, (_, i) => start + i);

// Offline: the document's keys are cached rotated at positions 0..n-1.
let t0 = performance.now();
const cached = ops.rope(keysRaw, at(0, docTokens), { base });
await cached.toArray();
const tCache = performance.now() - t0;

// Query time: the document lands at positions shift..shift+n-1; one fused re-rotation moves it.
t0 = performance.now();
const moved = ops.rerotate(cached, at(0, docTokens), at(shift, docTokens), { base });
await moved.toArray();
const tMove = performance.now() - t0;
const fresh = ops.rope(keysRaw, at(shift, docTokens), { base });

// Attention of a query at the position right after the document, head 0, over both caches.
async function attention(keys) {
  const q = ops.rope(query, [shift + docTokens], { base });
  const q0 = (await q.toArray()).subarray(0, d);
  const k = (await keys.toArray());
  const v = await values.toArray();
  const scores = new Float32Array(docTokens);
  for (let t = 0; t < docTokens; t++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += q0[i] * k[t * heads * d + i];
    scores[t] = s;
  }
  const p = await ops.softmax(Tensor.from(scores, { device }), { scale: 1 / Math.sqrt(d) }).toArray();
  const out = new Float64Array(d);
  for (let t = 0; t < docTokens; t++) for (let i = 0; i < d; i++) out[i] += p[t] * v[t * heads * d + i];
  return out;
}
const a = await attention(moved);
const b = await attention(fresh);
let err = 0;
for (let i = 0; i < d; i++) err = Math.max(err, Math.abs(a[i] - b[i]));

const mb = (keysRaw.byteLength / 2 ** 20).toFixed(1);
console.log(`document cache: ${docTokens} tokens x ${heads} KV heads x ${d} (bf16 keys, ${mb} MiB)`);
console.log(`  encode keys at 0..${docTokens - 1}:           ${tCache.toFixed(1)} ms`);
console.log(`  re-rotate to ${shift}..${shift + docTokens - 1}:      ${tMove.toFixed(1)} ms`);
console.log(`  attention over moved vs fresh cache: max |diff| = ${err.toExponential(2)} (bf16 storage)`);
const ok = err < 2e-2;
console.log(ok ? '\nsmoke job passed' : '\nsmoke job FAILED');
process.exit(ok ? 0 : 1);
