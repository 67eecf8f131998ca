// The cascading KV cache's insertion rule as plain TypeScript. One CascadeModel per layer and KV
// head records which input-stream token sits in which cache slot, the EMA of the attention each
// one received, and the RoPE position its key is read at. The engine will keep its KV pages in
// the same slots and follow the gather list each insert returns; the model is its specification
// and its test oracle. It follows the authors' latest code (jeffwillette/cascading_cache_2:
// the Triton kernel `_update_kv_cache_inner` of cascade/models/cascading_cache.py for insertion
// and positions, `cascade_attn_eager` of cascade/models/cascade_attention.py for the scores).
//
// Slots (capacity = sinks + cascades * window):
//   [0, sinks)                                  sink tokens, in arrival order, never evicted
//   [sinks + i*window, sinks + (i+1)*window)    cascade i: a circular buffer; once full, `start`
//                                               is its oldest slot and start-1 its newest
//
// The token arriving at step t (t counts every token inserted before it, sinks included):
//   - while fewer than `sinks` tokens are held as sinks, it becomes the next sink;
//   - else cascade i accepts it iff t <= sinks + cascades*window (the fill: every cascade accepts
//     every token until the cache is full, and one token more) or (t - sinks) mod 2^i == 0;
//   - the token enters cascade 0 (which accepts every token). A cascade that accepts and has a free
//     slot stores it there and the insert ends; one that accepts and is full stores it in its
//     oldest slot, advances `start`, and the oldest token is carried down to the next cascade; a
//     cascade that refuses and is empty stores it anyway; one that refuses and holds tokens
//     compares the carried token's score with its newest slot's and keeps the higher (a tie goes
//     to the carried token, which overwrites the newest slot), dropping the other. What falls off
//     the last cascade is dropped.
//   - Scores: before a chunk of q tokens is inserted, every cached token's score becomes
//     beta^q * score + the chunk's attention to it weighted (1 - beta) * beta^(q-1-j) for query row
//     j; a chunk token k starts from its own attention, sum over rows j >= k of
//     (1 - beta) * beta^(j-k) * p[j][k]. Per query head, then reduced (mean or max) over the query
//     heads of the KV head's GQA group.
//   - Positions are by slot rank: sinks 0..sinks-1, then the cascades from the last (oldest) to
//     cascade 0 (newest), each from its oldest slot to its newest, at contiguous positions; the
//     next chunk's queries follow (position = tokens held + row).
//
// Where the paper (as summarised in shared/METHODS.md §3) and the authors' code differ, this
// model follows the code:
//   1. Fill. The paper's schedule holds from the first token; the code (eager_fill, on in every
//      run) lets every cascade accept every token while t <= sinks + cascades*window, so the
//      cache fills as one sliding window: cascade 0 holds the newest `window` tokens, cascade 1
//      the next, and so on. The bound is `<=`: the first token after the cache is full still
//      shifts the whole cache by one and drops the oldest cached token. `eagerFill: false`
//      (kept for the authors' own tests, which run with it) applies the schedule from the start.
//   2. An empty cascade that refuses a carried token stores it anyway (only reachable without
//      the fill, since the fill leaves every cascade full).
//   3. The refused token is compared with the refusing cascade's newest slot, and a tie keeps the
//      incoming token. (The older PyTorch reference in the same file, CascadingKVCacheSlow,
//      compares with the oldest slot and overwrites the newest.)
//   4. A new token's score starts from its own attention within its chunk, not from 0, and is
//      weighted from its own row (beta^(j-k)), while cached tokens' weights count back from the
//      chunk's last row (beta^(q-1-j)): within a prefill chunk the two are on different clocks.
//      For a single-token step both are (1 - beta) * p.
//   5. Positions are by slot rank, not the tokens' original indices (the code's do_og_pos option,
//      off by default, would use original positions).
//   6. beta went from exp(-ln 100 / window) to 0.995 to 0.9999 (latest, the default here).
//   What this model does not copy from the code:
//   - The code keeps scores in fp16, where one decode step's decay by 0.9999 rounds away
//     (0.9999 * s rounds back to s); the model keeps float64.
//   - The code's prefill chunks (q > 1) take their scores from a Triton flash-attention kernel
//     that approximates them: weights by row position within its 64-row block, a running
//     softmax normaliser scaled by a guess of the blocks still to come, and cache scores read
//     from columns that start at the sinks (shifted by `sinks` slots). The model uses the exact
//     eager definition above for every chunk; the engine must supply exact sums.
//   - The code's `homogeneous_heads` option (one selection for all KV heads, reduced over every
//     query head) and 'median' reduction are not offered; each KV head selects on its own, as
//     in the code's default.
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';
import { type HeadReduction, resolveCascading } from './cascading.js';

