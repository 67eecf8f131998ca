// LaCache (ladder-shaped KV cache, arXiv 2507.14204): a fixed budget of cached tokens per layer,
// kept by compacting old tokens in "ladders" that differ from layer to layer, so that the layers
// together still cover what each one alone dropped. This file is the policy's host-side part:
// its options, and the planner that says, after each append, which cache slots every layer
// keeps. It follows the authors' PyTorch reference (GATECH-EIC/LaCache, `LaCache.__call__` in
// ppl/lacache/kv_cache.py and its LongBench/NIAH twins) step for step; the engine applies the
// plan as one gather per layer and re-rotates keys to their slots.
//
// The authors' compaction, in our words (L layers, budget C, sinks s0, span S, overlap O):
//
//   Geometry. A ladder block is B = 1 + ceil((L - S) / (S - O)) consecutive cache slots; each
//   layer keeps A = min(ceil(S / (S - O)), B) of them, so a block frees R = B - A slots. Layer i
//   keeps the block's slots (i mod (R + 1)) .. (i mod (R + 1)) + A - 1: the kept window steps
//   one slot per layer and wraps every R + 1 layers, and since R + 1 <= L the layers together
//   keep every slot of the block.
//
//   Nothing happens while the cache holds at most C tokens. The first time it holds more, the
//   budget grows once, for good, by floor(R / 2) (the authors' "compensation to match the
//   average size"); from then on every compaction brings each layer back to at most C' = C +
//   floor(R / 2) slots. A cursor, starting at s0, separates the compacted region [s0, cursor)
//   from the recent tail. To shed x = n - C' slots, the next ceil(x / R) whole blocks after the
//   cursor are laddered and the cursor moves past their A kept slots each; the cursor may go as
//   far as C' - L. When that room cannot absorb x, the compaction "starts over": it first
//   ladders what room is left, then ladders again from the sinks on, over the already compacted
//   slots, in blocks of B_t = B + (t - 1)(B - 1) slots keeping A slots at stride t per layer
//   (window start i mod (B_t - A + 1)), where t = ceil(what remains / what one start-over round
//   can shed) is the number of rounds the excess needs; the cursor restarts after the sinks.
//   Start-overs thin the old context progressively, so generation goes on in constant memory.
//   Appending one token at a time (the perplexity runs), t is always 1.
//
// Chunks. The authors call the compaction after every forward pass: after each token in their
// perplexity runs, and in LongBench/NIAH once after the whole prompt's prefill, then after each
// generated token. One call sheds a chunk's whole excess at once, in t start-over rounds. We
// offer both, each returning one gather per layer for the whole chunk:
//   append(count)       as if the tokens came one at a time, a compaction after each (the
//                       perplexity runs). The plan does not depend on how the stream is cut.
//   appendChunk(count)  one call after the chunk (the LongBench/NIAH prompt). Two findings from
//                       running the authors' code on long chunks: when t is large, the rounds'
//                       blocks (B_t slots each) reach past the end of the cache, so the newest
//                       tokens are laddered too and the cache can end well below the budget
//                       (we reproduce this); and with overlap > 0 (A >= 2) and t >= 2 their
//                       index lists can repeat a slot, go out of order or run past the end (an
//                       IndexError, or a token cached twice). A chunk they cannot plan is cut:
//                       the largest part one call takes in a single round (singleRoundLimit),
//                       then the rest, each part one authors' call.
//
// Positions. Keys are cached without RoPE and rotated at their slot each step: after an append,
// layer l's keys sit at positions 0..n-1 in cache order (`positions(l)`), and the next token's
// query and key at n. The authors' LongBench/NIAH generation loop places the query exactly so;
// their perplexity loop lets the query position stop at the largest cache length reached (C')
// while the new key sits at its slot n <= C', a small difference we do not copy.
import { InvalidArgumentError, KvfocusError } from '../errors.js';
import { describe } from '../tensor.js';

/** The authors' number of start ("sink") tokens in their perplexity runs. */
export const DEFAULT_LACACHE_SINKS = 4;

