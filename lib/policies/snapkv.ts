// SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", arXiv
// 2404.14469): each KV head keeps the tokens the newest queries (an observation window at the
// end of the input) attend to most, their attention pooled over neighbouring tokens so that
// whole phrases survive, plus the window itself. This file is the policy's options; the runtime
// is ./snapkv-runtime.ts.
//
// Defaults follow the authors' code (FasterDecoding/SnapKV, snapkv_utils.py, SnapKVCluster):
// window_size 32 and kernel_size 5 with 'avgpool' pooling, the defaults its monkeypatch sets.
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';

/**
 * SnapKV: `{ name: 'snapkv', budget, window, kernel }`. After a step that leaves more than
 * `budget` tokens with a full observation window behind it, every layer and KV head keeps the
 * `window` newest tokens and the `budget - window` others with the highest pooled attention
 * from those newest queries, at positions by slot.
 */
export interface SnapKVPolicy {
  name: 'snapkv';
  /** Tokens each KV head keeps after a compression, the window included (max_capacity_prompt). */
  budget: number;
  /** The observation window: the newest queries whose attention scores the rest, and which are kept (default 32). */
  window?: number;
  /** Width of the average pooling over neighbouring tokens' scores (default 5). */
  kernel?: number;
}

export type ResolvedSnapKVPolicy = Readonly<Required<SnapKVPolicy>>;

export const SNAPKV_OPTIONS: readonly string[] = Object.freeze(['name', 'budget', 'window', 'kernel']);

function int(p: Record<string, unknown>, key: string, min: number, fallback?: number): number {
  const v = p[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v >= 2 ** 31) {
    throw new InvalidArgumentError(`policy.${key}: expected an integer >= ${min} but received ${describe(p[key])}`, 'policy');
  }
  return v;
}

export function resolveSnapKV(p: Record<string, unknown>): ResolvedSnapKVPolicy {
  const budget = int(p, 'budget', 2);
  const window = int(p, 'window', 1, Math.min(32, budget - 1));
  const kernel = int(p, 'kernel', 1, 5);
  if (window >= budget) throw new InvalidArgumentError(`policy.window: ${window} leaves no room for selected tokens in budget ${budget}`, 'policy');
  return Object.freeze({ name: 'snapkv' as const, budget, window, kernel });
}

/**
 * Average pooling of `scores` (kernel `kernel`, stride 1, zero padding kernel >> 1 on both
 * sides, divided by the kernel whatever the padding: torch's avg_pool1d with
 * count_include_pad), one output per input (an even kernel's extra last output is dropped).
 */
export function avgPool(scores: ArrayLike<number>, kernel: number): Float64Array {
  const n = scores.length;
  const pad = kernel >> 1;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let j = Math.max(0, i - pad); j <= Math.min(n - 1, i - pad + kernel - 1); j++) sum += scores[j]!;
    out[i] = sum / kernel;
  }
  return out;
}

/**
 * The slots one KV head keeps: of `held` slots, the newest `window`, and the `budget - window`
 * of the others with the highest pooled score (ties: the older), all in slot order.
 */
export function snapKeep(scores: ArrayLike<number>, held: number, policy: Pick<ResolvedSnapKVPolicy, 'budget' | 'window' | 'kernel'>): number[] {
  const candidates = held - policy.window;
  const pooled = avgPool(Array.from({ length: candidates }, (_, i) => scores[i]!), policy.kernel);
  const order = Array.from({ length: candidates }, (_, i) => i).sort((a, b) => pooled[b]! - pooled[a]! || a - b);
  const kept = order.slice(0, policy.budget - policy.window).sort((a, b) => a - b);
  for (let s = candidates; s < held; s++) kept.push(s);
  return kept;
}
