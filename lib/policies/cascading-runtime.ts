// The Cascading KV cache on one sequence. Every layer and KV head runs its own CascadeModel
// (cascade-model.ts, the insertion rule and its specification); the engine keeps each layer's
// KV in the model's slots, one row per slot, each KV head's column of the row holding that
// head's token. Occupied slots are always a prefix of the slots (the fill goes cascade by
// cascade), every head holds the same number, and positions go by slot rank alike for every
// head, so a layer is a plain dense run of rows at shared positions: only which token each
// head keeps in a row differs. After each step:
//   1. the step's column sums (per query head, EMA-weighted by row age in the attention kernel:
//      col_log_decay) become each model's slot and chunk scores, times (1 - beta);
//   2. each model inserts the step's chunk and says where every slot's content comes from;
//   3. one native gatherHeads moves each head's rows there (staged through scratch pages) and
//      re-rotates every key to its slot's new rank.
// The insertion is deferred to just before the sequence's next step (prepare()): a generation
// that continues a sequence re-reads its last token, and a chunk not yet inserted can be fed
// again exactly (dropFrom), while an inserted one has evicted what it replaced.
import type { NativeModel, NativeSequence } from '../binding.js';
import type { BoundedPolicyRuntime } from './bounded-runtime.js';
import { CascadeModel, type CascadeStep } from './cascade-model.js';
import type { ResolvedCascadingPolicy } from './cascading.js';

interface Pending {
  first: number;
  count: number;
  sums: Float32Array;
}

export class CascadingRuntime implements BoundedPolicyRuntime {
  readonly #policy: ResolvedCascadingPolicy;
  readonly #layers: number;
  readonly #kvHeads: number;
  readonly #group: number;
  readonly #model: NativeModel;
  readonly #native: () => NativeSequence;
  // (layers * kvHeads) models, layer-major.
  #models: CascadeModel[] = [];
  #pending: Pending | null = null;
  // Stream tokens inserted so far (the models' `seen`).
  #inserted = 0;

  constructor(setup: { policy: ResolvedCascadingPolicy; layers: number; heads: number; kvHeads: number; model: NativeModel; native: () => NativeSequence }) {
    this.#policy = setup.policy;
    this.#layers = setup.layers;
    this.#kvHeads = setup.kvHeads;
    this.#group = setup.heads / setup.kvHeads;
    this.#model = setup.model;
    this.#native = setup.native;
    this.reset();
  }

  readonly wantsScores = true;

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

  get held(): number {
    return this.#models[0]!.length + (this.#pending?.count ?? 0);
  }

  get positionOffset(): number {
    // The next token's position is the slots held (positions by rank), its stream index the
    // tokens fed so far.
    return this.#inserted + (this.#pending?.count ?? 0) - this.held;
  }

  reset(): void {
    const p = this.#policy;
    this.#models = Array.from(
      { length: this.#layers * this.#kvHeads },
      () => new CascadeModel({ sinks: p.sinks, window: p.window, cascades: p.cascades, beta: p.beta, headReduction: p.headReduction, groupSize: this.#group }),
    );
    this.#pending = null;
    this.#inserted = 0;
  }

  after(first: number, count: number, columnSums: Float32Array | null): void {
    if (this.#pending) throw new Error('cascading: a step ran before the previous one was inserted');
    if (first !== this.#inserted) throw new Error(`cascading: step fed stream token ${first}, expected ${this.#inserted}`);
    if (!columnSums) throw new Error('cascading: the step returned no column sums');
    this.#pending = { first, count, sums: columnSums };
  }

  /** Inserts the last step's chunk (before the next step is planned). */
  prepare(): void {
    const pending = this.#pending;
    if (!pending) return;
    this.#pending = null;
    const { first, count, sums } = pending;
    const H = this.#kvHeads * this.#group;
    const cap = this.capacity;
    const scale = 1 - this.#policy.beta;
    const tokens = Int32Array.from({ length: count }, (_, k) => first + k);
    const plans: { layer: number; sources: Int32Array; positions: Int32Array }[] = [];
    let at = 0;
    for (let l = 0; l < this.#layers; l++) {
      const held = this.#models[l * this.#kvHeads]!.length;
      const slots = held + count; // the layer's rows in the step: the cache, then the chunk
      const steps: CascadeStep[] = [];
      for (let g = 0; g < this.#kvHeads; g++) {
        const slotScores: Float64Array[] = [];
        const chunkScores: Float64Array[] = [];
        for (let hh = 0; hh < this.#group; hh++) {
          const row = at + (g * this.#group + hh) * slots;
          const s = new Float64Array(cap);
          for (let j = 0; j < held; j++) s[j] = scale * sums[row + j]!;
          const c = new Float64Array(count);
          for (let k = 0; k < count; k++) c[k] = scale * sums[row + held + k]!;
          slotScores.push(s);
          chunkScores.push(c);
        }
        steps.push(this.#models[l * this.#kvHeads + g]!.insert({ tokens, slotScores, chunkScores }));
      }
      at += H * slots;
      const n = steps[0]!.length;
      const sources = new Int32Array(this.#kvHeads * n);
      steps.forEach((step, g) => {
        for (let s = 0; s < n; s++) {
          const from = step.gather[s]!;
          sources[g * n + s] = from < cap ? from : held + (from - cap);
        }
      });
      plans.push({ layer: l, sources, positions: steps[0]!.positions.slice(0, n) });
    }
    this.#inserted = first + count;
    this.#model.gatherHeads(this.#native(), plans);
  }

  dropFrom(from: number): number {
    const p = this.#pending;
    if (p && from >= p.first) {
      // Not inserted yet: its rows go and the whole chunk is fed again (the same scores follow).
      this.#native().truncate(p.count);
      this.#pending = null;
      return p.first;
    }
    // Inserted already (it may have evicted what it replaced): the stream is fed again from its start.
    this.#native().clear();
    this.reset();
    return 0;
  }

  sources(layer: number): readonly number[] {
    return this.headSources(layer, 0);
  }

  /** The stream index of each token KV head `head` of layer `layer` holds, in slot order. */
  headSources(layer: number, head: number): readonly number[] {
    const state = this.#models[layer * this.#kvHeads + head]!.state();
    const out = Array.from(state.tokens.subarray(0, state.length));
    const p = this.#pending;
    if (p) for (let k = 0; k < p.count; k++) out.push(p.first + k);
    return out;
  }

  get kvHeads(): number {
    return this.#kvHeads;
  }
}