/**
 * LaCache: `{ name: 'lacache', budget, span, overlap, sinks? }`. Every layer keeps at most
 * `budget` tokens (plus a one-time floor(R / 2), see `ladderGeometry`), compacting old ones
 * in ladders across layers; generation can go on for ever in that memory.
 */
export interface LaCachePolicy {
  name: 'lacache';
  /** Tokens each layer keeps (the authors' cache_size; 256 in their perplexity runs). */
  budget: number;
  /** Ladder span S: with overlap 0, roughly how many layers keep each old token (the authors use 16). */
  span: number;
  /** Ladder overlap O in [0, span): slots shared by neighbouring layers' windows (the authors use 0). */
  overlap: number;
  /** Start tokens every layer always keeps (default 4, as in the authors' perplexity runs). */
  sinks?: number;
}

/** A LaCache policy with its defaults filled in. */
export type ResolvedLaCachePolicy = Readonly<Required<LaCachePolicy>>;

/** Every option key of the policy, `name` included. */
export const LACACHE_OPTIONS: readonly string[] = ['name', 'budget', 'span', 'overlap', 'sinks'];

const MAX_TOKENS = 2 ** 31 - 1; // source indices are Int32

function integerOption(policy: Record<string, unknown>, key: string, min: number, max: number, rule: string): number {
  const value = policy[key];
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`policy.${key}: expected ${rule} but received ${describe(value)}`, 'policy');
  }
  return value;
}

/** Validates a `{ name: 'lacache', ... }` object (keys already checked) and fills in the defaults. */
export function resolveLaCache(policy: Record<string, unknown>): ResolvedLaCachePolicy {
  const budget = integerOption(policy, 'budget', 1, MAX_TOKENS, 'an integer >= 1 (tokens kept per layer)');
  const span = integerOption(policy, 'span', 1, MAX_TOKENS, 'an integer >= 1');
  const overlap = integerOption(policy, 'overlap', 0, span - 1, `an integer in [0, span - 1] = [0, ${span - 1}]`);
  const sinks = policy.sinks === undefined
    ? DEFAULT_LACACHE_SINKS
    : integerOption(policy, 'sinks', 0, MAX_TOKENS, 'an integer >= 0');
  if (sinks >= budget) {
    throw new InvalidArgumentError(`policy.budget: a budget of ${budget} leaves no room after ${sinks} sinks; expected budget > sinks`, 'policy');
  }
  return Object.freeze({ name: 'lacache' as const, budget, span, overlap, sinks });
}

/** The ladder's shape on a model of a given depth (the authors' "cache size per ladder before / after"). */
export interface LadderGeometry {
  /** B = 1 + ceil((layers - span) / (span - overlap)): slots per ladder block. */
  readonly block: number;
  /** A = min(ceil(span / (span - overlap)), B): slots of a block each layer keeps. */
  readonly keep: number;
  /** R = B - A: slots a block frees in every layer. */
  readonly drop: number;
  /** floor(R / 2): added to the budget, once, at the first compaction. */
  readonly compensation: number;
}

/** The ladder geometry of `policy` on `layers` layers, computed as the authors do (floating-point ceil). */
export function ladderGeometry(policy: Pick<LaCachePolicy, 'span' | 'overlap'>, layers: number): LadderGeometry {
  const step = policy.span - policy.overlap;
  const block = 1 + ceilDiv(layers - policy.span, step);
  const keep = Math.min(ceilDiv(policy.span, step), block);
  const drop = block - keep;
  return { block, keep, drop, compensation: Math.floor(drop / 2) };
}

/** Python's math.ceil(a / b) on integers; never -0. */
function ceilDiv(a: number, b: number): number {
  return Math.ceil(a / b) + 0;
}

/** Python's a // b on integers. */
function floorDiv(a: number, b: number): number {
  return Math.floor(a / b) + 0;
}

