// SnapKV on one sequence. Tokens are appended at the next slot; each step's attention, summed per KV head
// over the group's query heads and over the step's last `window` rows only (the kernels'
// col_last_rows), accumulates into an observation score per slot. A compression runs once the
// sequence holds more than `budget` tokens and at least `window` query rows have been scored
// since the last one (rows are counted from the step that first reached the budget): every
// layer and KV head keeps its newest `window` tokens and the `budget - window` others with the
// highest pooled score (snapKeep), through one native gatherHeads that also re-rotates every
// kept key to its slot's rank. Positions go by slot, as for the other bounded policies here
// (the paper keeps the prompt's positions; it compresses a prompt once, while here generation
// goes on in fixed memory and positions must stay inside the model's range).
// A prompt fed in chunks of `window` tokens or more is scored by exactly its last `window`
// queries, and so is each later compression during decoding (one row a step); pieces shorter
// than the window that straddle the budget can add up to a few more rows.
// The work of a step is deferred to just before the next one (prepare), so that a generation
// that re-reads the last chunk finds it not yet applied (dropFrom), as for the cascading cache.
import type { NativeModel, NativeSequence } from '../binding.js';
import type { BoundedPolicyRuntime } from './bounded-runtime.js';
import { type ResolvedSnapKVPolicy, snapKeep } from './snapkv.js';

interface Pending {
  first: number;
  count: number;
  sums: Float32Array;
}

export class SnapKVRuntime implements BoundedPolicyRuntime {
  readonly #policy: ResolvedSnapKVPolicy;
  readonly #layers: number;
  readonly #kvHeads: number;
  readonly #model: NativeModel;
  readonly #native: () => NativeSequence;
  // Per layer and head (layer-major): the stream index held in each slot; every head holds as many.
  #tokens: number[][] = [];
  // Per layer and head: the observation score of each slot since the last compression (null: none yet).
  #scores: (Float64Array | null)[] = [];
  #rows = 0;
  #pending: Pending | null = null;
  #fed = 0;

  constructor(setup: { policy: ResolvedSnapKVPolicy; layers: number; kvHeads: number; model: NativeModel; native: () => NativeSequence }) {
    this.#policy = setup.policy;
    this.#layers = setup.layers;
    this.#kvHeads = setup.kvHeads;
    this.#model = setup.model;
    this.#native = setup.native;
    this.reset();
  }

  readonly wantsScores = true;

  get scoreOptions(): { scoreRows: number } {
    return { scoreRows: this.#policy.window };
  }

  get capacity(): number {
    return this.#policy.budget + this.#policy.window;
  }

  // The prompt goes in the scheduler's chunks: the larger, the closer to one SnapKV pass.
  readonly maxChunk = Number.MAX_SAFE_INTEGER;

  claim(chunk: number): number {
    // Held before a step, its chunk, and the scratch rows of a compression (one per kept slot).
    return this.capacity + chunk + this.#policy.budget;
  }

  get held(): number {
    return this.#tokens[0]!.length + (this.#pending?.count ?? 0);
  }

  // Stream index of the next token minus its position (its slot).
  get positionOffset(): number {
    return this.#fed + (this.#pending?.count ?? 0) - this.held;
  }

  get kvHeads(): number {
    return this.#kvHeads;
  }

  reset(): void {
    this.#tokens = Array.from({ length: this.#layers * this.#kvHeads }, () => []);
    this.#scores = Array.from({ length: this.#layers * this.#kvHeads }, () => null);
    this.#rows = 0;
    this.#pending = null;
    this.#fed = 0;
  }

  after(first: number, count: number, columnSums: Float32Array | null): void {
    if (this.#pending) throw new Error('snapkv: a step ran before the previous one was applied');
    if (first !== this.#fed) throw new Error(`snapkv: step fed stream token ${first}, expected ${this.#fed}`);
    if (!columnSums) throw new Error('snapkv: the step returned no column sums');
    this.#pending = { first, count, sums: columnSums };
  }

  prepare(): void {
    const pending = this.#pending;
    if (!pending) return;
    this.#pending = null;
    const { first, count, sums } = pending;
    const { budget, window } = this.#policy;
    const held = this.#tokens[0]!.length + count;
    const slots = held; // the layer's rows in the step: the cache, then the chunk
    // Rows scored: a step of `window` rows or more starts afresh with its last `window` (the
    // kernel's limit); below the budget nothing counts yet; else the step's rows add up.
    let fresh: boolean;
    if (count >= window) [fresh, this.#rows] = [true, window];
    else if (held <= budget) [fresh, this.#rows] = [true, 0];
    else [fresh, this.#rows] = [this.#rows === 0, this.#rows + count];
    for (let i = 0; i < this.#tokens.length; i++) {
      const tokens = this.#tokens[i]!;
      for (let k = 0; k < count; k++) tokens.push(first + k);
      const at = i * slots; // (layer, head) rows of the packed (layers, kvHeads, slots) sums
      const prev = fresh ? null : this.#scores[i]!;
      const next = new Float64Array(slots);
      if (prev) next.set(prev);
      for (let s = 0; s < slots; s++) next[s]! += sums[at + s]!;
      this.#scores[i] = next;
    }
    this.#fed = first + count;
    if (held <= budget || this.#rows < window) return;
    // Compress every layer and head to `budget` slots.
    const plans: { layer: number; sources: Int32Array; positions: Int32Array }[] = [];
    const ranks = Int32Array.from({ length: budget }, (_, i) => i);
    for (let l = 0; l < this.#layers; l++) {
      const sources = new Int32Array(this.#kvHeads * budget);
      for (let g = 0; g < this.#kvHeads; g++) {
        const i = l * this.#kvHeads + g;
        const kept = snapKeep(this.#scores[i]!, held, this.#policy);
        sources.set(kept, g * budget);
        const tokens = this.#tokens[i]!;
        this.#tokens[i] = kept.map((s) => tokens[s]!);
        this.#scores[i] = null;
      }
      plans.push({ layer: l, sources, positions: ranks });
    }
    this.#rows = 0;
    this.#model.gatherHeads(this.#native(), plans);
  }

  dropFrom(from: number): number {
    const p = this.#pending;
    if (p && from >= p.first) {
      this.#native().truncate(p.count);
      this.#pending = null;
      return p.first;
    }
    // Applied already (its scores are counted, maybe a compression ran): fed again from the start.
    this.#native().clear();
    this.reset();
    return 0;
  }

  sources(layer: number): readonly number[] {
    return this.headSources(layer, 0);
  }

  headSources(layer: number, head: number): readonly number[] {
    const out = [...this.#tokens[layer * this.#kvHeads + head]!];
    const p = this.#pending;
    if (p) for (let k = 0; k < p.count; k++) out.push(p.first + k);
    return out;
  }
}
