// Shared by the GPU suites: whether a CUDA device is usable, and a CPU-vs-CUDA comparison.
import { buildInfo, Tensor } from '../../lib/index.js';

export const hasCuda = buildInfo().devices.length > 0;

// Under `npm run test:gpu` (KVFOCUS_TEST_GPU=1) a missing GPU is an error, not a skip: the
// point of that command is to run the CUDA kernels.
if (process.env.KVFOCUS_TEST_GPU === '1' && !hasCuda) {
  console.warn(`test:gpu: no usable CUDA device (${buildInfo().cudaUnavailableReason}); GPU suites are skipped`);
}

/** Largest |a - b| / (|b| + floor) over the elements. */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-3): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!) / (Math.abs(b[i]!) + floor));
  return m;
}

/** Runs `op` on CPU copies and on CUDA copies of the inputs and returns both results. */
export async function onBoth(inputs: Tensor[], op: (...xs: Tensor[]) => Tensor): Promise<{ cpu: Float32Array; cuda: Float32Array }> {
  const cpu = (await op(...inputs).toArray()) as Float32Array;
  const dev = inputs.map((t) => t.to('cuda'));
  const cuda = (await op(...dev).toArray()) as Float32Array;
  for (const t of dev) t.dispose();
  return { cpu, cuda };
}