/** The compaction's state between calls (the authors' cache_size, ladder_cursor, compensation flag). */
export interface LadderState {
  /** The per-layer size compactions bring the cache back to: budget, then budget + compensation. */
  readonly capacity: number;
  /** First slot after the sinks and the compacted region. */
  readonly cursor: number;
  /** Whether the one-time compensation has been applied (at the first compaction). */
  readonly compensated: boolean;
  /** Compactions so far that started over from the sinks. */
  readonly startOvers: number;
}

/** What one append does to every layer's cache. */
export interface LaCacheEdit {
  /** Slots each layer holds once the appended tokens are in, before the edit: old length + count. */
  readonly slots: number;
  /** Slots each layer holds after the edit (the same for every layer). */
  readonly length: number;
  /**
   * Per layer, the slots to keep, increasing, as gather indices into [0, slots): the layer's
   * new cache is slots[keep[0]], slots[keep[1]], ... null when every layer keeps every slot.
   */
  readonly keep: readonly Int32Array[] | null;
}

interface LadderConfig {
  readonly layers: number;
  readonly sinks: number;
  readonly geometry: LadderGeometry;
}

/** The start-over part of a compaction: `rounds` rounds at once, from the sinks. */
interface StartOver {
  /** t: the rounds the remaining excess needs. */
  readonly rounds: number;
  /** B_t = B + (t - 1)(B - 1): slots per block. */
  readonly block: number;
  /** Blocks laddered from the sinks. */
  readonly ladders: number;
  /** First slot of the first pass's output after those blocks. */
  readonly tail: number;
}

/** The arithmetic of one call of the authors' compaction on caches of `slots` slots. */
interface CompactionPlan {
  /** The state after the call. */
  readonly state: LadderState;
  readonly slots: number;
  /** The cursor before the call: the first pass ladders blocks from there. */
  readonly cursor: number;
  /** Blocks the first pass ladders (0 and no start-over: every slot stays). */
  readonly ladders: number;
  /** Slots after the first pass. */
  readonly firstLength: number;
  /** Slots after the call. */
  readonly length: number;
  /** Present when the call starts over. */
  readonly startOver: StartOver | null;
  /** False where the first pass's blocks run past the last slot (the authors' gather would fail). */
  readonly inRange: boolean;
}

/** One call of the authors' compaction on caches of `slots` slots (every layer the same length). */
function planCompaction(config: LadderConfig, state: LadderState, slots: number): CompactionPlan {
  const none = { state, slots, cursor: state.cursor, ladders: 0, firstLength: slots, length: slots, startOver: null, inRange: true };
  if (slots <= state.capacity) return none;
  const { layers, sinks } = config;
  const { block, keep, drop, compensation } = config.geometry;
  const capacity = state.compensated ? state.capacity : state.capacity + compensation;
  const excess = slots - capacity; // <= 0 only on the compensating call: then nothing is dropped
  const room = capacity - state.cursor - layers; // slots the cursor may still advance before a start-over
  const roomDrop = floorDiv(room, keep) * drop;
  const startsOver = excess > roomDrop;
  const cursorStep = startsOver ? room : ceilDiv(excess, drop) * keep;
  const ladders = floorDiv(cursorStep, keep);
  const cursor = state.cursor;
  const tail = cursor + block * ladders;
  const inRange = tail <= slots;
  const firstLength = cursor + keep * ladders + Math.max(0, slots - tail);
  if (!startsOver) {
    const next: LadderState = { capacity, cursor: cursor + cursorStep, compensated: true, startOvers: state.startOvers };
    return { state: next, slots, cursor, ladders, firstLength, length: firstLength, startOver: null, inRange };
  }
  const roundDrop = floorDiv(capacity - sinks - layers, keep) * drop;
  const remaining = excess - roomDrop;
  const rounds = ceilDiv(remaining, roundDrop);
  const roundBlock = block + (rounds - 1) * (block - 1);
  const roundCursorStep = ceilDiv(remaining, roundBlock - keep) * keep;
  const roundLadders = floorDiv(roundCursorStep, keep);
  const roundTail = sinks + roundBlock * roundLadders;
  return {
    state: { capacity, cursor: sinks + roundCursorStep, compensated: true, startOvers: state.startOvers + 1 },
    slots,
    cursor,
    ladders,
    firstLength,
    length: sinks + keep * roundLadders + Math.max(0, firstLength - roundTail),
    startOver: { rounds, block: roundBlock, ladders: roundLadders, tail: roundTail },
    inRange,
  };
}

