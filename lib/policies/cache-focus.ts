// CacheFocus (shared/METHODS.md §1, components 3 and 4): stored documents scored by the query's
// attention at chosen layers, the least relevant dropped from every later layer, and the
// survivors' positions re-allocated. This file is the policy's configuration and its decisions,
// pure functions of the attention mass the kernels report; the sequence applies them.
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';

/** Which documents a pruning layer keeps, of the n still held. */
export type KeepRule = { topK: number } | { fraction: number } | { mass: number };

/** `policies.cacheFocus(options)`: see the README for each option. */
export interface CacheFocusPolicy {
  name: 'cacheFocus';
  /** Query tokens whose attention scores the documents: 'all', or the last k. */
  scoreTokens?: 'all' | { last: number };
  /** How the query heads' document masses combine. */
  headReduction?: 'mean' | 'max' | 'sum';
  /** 'length' divides a document's score by its token count. */
  normalize?: 'none' | 'length';
  /** true: a layer's score adds up the scores of every layer up to it. */
  accumulate?: boolean;
  /** Layer indices where documents are ranked and pruned (ascending). */
  pruneLayers?: readonly number[];
  /** The rule at every pruning layer, or one rule per pruning layer. */
  keep?: KeepRule | readonly KeepRule[];
  /** Positions of the survivors after each pruning. */
  allocation?: 'align' | 'sort' | 'none';
}

export interface ResolvedCacheFocus {
  name: 'cacheFocus';
  scoreTokens: 'all' | { last: number };
  headReduction: 'mean' | 'max' | 'sum';
  normalize: 'none' | 'length';
  accumulate: boolean;
  /** Undefined: chosen from the model's depth when the sequence opens (defaultPruneLayers). */
  pruneLayers: readonly number[] | undefined;
  keep: readonly KeepRule[] | KeepRule;
  allocation: 'align' | 'sort' | 'none';
}

export const CACHE_FOCUS_OPTIONS = ['name', 'scoreTokens', 'headReduction', 'normalize', 'accumulate', 'pruneLayers', 'keep', 'allocation'] as const;

function bad(option: string, expected: string, got: unknown): never {
  throw new InvalidArgumentError(`policy.${option}: expected ${expected} but received ${describe(got)}`, 'policy');
}

function keepRule(r: unknown, option: string): KeepRule {
  if (r === null || typeof r !== 'object' || Array.isArray(r) || Object.keys(r).length !== 1) bad(option, '{ topK: k }, { fraction: f } or { mass: m }', r);
  const o = r as Record<string, unknown>;
  if ('topK' in o) {
    if (!Number.isInteger(o.topK) || (o.topK as number) < 1) bad(`${option}.topK`, 'an integer >= 1', o.topK);
    return { topK: o.topK as number };
  }
  if ('fraction' in o) {
    if (typeof o.fraction !== 'number' || !(o.fraction > 0 && o.fraction <= 1)) bad(`${option}.fraction`, 'a number in (0, 1]', o.fraction);
    return { fraction: o.fraction };
  }
  if ('mass' in o) {
    if (typeof o.mass !== 'number' || !(o.mass > 0 && o.mass <= 1)) bad(`${option}.mass`, 'a number in (0, 1]', o.mass);
    return { mass: o.mass };
  }
  return bad(option, '{ topK: k }, { fraction: f } or { mass: m }', r);
}

/** Validates the options and fills in the defaults. */
export function resolveCacheFocus(p: Record<string, unknown>): ResolvedCacheFocus {
  const scoreTokens = p.scoreTokens ?? 'all';
  if (scoreTokens !== 'all') {
    const last = (scoreTokens as { last?: unknown })?.last;
    if (typeof scoreTokens !== 'object' || Object.keys(scoreTokens).length !== 1 || !Number.isInteger(last) || (last as number) < 1) {
      bad('scoreTokens', "'all' or { last: k } with k >= 1", scoreTokens);
    }
  }
  const headReduction = p.headReduction ?? 'mean';
  if (headReduction !== 'mean' && headReduction !== 'max' && headReduction !== 'sum') bad('headReduction', "'mean', 'max' or 'sum'", headReduction);
  const normalize = p.normalize ?? 'none';
  if (normalize !== 'none' && normalize !== 'length') bad('normalize', "'none' or 'length'", normalize);
  const accumulate = p.accumulate ?? true;
  if (typeof accumulate !== 'boolean') bad('accumulate', 'a boolean', accumulate);
  let pruneLayers: number[] | undefined;
  if (p.pruneLayers !== undefined) {
    if (!Array.isArray(p.pruneLayers)) bad('pruneLayers', 'an array of layer indices', p.pruneLayers);
    pruneLayers = [...(p.pruneLayers as unknown[])].map((l, i) => {
      if (!Number.isInteger(l) || (l as number) < 0) bad(`pruneLayers[${i}]`, 'a layer index (integer >= 0)', l);
      return l as number;
    });
    for (let i = 1; i < pruneLayers.length; i++) if (pruneLayers[i]! <= pruneLayers[i - 1]!) bad('pruneLayers', 'strictly ascending layer indices', p.pruneLayers);
  }
  let keep: KeepRule | KeepRule[] = { fraction: 0.5 };
  if (p.keep !== undefined) {
    if (Array.isArray(p.keep)) {
      keep = p.keep.map((r, i) => keepRule(r, `keep[${i}]`));
      if (pruneLayers !== undefined && keep.length !== pruneLayers.length) {
        throw new InvalidArgumentError(`policy.keep: ${keep.length} rules for ${pruneLayers.length} pruning layers; give one rule, or one per pruning layer`, 'policy');
      }
    } else keep = keepRule(p.keep, 'keep');
  }
  const allocation = p.allocation ?? 'align';
  if (allocation !== 'align' && allocation !== 'sort' && allocation !== 'none') bad('allocation', "'align', 'sort' or 'none'", allocation);
  return Object.freeze({ name: 'cacheFocus', scoreTokens: scoreTokens as ResolvedCacheFocus['scoreTokens'], headReduction, normalize, accumulate, pruneLayers, keep, allocation });
}