export interface CascadeModelOptions {
  sinks: number;
  window: number;
  cascades: number;
  beta: number;
  headReduction: HeadReduction;
  /** Query heads that share this KV head (the GQA group), whose scores are reduced (default 1). */
  groupSize?: number;
  /**
   * The authors' `eager_fill` (default true, as in all their runs): every cascade accepts every
   * token until the cache is full. false applies the acceptance schedule from the first token.
   */
  eagerFill?: boolean;
}

/**
 * One chunk to insert, with the attention it produced. What the engine must supply, per KV head,
 * for each of the `groupSize` query heads g of its group (row g of each array), after the chunk
 * of q tokens attended to the layout chunkLayout(q) describes (every occupied slot, then the
 * chunk itself causally), with p_g[j][c] the softmax probability of query row j for column c
 * (columns 0..capacity-1 are slots, empty ones with probability 0; capacity + k is chunk token k):
 *
 *   slotScores[g][s]  = sum over j in [0, q)  of (1 - beta) * beta^(q-1-j) * p_g[j][s]
 *   chunkScores[g][k] = sum over j in [k, q)  of (1 - beta) * beta^(j-k)   * p_g[j][capacity + k]
 *
 * weighAttention() computes both from the probabilities (the CPU twin of what the attention
 * kernel accumulates). Entries for sink and empty slots are read but not used.
 */
export interface CascadeChunk {
  /** Input-stream index of each token of the chunk, in arrival order. */
  tokens: ArrayLike<number>;
  /** groupSize rows of `capacity` weighted column sums over the slots. */
  slotScores: readonly ArrayLike<number>[];
  /** groupSize rows of q weighted column sums over the chunk's own tokens. */
  chunkScores: readonly ArrayLike<number>[];
}

/** The cache of one layer and KV head, slot by slot. */
export interface CascadeState {
  /** Input-stream index held by each slot (see the slot layout above), -1 where empty. */
  tokens: Int32Array;
  /** RoPE position each slot's key is read at now, -1 where empty. */
  positions: Int32Array;
  /** Slots held (sinks included). */
  length: number;
  /** Position of the next query (and key): one past the highest position held. */
  nextPosition: number;
}

/** What one insert changed. */
export interface CascadeStep extends CascadeState {
  /**
   * Where each slot's KV comes from, read from the cache as it was before the insert: s in
   * [0, capacity) is that slot's previous content, capacity + k the chunk's token k; -1 where
   * empty.
   */
  gather: Int32Array;
  /**
   * The slots whose content changed (gather[s] !== s), highest first. Applied in this order, in
   * place, every write reads its source before that source is overwritten: tokens only move to
   * later cascades, never within one, and a cascade's slots come after the earlier cascades'.
   */
  writes: Int32Array;
  /** Input-stream indices held before the insert or arriving with it that are no longer held. */
  dropped: Int32Array;
}

/** What a chunk of q tokens attends to before it is inserted (strided prefill, decode: q = 1). */
export interface ChunkLayout {
  /** Occupied slots, in slot order: the cached keys every row of the chunk attends to. */
  slots: Int32Array;
  /** Input-stream index held by each of those slots. */
  tokens: Int32Array;
  /** RoPE position of each of those keys. */
  positions: Int32Array;
  /**
   * RoPE position of each chunk token's query and key: nextPosition + row. Row j also attends to
   * the chunk's tokens 0..j.
   */
  queryPositions: Int32Array;
}

function checkRows(rows: unknown, count: number, length: number, what: string): readonly ArrayLike<number>[] {
  if (!Array.isArray(rows) || rows.length !== count) {
    throw new InvalidArgumentError(`${what}: expected ${count} rows (one per query head of the group) but received ${describe(rows)}`, what);
  }
  for (let g = 0; g < count; g++) {
    const row = rows[g] as ArrayLike<unknown> | undefined;
    if (row === null || typeof row !== 'object' || row.length !== length) {
      throw new InvalidArgumentError(`${what}[${g}]: expected ${length} scores but received ${describe(row)}`, what);
    }
    for (let i = 0; i < length; i++) {
      const v = row[i];
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
        throw new InvalidArgumentError(`${what}[${g}][${i}]: expected a finite score >= 0 but received ${describe(v)}`, what);
      }
    }
  }
  return rows as readonly ArrayLike<number>[];
}

