// Baselines under a fixed KV budget (shared/METHODS.md, "Baselines every benchmark must
// include"), run by the same engine mechanics as LaCache (./bounded-runtime.ts): after every step
// each layer keeps a set of tokens, at positions by slot (rank in cache order).
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';

/**
 * StreamingLLM (arXiv 2309.17453): the first `sinks` tokens and the most recent ones; a query
 * attends to at most sinks + window tokens, the window counting the query itself.
 */
export interface StreamingPolicy {
  name: 'streaming';
  sinks: number;
  window: number;
}

/**
 * H2O (arXiv 2306.14048): the `recent` newest tokens plus the "heavy hitters", the tokens that
 * have received the most attention so far (summed over every query since they were cached, over
 * the layer's heads), up to `budget` tokens a query attends to, itself included.
 */
export interface H2OPolicy {
  name: 'h2o';
  budget: number;
  recent: number;
}

function int(p: Record<string, unknown>, key: string, min: number, fallback?: number): number {
  const v = p[key] ?? fallback;
  if (!Number.isInteger(v) || (v as number) < min) {
    throw new InvalidArgumentError(`policy.${key}: expected an integer >= ${min} but received ${describe(p[key])}`, 'policy');
  }
  return v as number;
}

export function resolveStreaming(p: Record<string, unknown>): Readonly<StreamingPolicy> {
  return Object.freeze({ name: 'streaming' as const, sinks: int(p, 'sinks', 0, 4), window: int(p, 'window', 1) });
}

export function resolveH2O(p: Record<string, unknown>): Readonly<H2OPolicy> {
  const budget = int(p, 'budget', 2);
  const recent = int(p, 'recent', 1, Math.max(1, budget >> 1));
  if (recent >= budget) throw new InvalidArgumentError(`policy.recent: ${recent} leaves no room for heavy hitters in budget ${budget}`, 'policy');
  return Object.freeze({ name: 'h2o' as const, budget, recent });
}
