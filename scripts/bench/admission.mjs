// Many concurrent generations on a KV pool too small to hold them together: the scheduler admits
// what fits and queues the rest. Prints wall time, failures, peak queue and preemptions, and
// checks every greedy output against the same request run alone.
//
//   node scripts/bench/admission.mjs [--requests 64] [--kv-cache-tokens N] [--max-tokens 16] [--device cpu]
//
// Prompts are held-out multi-document QA prompts of the embedded model (two documents, ~160-200
// tokens). Without --kv-cache-tokens the pool has its default size (from memory).
import { loadDefaultModel, multidocQa } from 'kvfocus';

import { opt, positiveInt } from './args.mjs';

const requests = positiveInt('--requests', 64);
const maxTokens = positiveInt('--max-tokens', 16);
const kvCacheTokens = opt('--kv-cache-tokens') === undefined ? undefined : positiveInt('--kv-cache-tokens');
const model = await loadDefaultModel({ device: opt('--device', 'cpu'), ...(kvCacheTokens ? { kvCacheTokens } : {}) });
try {
  const prompts = Array.from({ length: requests }, (_, i) =>
    model.encode(multidocQa.formatPrompt(multidocQa.generateExample(multidocQa.heldOutSeed(2000 + i), { numDocs: 2 }))),
  );
  const lengths = prompts.map((p) => p.length);
  const alone = [];
  for (const p of prompts) alone.push((await model.generate(p, { maxTokens }).result).tokens);

  let peakRunning = 0;
  const t0 = performance.now();
  const runs = prompts.map((p) => model.generate(p, { maxTokens }).result);
  const sampler = setInterval(() => (peakRunning = Math.max(peakRunning, model.stats().runningRequests)), 1);
  const settled = await Promise.allSettled(runs);
  const ms = performance.now() - t0;
  clearInterval(sampler);
  const failed = settled.filter((s) => s.status === 'rejected');
  const same = settled.filter((s, i) => s.status === 'fulfilled' && s.value.tokens.join() === alone[i].join()).length;
  const s = model.stats();
  console.log(
    JSON.stringify({
      requests,
      promptTokens: { min: Math.min(...lengths), max: Math.max(...lengths) },
      maxTokens,
      kvCacheTokens: s.kvCacheTokens,
      wallMs: Math.round(ms),
      failed: failed.length,
      firstFailure: failed[0]?.reason?.name,
      sameAsAlone: same,
      peakQueued: s.peakQueuedRequests,
      peakRunningSampled: peakRunning,
      preemptions: s.preemptions,
    }),
  );
} finally {
  model.dispose();
}