/**
 * The weighted column sums CascadeChunk asks for, from one query head's attention
 * probabilities: `rows[j]` is query row j's probabilities over the `capacity` slots and then the
 * q chunk tokens (causal: zero past column capacity + j).
 */
export function weighAttention(rows: readonly ArrayLike<number>[], capacity: number, beta: number): { slotScores: Float64Array; chunkScores: Float64Array } {
  const q = rows.length;
  const slotScores = new Float64Array(capacity);
  const chunkScores = new Float64Array(q);
  for (let j = 0; j < q; j++) {
    const row = rows[j]!;
    if (row.length !== capacity + q) {
      throw new InvalidArgumentError(`weighAttention: rows[${j}]: expected ${capacity + q} probabilities (capacity ${capacity} + chunk ${q}) but received ${row.length}`, 'rows');
    }
    const w = (1 - beta) * beta ** (q - 1 - j);
    for (let s = 0; s < capacity; s++) slotScores[s]! += w * row[s]!;
    for (let k = 0; k <= j; k++) chunkScores[k]! += (1 - beta) * beta ** (j - k) * row[capacity + k]!;
  }
  return { slotScores, chunkScores };
}

/** The prefill chunks of a prompt of `length` tokens: [start, end) every `stride` tokens, the last one shorter. */
export function stridedChunks(length: number, stride: number): { start: number; end: number }[] {
  const chunks: { start: number; end: number }[] = [];
  for (let start = 0; start < length; start += stride) chunks.push({ start, end: Math.min(length, start + stride) });
  return chunks;
}

/** The insertion rule of one layer and KV head (see the top of this file). */
export class CascadeModel {
  readonly sinks: number;
  readonly window: number;
  readonly cascades: number;
  readonly beta: number;
  readonly headReduction: HeadReduction;
  readonly groupSize: number;
  readonly eagerFill: boolean;
  /** sinks + cascades * window. */
  readonly capacity: number;

  // Per slot: input-stream index (-1 empty) and EMA score (cache slots only).
  readonly #tokens: Int32Array;
  readonly #scores: Float64Array;
  // Per slot, during an insert: where its content came from (see CascadeStep.gather).
  readonly #from: Int32Array;
  // Per cascade: its oldest slot once full (0 until then), and how many slots it holds.
  readonly #start: Int32Array;
  readonly #stored: Int32Array;
  #storedSinks = 0;
  // Tokens inserted so far: the step the next token arrives at.
  #seen = 0;
  #dropped: number[] = [];

  constructor(options: CascadeModelOptions) {
    const { sinks, window, cascades, beta, headReduction } = resolveCascading({ ...options });
    const groupSize = options.groupSize ?? 1;
    if (!Number.isInteger(groupSize) || groupSize < 1) {
      throw new InvalidArgumentError(`groupSize: expected an integer >= 1 (query heads per KV head) but received ${describe(groupSize)}`, 'groupSize');
    }
    this.sinks = sinks;
    this.window = window;
    this.cascades = cascades;
    this.beta = beta;
    this.headReduction = headReduction;
    this.groupSize = groupSize;
    this.eagerFill = options.eagerFill ?? true;
    this.capacity = sinks + cascades * window;
    this.#tokens = new Int32Array(this.capacity).fill(-1);
    this.#scores = new Float64Array(this.capacity);
    this.#from = new Int32Array(this.capacity);
    this.#start = new Int32Array(cascades);
    this.#stored = new Int32Array(cascades);
  }

  /** Tokens inserted so far (sinks included): the step the next token arrives at. */
  get seen(): number {
    return this.#seen;
  }

  /** Slots held (sinks included). */
  get length(): number {
    let n = this.#storedSinks;
    for (let i = 0; i < this.cascades; i++) n += this.#stored[i]!;
    return n;
  }

  /**
   * Whether cascade `cascade` accepts the token arriving at step `step` (for steps past the
   * sinks): always during the fill, else iff (step - sinks) mod 2^cascade == 0.
   */
  accepts(step: number, cascade: number): boolean {
    if (this.eagerFill && step <= this.sinks + this.cascades * this.window) return true;
    return (step - this.sinks) % 2 ** cascade === 0;
  }

