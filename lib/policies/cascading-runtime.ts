// The Cascading KV cache on one sequence. Every layer and KV head runs its own CascadeModel
// (cascade-model.ts, the insertion rule and its specification); the engine keeps each layer's
// KV in the model's slots, one row per slot, each KV head's column of the row holding that
// head's token. Occupied slots are always a prefix of the slots (the fill goes cascade by
// cascade), every head holds the same number, and positions go by slot rank alike for every
// head, so a layer is a plain dense run of rows at shared positions: only which token each
// head keeps in a row differs. Before each step (per-head-runtime.ts: deferred), the last one:
//   1. its column sums (per query head, EMA-weighted by row age in the attention kernel:
//      col_log_decay) become each model's slot and chunk scores, times (1 - beta);
//   2. each model inserts its chunk and says where every slot's content comes from;
//   3. one native gatherHeads moves each head's rows there (staged through scratch pages) and
//      re-rotates every key to its slot's new rank.
import { CascadeModel } from './cascade-model.js';
import type { ResolvedCascadingPolicy } from './cascading.js';
import { type PendingChunk, PerHeadRuntime, type RuntimeSetup } from './per-head-runtime.js';

export class CascadingRuntime extends PerHeadRuntime {
  readonly #policy: ResolvedCascadingPolicy;
  // (layers * kvHeads) models, layer-major.
  #models: CascadeModel[] = [];

  constructor(policy: ResolvedCascadingPolicy, setup: RuntimeSetup) {
    super(setup);
    this.#policy = policy;
    this.reset();
  }

  get scoreOptions(): { columnSumsPerHead: boolean; scoreDecay: number } {
    return { columnSumsPerHead: true, scoreDecay: this.#policy.beta };
  }

  /** Slots: sinks + cascades * window. */
  get capacity(): number {
    return this.#policy.sinks + this.#policy.cascades * this.#policy.window;
  }

  /** Strided prefill: at most `stride` tokens a step, each chunk attending to the cache and itself. */
  get maxChunk(): number {
    return this.#policy.stride;
  }

  // The cache, the chunk, and the scratch rows a chunk's insertion stages its moves through (at
  // most one per destination slot and head, shared by the heads).
  claim(chunk: number): number {
    const c = Math.min(chunk, this.maxChunk);
    return this.capacity + c + Math.min(this.capacity, c * this.#policy.cascades);
  }

  reset(): void {
    const p = this.#policy;
    this.#models = Array.from(
      { length: this.layers * this.kvHeads },
      () => new CascadeModel({ sinks: p.sinks, window: p.window, cascades: p.cascades, beta: p.beta, headReduction: p.headReduction, groupSize: this.group }),
    );
    this.resetPending();
  }

  protected heldCount(): number {
    return this.#models[0]!.length;
  }

  protected heldTokens(layer: number, head: number): readonly number[] {
    const state = this.#models[layer * this.kvHeads + head]!.state();
    return Array.from(state.tokens.subarray(0, state.length));
  }

  protected apply({ first, count, sums }: PendingChunk): void {
    const H = this.kvHeads * this.group;
    const cap = this.capacity;
    const scale = 1 - this.#policy.beta;
    const tokens = Int32Array.from({ length: count }, (_, k) => first + k);
    // Score rows, one per query head of a group, reused for every layer and head (slots past
    // the cache's length are never read: the model reads occupied slots only).
    const slotScores = Array.from({ length: this.group }, () => new Float64Array(cap));
    const chunkScores = Array.from({ length: this.group }, () => new Float64Array(count));
    const plans: { layer: number; sources: Int32Array; positions: Int32Array }[] = [];
    let at = 0;
    for (let l = 0; l < this.layers; l++) {
      const held = this.#models[l * this.kvHeads]!.length;
      const slots = held + count; // the layer's rows in the step: the cache, then the chunk
      let sources = new Int32Array(0);
      let n = 0;
      for (let g = 0; g < this.kvHeads; g++) {
        for (let hh = 0; hh < this.group; hh++) {
          const row = at + (g * this.group + hh) * slots;
          const s = slotScores[hh]!;
          for (let j = 0; j < held; j++) s[j] = scale * sums[row + j]!;
          const c = chunkScores[hh]!;
          for (let k = 0; k < count; k++) c[k] = scale * sums[row + held + k]!;
        }
        const model = this.#models[l * this.kvHeads + g]!;
        const gather = model.insertTrusted(tokens, slotScores, chunkScores);
        if (g === 0) {
          n = model.length; // every head of the layer holds as many
          sources = new Int32Array(this.kvHeads * n);
        }
        for (let s = 0; s < n; s++) {
          const from = gather[s]!;
          sources[g * n + s] = from < cap ? from : held + (from - cap);
        }
      }
      at += H * slots;
      plans.push({ layer: l, sources, positions: this.#models[l * this.kvHeads]!.slotPositions().subarray(0, n) });
    }
    this.model.gatherHeads(this.native(), plans);
  }
}