/**
 * The pruning layers for a model of `layers` layers when the policy names none: the middle layer
 * (measured on the embedded 6-layer model, whose layer 3 is the one whose attention finds the
 * answer's document: pruning there loses nothing, at layer 2 it drops the answer; see the
 * README), and none for a model of two layers or fewer (its first layer's attention does not
 * rank the documents yet).
 */
export function defaultPruneLayers(layers: number): number[] {
  return layers <= 2 ? [] : [Math.floor(layers / 2)];
}

/** The keep rule at the i-th pruning layer. */
export function ruleAt(p: ResolvedCacheFocus, i: number): KeepRule {
  return Array.isArray(p.keep) ? p.keep[i]! : (p.keep as KeepRule);
}

/**
 * s_l(d) for each document from the attention mass the kernel reported at one layer:
 * `mass[(row * heads + h) * ranges + d]` is the probability query row `row` of head h puts on
 * document d's tokens. Rows are the scored query tokens' rows (all rows when 'all').
 */
export function documentScores(
  mass: Float32Array | Float64Array,
  rows: number,
  heads: number,
  docs: number,
  p: Pick<ResolvedCacheFocus, 'scoreTokens' | 'headReduction' | 'normalize'>,
  lengths: ArrayLike<number>,
): Float64Array {
  const first = p.scoreTokens === 'all' ? 0 : Math.max(0, rows - p.scoreTokens.last);
  const out = new Float64Array(docs);
  for (let t = first; t < rows; t++) {
    for (let d = 0; d < docs; d++) {
      let r = p.headReduction === 'max' ? -Infinity : 0;
      for (let h = 0; h < heads; h++) {
        const m = mass[(t * heads + h) * docs + d]!;
        r = p.headReduction === 'max' ? Math.max(r, m) : r + m;
      }
      if (p.headReduction === 'mean') r /= heads;
      out[d] = out[d]! + r;
    }
  }
  const n = rows - first;
  for (let d = 0; d < docs; d++) {
    out[d] = out[d]! / n;
    if (p.normalize === 'length') out[d] = out[d]! / Math.max(1, lengths[d]!);
  }
  return out;
}

/**
 * The documents a keep rule keeps of `held` (document indices in listed order) ranked by
 * `score` (indexed by document): returned in listed order. Ties keep the earlier document.
 */
export function keepDocuments(held: readonly number[], score: ArrayLike<number>, rule: KeepRule): number[] {
  const ranked = [...held].sort((a, b) => score[b]! - score[a]! || a - b);
  let k: number;
  if ('topK' in rule) k = Math.min(rule.topK, held.length);
  else if ('fraction' in rule) k = Math.min(held.length, Math.ceil(rule.fraction * held.length));
  else {
    // The fewest highest-scored documents whose share of the held documents' total reaches m.
    const total = held.reduce((s, d) => s + Math.max(0, score[d]!), 0);
    k = held.length;
    if (total > 0) {
      let acc = 0;
      for (let i = 0; i < ranked.length; i++) {
        acc += Math.max(0, score[ranked[i]!]!) / total;
        if (acc >= rule.mass - 1e-12) {
          k = i + 1;
          break;
        }
      }
    }
  }
  const kept = new Set(ranked.slice(0, Math.max(1, k)));
  return held.filter((d) => kept.has(d));
}

/**
 * First positions of the kept documents after an allocation (indexed like `kept`): 'align'
 * packs them in listed order from `start`; 'sort' in ascending score (the most relevant last,
 * nearest the query; ties by listed order); 'none' keeps `current`.
 */
export function allocate(
  kept: readonly number[],
  lengths: ArrayLike<number>,
  score: ArrayLike<number>,
  allocation: 'align' | 'sort' | 'none',
  start: number,
  current: ArrayLike<number>,
): Map<number, number> {
  const out = new Map<number, number>();
  if (allocation === 'none') {
    for (const d of kept) out.set(d, current[d]!);
    return out;
  }
  const order = allocation === 'align' ? [...kept] : [...kept].sort((a, b) => score[a]! - score[b]! || a - b);
  let at = start;
  for (const d of order) {
    out.set(d, at);
    at += lengths[d]!;
  }
  return out;
}

/**
 * Initial first positions of documents laid out from `start` in listed order, in parallel
 * windows when they do not fit below `limit` (exclusive): each window starts at `start` and is
 * filled in listed order; a document that would cross `limit` opens the next window.
 */
export function windowLayout(lengths: ArrayLike<number>, start: number, limit: number): number[] {
  const out: number[] = [];
  let at = start;
  for (let d = 0; d < lengths.length; d++) {
    const n = lengths[d]!;
    if (start + n > limit) throw new InvalidArgumentError(`documents[${d}]: ${n} tokens do not fit the model's positions after the prefix`, 'documents');
    if (at + n > limit) at = start;
    out.push(at);
    at += n;
  }
  return out;
}
