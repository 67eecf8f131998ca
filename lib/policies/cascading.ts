// Cascading KV cache (Willette et al., "Training-Free Exponential Context Extension via Cascading
// KV Cache", arXiv 2406.17808, ICLR 2025). Each layer and KV head keeps `sinks` first tokens and
// `cascades` sub-caches of `window` slots; once the cache is full, sub-cache i takes one token in
// 2^i, so it spans about window * 2^i tokens, and a token it refuses competes with its newest
// entry on an EMA of the attention both received. The prompt is prefilled `stride` tokens at a
// time. This file is the policy's options and their checks; cascade-model.ts is the insertion rule
// in plain TypeScript, which the engine follows.
//
// Defaults come from the authors' latest code (github.com/jeffwillette/cascading_cache_2) and the
// scripts its experiments ran with; each option says which. Their scripts pass the whole cache
// size as `--window` and split it evenly over the cascades; `window` here is one cascade's slots.
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';

/** How the scores of the query heads that share one KV head (a GQA group) are combined. */
export type HeadReduction = 'mean' | 'max';

/**
 * The cascading KV cache: `{ name: 'cascading', sinks, window, cascades, beta, headReduction,
 * stride }`, every option but `name` optional. Build one with `cascading({ ... })`.
 */
export interface CascadingPolicy {
  name: 'cascading';
  /**
   * The first `sinks` tokens of the stream, kept at positions 0..sinks-1 and never evicted
   * (default 64: SINKS=64 in every experiment script; the argument parser's own default, 0, is
   * never used by them).
   */
  sinks?: number;
  /**
   * Slots in each cascade (default 8192: the PG19 script's 32768-token cache over 4 cascades;
   * BookSum used 2048 / 4 = 512, passkey 65536 / 4).
   */
  window?: number;
  /**
   * Sub-caches; cascade i takes one token in 2^i once the cache is full (default 4: the PG19 and
   * BookSum scripts; the passkey runs also used 8).
   */
  cascades?: number;
  /**
   * EMA factor of the attention scores, in (0, 1): score <- beta^q * score + the chunk's
   * attention weighted (1 - beta) * beta^age (default 0.9999: `self.beta = 0.9999` in
   * CascadingKVCache; earlier versions used exp(-ln 100 / window), then 0.995).
   */
  beta?: number;
  /**
   * How the scores of the query heads of one GQA group combine before the KV head selects
   * (default 'max': HEAD_REDUCTION=max in every cascading experiment script; 'mean' is the
   * argument parser's default and the perplexity baseline's).
   */
  headReduction?: HeadReduction;
  /**
   * Prefill chunk: the prompt is fed `stride` tokens at a time, each chunk attending to the sinks,
   * the cache and itself (causally) and then inserted (default 1024: `--cascade_stride`'s
   * default and the PG19 script's; passkey used 4096, BookSum 512).
   */
  stride?: number;
}

/** A cascading policy with every option filled in. */
export type ResolvedCascadingPolicy = Readonly<Required<CascadingPolicy>>;

/** The defaults, with where each comes from on its field of CascadingPolicy. */
export const CASCADING_DEFAULTS: Readonly<Required<Omit<CascadingPolicy, 'name'>>> = Object.freeze({
  sinks: 64,
  window: 8192,
  cascades: 4,
  beta: 0.9999,
  headReduction: 'max',
  stride: 1024,
});

/** Every option key of the cascading policy, `name` included. */
export const CASCADING_OPTIONS: readonly string[] = Object.freeze(['name', 'sinks', 'window', 'cascades', 'beta', 'headReduction', 'stride']);

/** The most cascades: the last one takes one token in 2^31. */
export const MAX_CASCADES = 32;

// Slot indices and RoPE positions are 32-bit integers.
const MAX_SLOTS = 2 ** 31 - 1;

const HEAD_REDUCTIONS: readonly HeadReduction[] = ['mean', 'max'];

function integerOption(policy: Record<string, unknown>, key: 'sinks' | 'window' | 'cascades' | 'stride', min: number, max: number, meaning: string): number {
  const value = policy[key];
  if (value === undefined) return CASCADING_DEFAULTS[key];
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`policy.${key}: expected an integer in [${min}, ${max}] (${meaning}) but received ${describe(value)}`, 'policy');
  }
  return value;
}

/** Checks a cascading policy's options (name already checked) and fills in the defaults. */
export function resolveCascading(policy: Record<string, unknown>): ResolvedCascadingPolicy {
  const sinks = integerOption(policy, 'sinks', 0, MAX_SLOTS, 'tokens kept from the start of the stream');
  const window = integerOption(policy, 'window', 1, MAX_SLOTS, 'slots per cascade');
  const cascades = integerOption(policy, 'cascades', 1, MAX_CASCADES, 'sub-caches');
  const stride = integerOption(policy, 'stride', 1, MAX_SLOTS, 'prefill chunk length in tokens');
  const beta = policy.beta === undefined ? CASCADING_DEFAULTS.beta : policy.beta;
  if (typeof beta !== 'number' || !(beta > 0 && beta < 1)) {
    throw new InvalidArgumentError(`policy.beta: expected a number strictly between 0 and 1 (the EMA factor of the attention scores) but received ${describe(beta)}`, 'policy');
  }
  const headReduction = policy.headReduction === undefined ? CASCADING_DEFAULTS.headReduction : policy.headReduction;
  if (typeof headReduction !== 'string' || !(HEAD_REDUCTIONS as readonly string[]).includes(headReduction)) {
    throw new InvalidArgumentError(`policy.headReduction: expected 'mean' or 'max' but received ${describe(headReduction)}`, 'policy');
  }
  if (sinks + cascades * window > MAX_SLOTS) {
    throw new InvalidArgumentError(
      `policy: sinks + cascades * window is ${sinks + cascades * window} slots (${sinks} + ${cascades} * ${window}); at most ${MAX_SLOTS} are addressable`,
      'policy',
    );
  }
  return Object.freeze({ name: 'cascading' as const, sinks, window, cascades, beta, headReduction: headReduction as HeadReduction, stride });
}

/**
 * The cascading policy with `options` checked and the defaults filled in, ready for
 * `model.sequence({ policy })`. Throws InvalidArgumentError naming 'policy'.
 */
export function cascading(options?: Omit<CascadingPolicy, 'name'>): ResolvedCascadingPolicy {
  if (options === undefined || options === null) return resolveCascading({});
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(`policy: expected the cascading options as an object but received ${describe(options)}`, 'policy');
  }
  for (const key of Object.keys(options)) {
    if (key === 'name' || !CASCADING_OPTIONS.includes(key)) {
      throw new InvalidArgumentError(`policy: unknown option '${key}' for policy 'cascading'; its options: ${CASCADING_OPTIONS.slice(1).join(', ')}`, 'policy');
    }
  }
  return resolveCascading(options as Record<string, unknown>);
}
