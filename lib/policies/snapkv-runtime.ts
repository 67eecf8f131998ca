// SnapKV on one sequence. Tokens are appended at the next slot; each step's attention, summed
// per KV head over the group's query heads and over the step's last `window` rows only (the
// kernels' col_last_rows), accumulates into an observation score per slot. A compression runs
// once the sequence holds more than `budget` tokens and at least `window` query rows have been
// scored since the last one (rows are counted from the step that first reached the budget):
// every layer and KV head keeps its newest `window` tokens and the `budget - window` others with
// the highest pooled score (snapKeep), through one native gatherHeads that also re-rotates every
// kept key to its slot's rank. Positions go by slot, as for the other bounded policies here
// (the paper keeps the prompt's positions; it compresses a prompt once, while here generation
// goes on in fixed memory and positions must stay inside the model's range).
// A prompt fed in chunks of `window` tokens or more is scored by exactly its last `window`
// queries, and so is each later compression during decoding (one row a step); pieces shorter
// than the window that straddle the budget can add up to a few more rows. A step's work is
// deferred to just before the next one (per-head-runtime.ts).
import { type PendingChunk, PerHeadRuntime, type RuntimeSetup } from './per-head-runtime.js';
import { type ResolvedSnapKVPolicy, snapKeep } from './snapkv.js';

export class SnapKVRuntime extends PerHeadRuntime {
  readonly #policy: ResolvedSnapKVPolicy;
  // Per layer and head (layer-major): the stream index held in each slot.
  #tokens: number[][] = [];
  // Per layer and head: the observation score of each slot since the last compression (null: none yet).
  #scores: (Float64Array | null)[] = [];
  #rows = 0;

  constructor(policy: ResolvedSnapKVPolicy, setup: RuntimeSetup) {
    super(setup);
    this.#policy = policy;
    this.reset();
  }

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

  reset(): void {
    this.#tokens = Array.from({ length: this.layers * this.kvHeads }, () => []);
    this.#scores = Array.from({ length: this.layers * this.kvHeads }, () => null);
    this.#rows = 0;
    this.resetPending();
  }

  protected heldCount(): number {
    return this.#tokens[0]!.length;
  }

  protected heldTokens(layer: number, head: number): readonly number[] {
    return this.#tokens[layer * this.kvHeads + head]!;
  }

  protected apply({ first, count, sums }: PendingChunk): void {
    const { budget, window } = this.#policy;
    const held = this.#tokens[0]!.length + count; // the layer's rows in the step: the cache, then the chunk
    // Rows scored: a step of `window` rows or more starts afresh with its last `window` (the
    // kernel's limit); below the budget nothing counts yet; else the step's rows add up.
    let fresh: boolean;
    if (count >= window) [fresh, this.#rows] = [true, window];
    else if (held <= budget) [fresh, this.#rows] = [true, 0];
    else [fresh, this.#rows] = [this.#rows === 0, this.#rows + count];
    for (let i = 0; i < this.#tokens.length; i++) {
      const tokens = this.#tokens[i]!;
      for (let k = 0; k < count; k++) tokens.push(first + k);
      const at = i * held; // (layer, head) rows of the packed (layers, kvHeads, slots) sums
      const prev = fresh ? null : this.#scores[i]!;
      const next = new Float64Array(held);
      if (prev) next.set(prev);
      for (let s = 0; s < held; s++) next[s]! += sums[at + s]!;
      this.#scores[i] = next;
    }
    if (held <= budget || this.#rows < window) return;
    // Compress every layer and head to `budget` slots.
    const plans: { layer: number; sources: Int32Array; positions: Int32Array }[] = [];
    const ranks = Int32Array.from({ length: budget }, (_, i) => i);
    for (let l = 0; l < this.layers; l++) {
      const sources = new Int32Array(this.kvHeads * budget);
      for (let g = 0; g < this.kvHeads; g++) {
        const i = l * this.kvHeads + g;
        const kept = snapKeep(this.#scores[i]!, held, this.#policy);
        sources.set(kept, g * budget);
        const tokens = this.#tokens[i]!;
        this.#tokens[i] = kept.map((s) => tokens[s]!);
        this.#scores[i] = null;
      }
      plans.push({ layer: l, sources, positions: ranks });
    }
    this.#rows = 0;
    this.model.gatherHeads(this.native(), plans);
  }
}