/**
 * The slots layer `layer` keeps in a planned compaction, increasing, or undefined where the
 * authors' index lists would repeat a slot, go out of order or run past the end.
 */
function keptSlots(config: LadderConfig, plan: CompactionPlan, layer: number): Int32Array | undefined {
  if (!plan.inRange) return undefined;
  const { block, keep, drop } = config.geometry;
  const { cursor, ladders, slots } = plan;
  // The first pass: the blocks after the cursor, laddered; the window starts at layer mod (R + 1).
  const first = new Int32Array(plan.firstLength);
  let p = 0;
  for (let s = 0; s < cursor; s++) first[p++] = s;
  const offset = layer % (drop + 1);
  for (let j = 0; j < ladders; j++) {
    for (let k = 0; k < keep; k++) first[p++] = cursor + offset + block * j + k;
  }
  for (let s = cursor + block * ladders; s < slots; s++) first[p++] = s;
  const round = plan.startOver;
  if (round === null) return first;
  // The start-over: blocks of B_t slots of the first pass from the sinks, A slots at stride t.
  const out = new Int32Array(plan.length);
  const roundOffset = layer % (round.block - keep + 1);
  let q = 0;
  let last = -1;
  const take = (i: number): boolean => {
    if (i <= last || i >= plan.firstLength) return false;
    out[q++] = first[i]!;
    last = i;
    return true;
  };
  for (let s = 0; s < config.sinks; s++) if (!take(s)) return undefined;
  for (let j = 0; j < round.ladders; j++) {
    for (let k = 0; k < keep; k++) if (!take(config.sinks + roundOffset + round.block * j + round.rounds * k)) return undefined;
  }
  for (let s = round.tail; s < plan.firstLength; s++) if (!take(s)) return undefined;
  return out;
}

/**
 * Every layer's cache during one append, as indices into that append's frame (the slots before
 * it, then its new tokens): per layer a settled prefix (the sinks and the ladders made so far),
 * then per-layer slots not yet laddered (what a start-over left), then a run of consecutive
 * frame slots that every layer holds alike (the recent tail). A ladder moves one block from the
 * front of the last two into the prefix, O(layers x B), so a long append costs O(layers) per
 * token between start-overs; a start-over writes every list out, O(layers x cache length).
 */
class WorkingCache {
  readonly #layers: number;
  readonly #settled: Int32Array[];
  #settledLength = 0;
  #pending: Int32Array[];
  #pendingHead = 0;
  #pendingEnd = 0;
  #runStart: number; // frame slots [#runStart, #runEnd), held by every layer
  #runEnd: number; // always the frame slot of the next new token
  /** Whether any slot was dropped. */
  changed = false;

  constructor(layers: number, maxLength: number) {
    this.#layers = layers;
    this.#settled = Array.from({ length: layers }, () => new Int32Array(maxLength));
    this.#pending = Array.from({ length: layers }, () => new Int32Array(0));
    this.#runStart = 0;
    this.#runEnd = 0;
  }

  /** Starts an append on caches of `slots` slots: frame slots 0..slots-1 in every layer. */
  begin(slots: number): void {
    this.#settledLength = 0;
    this.#pendingHead = this.#pendingEnd = 0;
    this.#runStart = 0;
    this.#runEnd = slots;
    this.changed = false;
  }

  get length(): number {
    return this.#settledLength + (this.#pendingEnd - this.#pendingHead) + (this.#runEnd - this.#runStart);
  }

  /** Appends `count` new tokens (the next frame slots). */
  push(count: number): void {
    this.#runEnd += count;
  }