  /** Each slot's EMA score; NaN for sinks and empty slots, which carry none. */
  scores(): Float64Array {
    const out = new Float64Array(this.capacity).fill(NaN);
    for (let s = this.sinks; s < this.capacity; s++) if (this.#tokens[s]! >= 0) out[s] = this.#scores[s]!;
    return out;
  }

  /** The cache now, slot by slot. */
  state(): CascadeState {
    const positions = this.#positions();
    const length = this.length;
    return { tokens: this.#tokens.slice(), positions, length, nextPosition: length };
  }

  /** What a chunk of `length` tokens attends to if it is inserted next. */
  chunkLayout(length: number): ChunkLayout {
    if (!Number.isInteger(length) || length < 0) {
      throw new InvalidArgumentError(`chunkLayout: length: expected an integer >= 0 but received ${describe(length)}`, 'length');
    }
    const all = this.#positions();
    const held = this.length;
    const slots = new Int32Array(held);
    let n = 0;
    for (let s = 0; s < this.capacity; s++) if (this.#tokens[s]! >= 0) slots[n++] = s;
    const queryPositions = new Int32Array(length);
    for (let j = 0; j < length; j++) queryPositions[j] = held + j;
    return {
      slots,
      tokens: slots.map((s) => this.#tokens[s]!),
      positions: slots.map((s) => all[s]!),
      queryPositions,
    };
  }

  /**
   * Inserts a chunk that attended to chunkLayout(q): updates the cached tokens' scores, then
   * places the chunk's tokens one by one in arrival order. Returns the cache afterwards and how
   * to get there from the cache before it.
   */
  insert(chunk: CascadeChunk): CascadeStep {
    if (chunk === null || typeof chunk !== 'object') {
      throw new InvalidArgumentError(`insert: chunk: expected { tokens, slotScores, chunkScores } but received ${describe(chunk)}`, 'chunk');
    }
    const tokens = chunk.tokens as ArrayLike<unknown>;
    if (tokens === null || typeof tokens !== 'object' || typeof tokens.length !== 'number') {
      throw new InvalidArgumentError(`insert: chunk.tokens: expected an array of input-stream indices but received ${describe(tokens)}`, 'chunk');
    }
    const q = tokens.length;
    for (let k = 0; k < q; k++) {
      const t = tokens[k];
      if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t >= 2 ** 31) {
        throw new InvalidArgumentError(`insert: chunk.tokens[${k}]: expected an input-stream index in [0, 2^31) but received ${describe(t)}`, 'chunk');
      }
    }
    const slotScores = checkRows(chunk.slotScores, this.groupSize, this.capacity, 'chunk.slotScores');
    const chunkScores = checkRows(chunk.chunkScores, this.groupSize, q, 'chunk.chunkScores');
    this.insertTrusted(tokens as ArrayLike<number>, slotScores, chunkScores);
    const writes: number[] = [];
    for (let s = this.capacity - 1; s >= 0; s--) {
      const from = this.#from[s]!;
      if (from >= 0 && from !== s) writes.push(s);
    }
    return { ...this.state(), gather: this.#from.slice(), writes: Int32Array.from(writes), dropped: Int32Array.from(this.#dropped) };
  }

  /**
   * @internal insert() without the checks of its arguments and without building its result,
   * for the engine's runtime (its scores come from the attention kernels in the shapes insert()
   * checks). Returns the gather (CascadeStep.gather): this model's own buffer, valid until the
   * next insert; `length` and slotPositions() give the rest.
   */
  insertTrusted(tokens: ArrayLike<number>, slotScores: readonly ArrayLike<number>[], chunkScores: readonly ArrayLike<number>[]): Int32Array {
    const q = tokens.length;
    const before = this.#tokens;
    for (let s = 0; s < this.capacity; s++) this.#from[s] = before[s]! >= 0 ? s : -1;
    this.#dropped = [];

    const decay = this.beta ** q;
    for (let s = this.sinks; s < this.capacity; s++) {
      if (before[s]! >= 0) this.#scores[s] = decay * this.#scores[s]! + this.#reduce(slotScores, s);
    }
    for (let k = 0; k < q; k++) this.#place(tokens[k]!, this.#reduce(chunkScores, k), this.capacity + k);
    return this.#from;
  }

  /** The RoPE position each slot's key is read at now (-1 where empty), as state().positions. */
  slotPositions(): Int32Array {
    return this.#positions();
  }

  // The GQA group's scores for one column, combined.
  #reduce(rows: readonly ArrayLike<number>[], column: number): number {
    if (this.headReduction === 'max') {
      let m = rows[0]![column]!;
      for (let g = 1; g < rows.length; g++) m = Math.max(m, rows[g]![column]!);
      return m;
    }
    let sum = 0;
    for (let g = 0; g < rows.length; g++) sum += rows[g]![column]!;
    return sum / rows.length;
  }

  #write(slot: number, token: number, score: number, from: number): void {
    this.#tokens[slot] = token;
    this.#scores[slot] = score;
    this.#from[slot] = from;
  }

  // One arriving token, with its score and where its KV comes from (capacity + k).
  #place(token: number, score: number, from: number): void {
    const step = this.#seen++;
    if (this.#storedSinks < this.sinks) {
      this.#write(this.#storedSinks++, token, 0, from);
      return;
    }
    let carried = token;
    let carriedScore = score;
    let carriedFrom = from;
    for (let i = 0; i < this.cascades; i++) {
      const base = this.sinks + i * this.window;
      const stored = this.#stored[i]!;
      const start = this.#start[i]!;
      if (this.accepts(step, i)) {
        if (stored < this.window) {
          this.#write(base + start + stored, carried, carriedScore, carriedFrom);
          this.#stored[i] = stored + 1;
          return;
        }
        // Full: the carried token takes the oldest slot; the oldest token is carried down.
        const slot = base + start;
        const evicted = this.#tokens[slot]!;
        const evictedScore = this.#scores[slot]!;
        const evictedFrom = this.#from[slot]!;
        this.#write(slot, carried, carriedScore, carriedFrom);
        this.#start[i] = (start + 1) % this.window;
        carried = evicted;
        carriedScore = evictedScore;
        carriedFrom = evictedFrom;
        continue;
      }
      if (stored === 0) {
        this.#write(base + start, carried, carriedScore, carriedFrom);
        this.#stored[i] = 1;
        return;
      }
      // Refused: the carried token competes with this cascade's newest slot; a tie keeps it.
      const newest = base + ((((start - 1) % stored) + stored) % stored);
      if (carriedScore >= this.#scores[newest]!) {
        this.#dropped.push(this.#tokens[newest]!);
        this.#write(newest, carried, carriedScore, carriedFrom);
      } else {
        this.#dropped.push(carried);
      }
      return;
    }
    this.#dropped.push(carried); // fell off the last cascade
  }

  // Positions by slot rank: sinks, then the cascades from the last to the first, each oldest first.
  #positions(): Int32Array {
    const positions = new Int32Array(this.capacity).fill(-1);
    for (let s = 0; s < this.#storedSinks; s++) positions[s] = s;
    let next = this.#storedSinks;
    for (let i = this.cascades - 1; i >= 0; i--) {
      const base = this.sinks + i * this.window;
      const stored = this.#stored[i]!;
      const start = this.#start[i]!;
      for (let r = 0; r < stored; r++) positions[base + ((start + r) % stored)] = next++;
    }
    return positions;
  }
}

/** The tokens held and their positions, in slot order, empty slots left out. */
export function keptInSlotOrder(state: CascadeState): { tokens: number[]; positions: number[] } {
  const tokens: number[] = [];
  const positions: number[] = [];
  state.tokens.forEach((t, s) => {
    if (t < 0) return;
    tokens.push(t);
    positions.push(state.positions[s]!);
  });
  return { tokens, positions };
}

/** The tokens held, in the order of their positions (the order a full-attention model would see them). */
export function tokensByPosition(state: CascadeState): number[] {
  const out: number[] = new Array<number>(state.length);
  state.tokens.forEach((t, s) => {
    if (t >= 0) out[state.positions[s]!] = t;
  });
  return out;
}

/**
 * Strided prefill of one layer and KV head: `tokens` in chunks of `stride`, each attending to
 * chunkLayout() of the cache before it (the engine's attention; here `attend` supplies the
 * scores) and then inserted. Returns each chunk's step.
 */
export function stridedPrefill(
  model: CascadeModel,
  tokens: ArrayLike<number>,
  stride: number,
  attend: (layout: ChunkLayout, chunk: number[]) => Pick<CascadeChunk, 'slotScores' | 'chunkScores'>,
): CascadeStep[] {
  if (!Number.isInteger(stride) || stride < 1) {
    throw new InvalidArgumentError(`stridedPrefill: stride: expected an integer >= 1 but received ${describe(stride)}`, 'stride');
  }
  return stridedChunks(tokens.length, stride).map(({ start, end }) => {
    const chunk = Array.from({ length: end - start }, (_, k) => tokens[start + k]!);
    const scores = attend(model.chunkLayout(chunk.length), chunk);
    return model.insert({ tokens: chunk, ...scores });
  });
}
