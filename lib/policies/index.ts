// Cache policies: which tokens each layer (and KV head) of a sequence keeps, at which positions.
// A policy is data: a name and its options, validated here once, then interpreted by the
// sequence at step boundaries. A new policy adds its file, a case in CachePolicy and an entry in
// POLICIES; the model has no special path for any of them.
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';
import { CACHE_FOCUS_OPTIONS, resolveCacheFocus, type CacheFocusPolicy, type ResolvedCacheFocus } from './cache-focus.js';
import { CASCADING_OPTIONS, type CascadingPolicy, type ResolvedCascadingPolicy, resolveCascading } from './cascading.js';
import type { FullAttentionPolicy } from './full.js';
import type { ConcatPolicy, ParallelWindowsPolicy } from './baselines.js';
import { APE_OPTIONS, type ApePolicy, resolveApe, type ResolvedApePolicy } from './ape.js';
import { type H2OPolicy, resolveH2O, resolveStreaming, type StreamingPolicy } from './bounded.js';
import { LACACHE_OPTIONS, type LaCachePolicy, type ResolvedLaCachePolicy, resolveLaCache } from './lacache.js';
import { type ResolvedSnapKVPolicy, resolveSnapKV, SNAPKV_OPTIONS, type SnapKVPolicy } from './snapkv.js';

export { cascading, type CascadingPolicy, type HeadReduction, type ResolvedCascadingPolicy } from './cascading.js';
export type { FullAttentionPolicy } from './full.js';
export type { ConcatPolicy, ParallelWindowsPolicy } from './baselines.js';
export type { ApePolicy, ResolvedApePolicy } from './ape.js';
export type { H2OPolicy, StreamingPolicy } from './bounded.js';
export type { SnapKVPolicy } from './snapkv.js';
export type { CacheFocusPolicy, KeepRule } from './cache-focus.js';

/** A sequence's cache policy, chosen by `name`. */
export type CachePolicy =
  | FullAttentionPolicy
  | CacheFocusPolicy
  | CascadingPolicy
  | ConcatPolicy
  | ParallelWindowsPolicy
  | ApePolicy
  | LaCachePolicy
  | StreamingPolicy
  | H2OPolicy
  | SnapKVPolicy;

/** @internal The host-side plan of LaCache, for the engine (not wired into sequences yet). */
export {
  DEFAULT_LACACHE_SINKS,
  LaCachePlanner,
  ladderGeometry,
  type LaCacheEdit,
  type LadderGeometry,
  type LadderState,
  type ResolvedLaCachePolicy,
} from './lacache.js';

export type { LaCachePolicy } from './lacache.js';

/** A policy's validated options, with defaults filled in. */
export type ResolvedPolicy =
  | Readonly<FullAttentionPolicy>
  | ResolvedCacheFocus
  | ResolvedCascadingPolicy
  | Readonly<ConcatPolicy>
  | Readonly<ParallelWindowsPolicy>
  | ResolvedApePolicy
  | ResolvedLaCachePolicy
  | Readonly<StreamingPolicy>
  | Readonly<H2OPolicy>
  | ResolvedSnapKVPolicy;

interface PolicyDefinition {
  /** Every option key, `name` included: any other key is refused. */
  options: readonly string[];
  resolve(policy: Record<string, unknown>): ResolvedPolicy;
}

const POLICIES: Record<string, PolicyDefinition> = {
  full: { options: ['name'], resolve: () => Object.freeze({ name: 'full' as const }) },
  cacheFocus: { options: CACHE_FOCUS_OPTIONS, resolve: resolveCacheFocus },
  concat: { options: ['name'], resolve: () => Object.freeze({ name: 'concat' as const }) },
  parallelWindows: { options: ['name'], resolve: () => Object.freeze({ name: 'parallelWindows' as const }) },
  ape: { options: APE_OPTIONS, resolve: resolveApe },
  cascading: { options: CASCADING_OPTIONS, resolve: resolveCascading },
  lacache: { options: LACACHE_OPTIONS, resolve: resolveLaCache },
  streaming: { options: ['name', 'sinks', 'window'], resolve: resolveStreaming },
  h2o: { options: ['name', 'budget', 'recent'], resolve: resolveH2O },
  snapkv: { options: SNAPKV_OPTIONS, resolve: resolveSnapKV },
};

/**
 * Policy constructors: `policies.full()`, `policies.cacheFocus({ ... })`. Each returns the
 * plain `{ name, ...options }` object a sequence takes, validated now (InvalidArgumentError).
 */
export const policies = Object.freeze({
  full: (): FullAttentionPolicy => checked({ name: 'full' }),
  cacheFocus: (options: Omit<CacheFocusPolicy, 'name'> = {}): CacheFocusPolicy => checked({ ...options, name: 'cacheFocus' }),
  cascading: (options: Omit<CascadingPolicy, 'name'> = {}): CascadingPolicy => checked({ ...options, name: 'cascading' }),
  concat: (): ConcatPolicy => checked({ name: 'concat' }),
  parallelWindows: (): ParallelWindowsPolicy => checked({ name: 'parallelWindows' }),
  ape: (options: Omit<ApePolicy, 'name'> = {}): ApePolicy => checked({ ...options, name: 'ape' }),
  lacache: (options: Omit<LaCachePolicy, 'name'>): LaCachePolicy => checked({ ...options, name: 'lacache' }),
  streaming: (options: Omit<StreamingPolicy, 'name' | 'sinks'> & { sinks?: number }): StreamingPolicy => checked({ ...options, name: 'streaming' } as StreamingPolicy),
  h2o: (options: Omit<H2OPolicy, 'name' | 'recent'> & { recent?: number }): H2OPolicy => checked({ ...options, name: 'h2o' } as H2OPolicy),
  snapkv: (options: Omit<SnapKVPolicy, 'name'>): SnapKVPolicy => checked({ ...options, name: 'snapkv' }),
});

function checked<P extends CachePolicy>(p: P): P {
  resolvePolicy(p);
  return Object.freeze(p);
}

/** Policies that hold a bounded number of tokens per layer (generation in fixed memory). */
export const BOUNDED_POLICIES: readonly string[] = Object.freeze(['streaming', 'h2o', 'lacache', 'cascading', 'snapkv']);

/** The policy names this build knows. */
export const policyNames: readonly string[] = Object.freeze(Object.keys(POLICIES));

/** Validates `policy` (undefined: full attention); throws InvalidArgumentError naming 'policy'. */
export function resolvePolicy(policy: unknown): ResolvedPolicy {
  if (policy === undefined) return POLICIES.full!.resolve({ name: 'full' });
  if (policy === null || typeof policy !== 'object' || Array.isArray(policy)) {
    throw new InvalidArgumentError(`policy: expected a policy object such as { name: 'full' } but received ${describe(policy)}`, 'policy');
  }
  const name = (policy as { name?: unknown }).name;
  const known = policyNames.map((n) => `'${n}'`).join(', ');
  if (typeof name !== 'string') throw new InvalidArgumentError(`policy.name: expected one of ${known} but received ${describe(name)}`, 'policy');
  const def = Object.hasOwn(POLICIES, name) ? POLICIES[name] : undefined;
  if (!def) throw new InvalidArgumentError(`policy.name: unknown policy '${name}'; known policies: ${known}`, 'policy');
  for (const key of Object.keys(policy)) {
    if (!def.options.includes(key)) {
      throw new InvalidArgumentError(`policy: unknown option '${key}' for policy '${name}'; its options: ${def.options.join(', ')}`, 'policy');
    }
  }
  return def.resolve(policy as Record<string, unknown>);
}