  /** The frame slot of layer `l`'s k-th slot after the settled prefix. */
  #front(l: number, k: number): number {
    const pending = this.#pendingEnd - this.#pendingHead;
    return k < pending ? this.#pending[l]![this.#pendingHead + k]! : this.#runStart + (k - pending);
  }

  // Drops the first `count` slots after the settled prefix.
  #consume(count: number): void {
    const pending = this.#pendingEnd - this.#pendingHead;
    if (count <= pending) {
      this.#pendingHead += count;
    } else {
      this.#pendingHead = this.#pendingEnd;
      this.#runStart += count - pending;
    }
  }

  /** A compaction without start-over that drops slots: `plan.ladders` (> 0) blocks from the cursor. */
  ladder(config: LadderConfig, plan: CompactionPlan): void {
    const { block, keep, drop } = config.geometry;
    const settle = plan.cursor - this.#settledLength;
    if (settle > 0) {
      for (let l = 0; l < this.#layers; l++) this.#writeFront(l, this.#settled[l]!, this.#settledLength, settle);
      this.#settledLength += settle;
      this.#consume(settle);
    }
    for (let j = 0; j < plan.ladders; j++) {
      for (let l = 0; l < this.#layers; l++) {
        const offset = l % (drop + 1);
        const settled = this.#settled[l]!;
        for (let k = 0; k < keep; k++) settled[this.#settledLength + k] = this.#front(l, offset + k);
      }
      this.#settledLength += keep;
      this.#consume(block);
    }
    this.changed = true;
  }

  // Writes layer l's first `count` slots after the settled prefix into out[at..].
  #writeFront(l: number, out: Int32Array, at: number, count: number): void {
    const fromPending = Math.min(count, this.#pendingEnd - this.#pendingHead);
    if (fromPending > 0) out.set(this.#pending[l]!.subarray(this.#pendingHead, this.#pendingHead + fromPending), at);
    for (let k = fromPending; k < count; k++) out[at + k] = this.#runStart + (k - fromPending);
  }

  /** Every layer's cache, written out. */
  lists(): Int32Array[] {
    const length = this.length;
    const settledLength = this.#settledLength;
    return this.#settled.map((settled, l) => {
      const out = new Int32Array(length);
      out.set(settled.subarray(0, settledLength));
      this.#writeFront(l, out, settledLength, length - settledLength);
      return out;
    });
  }

  /** Replaces every layer's cache (after a start-over): `lists`, settled up to `cursor`. */
  reset(lists: Int32Array[], cursor: number): void {
    for (let l = 0; l < this.#layers; l++) this.#settled[l]!.set(lists[l]!.subarray(0, cursor));
    this.#settledLength = cursor;
    this.#pending = lists.map((list) => list.subarray(cursor));
    this.#pendingHead = 0;
    this.#pendingEnd = lists[0]!.length - cursor;
    this.#runStart = this.#runEnd;
    this.changed = true;
  }
}

/**
 * LaCache's plan for one sequence: which input-stream tokens each layer keeps, in cache order,
 * as tokens are appended. Pure host-side arithmetic. An append costs O(layers x cache length)
 * for its edit, plus O(layers) per appended token.
 *
 * `append(count)` plans `count` tokens as if they came one at a time (the authors' perplexity
 * runs); `appendChunk(count)` as one forward pass of them followed by one compaction (their
 * LongBench/NIAH prompt). Either returns the edit the engine applies, one gather per layer;
 * after it, `kept(l)` and `positions(l)` describe layer l: keys at slot positions 0..n-1, and
 * the next query at n.
 */
export class LaCachePlanner {
  readonly policy: ResolvedLaCachePolicy;
  readonly layers: number;
  readonly geometry: LadderGeometry;
  readonly #config: LadderConfig;
  #state: LadderState;
  #tokens = 0; // input-stream length
  #length = 0; // slots every layer holds
  readonly #sources: Int32Array[]; // per layer, input-stream index of each slot (maxLength entries)
  readonly #work: WorkingCache;

  constructor(policy: LaCachePolicy, layers: number) {
    const resolved = resolveLaCache(policy as unknown as Record<string, unknown>);
    if (!Number.isInteger(layers) || layers < 1) {
      throw new InvalidArgumentError(`layers: expected an integer >= 1 but received ${describe(layers)}`, 'layers');
    }
    const geometry = ladderGeometry(resolved, layers);
    const { span, overlap, budget, sinks } = resolved;
    if (geometry.drop < 1) {
      throw new InvalidArgumentError(
        `policy.span: span ${span} with overlap ${overlap} on ${layers} layers keeps every slot of a ladder block ` +
          `(B = ${geometry.block}, A = ${geometry.keep}); expected a span below the layer count` +
          (overlap > 0 ? ' and a smaller overlap' : ''),
        'policy',
      );
    }
    const least = sinks + layers + geometry.keep - geometry.compensation;
    if (budget < least) {
      throw new InvalidArgumentError(
        `policy.budget: ${budget} is too small for ${layers} layers and ${sinks} sinks; expected at least ` +
          `sinks + layers + A - floor(R / 2) = ${least} (A = ${geometry.keep}, R = ${geometry.drop})`,
        'policy',
      );
    }
    this.policy = resolved;
    this.layers = layers;
    this.geometry = geometry;
    this.#config = { layers, sinks, geometry };
    this.#state = { capacity: budget, cursor: sinks, compensated: false, startOvers: 0 };
    this.#sources = Array.from({ length: layers }, () => new Int32Array(this.maxLength));
    this.#work = new WorkingCache(layers, this.maxLength);
  }

  /** Tokens appended so far (the input stream's length). */
  get tokenCount(): number {
    return this.#tokens;
  }

  /** Slots every layer holds now. */
  get length(): number {
    return this.#length;
  }

  /** The compaction's state: capacity, cursor, whether compensated, start-overs so far. */
  get state(): LadderState {
    return this.#state;
  }

  /** The most slots a layer holds after any append: budget + floor(R / 2). */
  get maxLength(): number {
    return this.policy.budget + this.geometry.compensation;
  }

  /**
   * The most tokens `appendChunk` takes in one call of the authors' compaction with at most
   * one start-over round: always one call with overlap 0; with overlap > 0, a larger chunk
   * that their code cannot plan is cut (see the file's head). An engine that wants their exact
   * chunk behaviour keeps its chunks within this.
   */
  get singleRoundLimit(): number {
    return this.#singleRoundLimitAt(this.#state, this.#length);
  }

  /**
   * Appends `count` tokens and compacts exactly as the authors' code does when they come one
   * at a time (a compaction after each), however many arrive in this call.
   */
  append(count: number): LaCacheEdit {
    this.#checkCount(count);
    return this.#plan(count, false);
  }

  /**
   * Appends `count` tokens and compacts once, as the authors' code does after one forward pass
   * of them (their LongBench/NIAH prompt): the whole excess is shed in one call, over as many
   * start-over rounds as it needs. With overlap > 0 a chunk their code cannot plan is cut into
   * parts of at most `singleRoundLimit` tokens, each one call.
   */
  appendChunk(count: number): LaCacheEdit {
    this.#checkCount(count);
    return this.#plan(count, true);
  }

  #checkCount(count: number): void {
    if (!Number.isInteger(count) || count < 0 || this.#tokens + count > MAX_TOKENS) {
      throw new InvalidArgumentError(`count: expected an integer >= 0 (at most ${MAX_TOKENS - this.#tokens} more tokens) but received ${describe(count)}`, 'count');
    }
  }

  // Runs the compactions `count` new tokens bring (one per token, or one per chunk) on a
  // working cache, then writes the edit: one gather per layer over the old slots + new tokens.
  #plan(count: number, chunked: boolean): LaCacheEdit {
    const before = this.#length;
    const work = this.#work;
    work.begin(before);
    let state = this.#state;
    let appended = 0;
    while (appended < count) {
      const length = work.length;
      const remaining = count - appended;
      // One at a time, nothing happens until the capacity is reached: take those tokens at once.
      let part = chunked ? remaining : length < state.capacity ? Math.min(remaining, state.capacity - length) : 1;
      let plan = planCompaction(this.#config, state, length + part);
      let keep = this.#startOverKeep(plan);
      if ((!plan.inRange || keep === undefined) && chunked) {
        part = Math.min(part, this.#singleRoundLimitAt(state, length));
        plan = planCompaction(this.#config, state, length + part);
        keep = this.#startOverKeep(plan);
      }
      if (!plan.inRange || keep === undefined) throw new KvfocusError(`lacache: no valid compaction of ${length + part} slots (internal error)`);
      work.push(part);
      if (keep !== null) {
        const lists = work.lists();
        work.reset(lists.map((list, l) => keep[l]!.map((s) => list[s]!)), plan.state.cursor);
      } else if (plan.ladders > 0) {
        work.ladder(this.#config, plan);
      }
      state = plan.state;
      appended += part;
    }
    const length = work.length;
    if (length > this.maxLength) throw new KvfocusError(`lacache: a compaction left ${length} slots, over ${this.maxLength} (internal error)`);
    const gathers = work.changed ? work.lists() : null;
    this.#state = state;
    this.#apply(before, count, gathers, length);
    return { slots: before + count, length, keep: gathers };
  }

  // Per layer the kept slots of a start-over (undefined: the authors' lists are invalid); null
  // when the plan does not start over.
  #startOverKeep(plan: CompactionPlan): Int32Array[] | null | undefined {
    if (plan.startOver === null) return null;
    const keep: Int32Array[] = [];
    for (let l = 0; l < this.layers; l++) {
      const slots = keptSlots(this.#config, plan, l);
      if (slots === undefined) return undefined;
      keep.push(slots);
    }
    return keep;
  }

  // The largest chunk one compaction sheds in at most one start-over round, from `length` slots.
  #singleRoundLimitAt(state: LadderState, length: number): number {
    const { layers, sinks, geometry } = this.#config;
    const capacity = state.compensated ? state.capacity : state.capacity + geometry.compensation;
    const roomDrop = floorDiv(capacity - state.cursor - layers, geometry.keep) * geometry.drop;
    const roundDrop = floorDiv(capacity - sinks - layers, geometry.keep) * geometry.drop;
    return Math.max(1, capacity + roomDrop + roundDrop - length);
  }

  // Updates every layer's sources: the frame is the old slots, then `count` new tokens. An
  // edit that keeps every slot only happens while they fit in maxLength slots.
  #apply(before: number, count: number, keep: Int32Array[] | null, length: number): void {
    const firstToken = this.#tokens;
    for (let l = 0; l < this.layers; l++) {
      const src = this.#sources[l]!;
      const gather = keep?.[l];
      if (gather === undefined) {
        for (let j = 0; j < count; j++) src[before + j] = firstToken + j;
        continue;
      }
      // In place: gather indices increase, so gather[j] >= j and slot gather[j] is still unread.
      for (let j = 0; j < gather.length; j++) {
        const s = gather[j]!;
        src[j] = s < before ? src[s]! : firstToken + (s - before);
      }
    }
    this.#tokens += count;
    this.#length = length;
  }

  #checkLayer(layer: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers) {
      throw new InvalidArgumentError(`layer: expected an integer in [0, ${this.layers - 1}] but received ${describe(layer)}`, 'layer');
    }
  }

  /** Input-stream index of every token layer `layer` keeps, in cache (slot) order. */
  kept(layer: number): Int32Array {
    this.#checkLayer(layer);
    return this.#sources[layer]!.slice(0, this.#length);
  }

  /** RoPE position of each of the layer's keys: its slot, 0..n-1 (the next query sits at n). */
  positions(layer: number): Int32Array {
    this.#checkLayer(layer);
    return Int32Array.from({ length: this.#length }, (_, i) => i);
  }
}
