// Generation under a fixed KV budget, on one sequence: after every forward step the policy says
// which tokens each layer keeps, in cache order, and the engine compacts each layer to them (one
// gather: kept rows move into freed slots, pages stay dense, the tail goes back to the pool) and
// re-rotates every kept key to its rank in cache order (positions by slot, as StreamingLLM and
// LaCache do). The next token is placed at each layer's next slot. The policies decide from the
// input-stream indices each layer holds (and, for H2O, the attention each slot has received,
// summed by the attention kernels themselves); the mechanics are native.
import type { NativeModel, NativeSequence } from '../binding.js';
import type { H2OPolicy, StreamingPolicy } from './bounded.js';
import { LaCachePlanner, type ResolvedLaCachePolicy } from './lacache.js';

/** What a bounded policy's runtime is built from (the model's shape and its sequence). */
export interface RuntimeSetup {
  layers: number;
  heads: number;
  kvHeads: number;
  model: NativeModel;
  native: () => NativeSequence;
}

/** @internal What the scheduler asks of a bounded policy (SequenceState.bounded). */
export interface BoundedPolicyRuntime {
  /** Whether steps should report column sums (attention received per slot). */
  readonly wantsScores: boolean;
  /** How: per query head, EMA-weighted (StepRequest's columnSumsPerHead, scoreDecay); default per KV head, plain. */
  readonly scoreOptions?: { columnSumsPerHead?: boolean; scoreDecay?: number; scoreRows?: number };
  /** Most tokens one step feeds. */
  readonly maxChunk: number;
  /** Tokens' worth of pages a step may need at once (held, the chunk, any scratch), for a chunk of `chunk`. */
  claim(chunk: number): number;
  /** Called before the sequence's next step is planned (work deferred from after()). */
  prepare?(): void;
  /** After a step fed stream tokens [first, first + count): compacts every layer. */
  after(first: number, count: number, columnSums: Float32Array | null): void;
  /** Stream index minus layer 0's position of the next token. */
  readonly positionOffset: number;
  /** The KV was freed: the stream is fed again from its start. */
  reset(): void;
  /** Tokens layer 0 holds now (the engine's length of the sequence). */
  readonly held: number;
  /** Most tokens a layer holds between steps. */
  readonly capacity: number;
  /** The stream index of each token layer l holds, in slot order. */
  sources(layer: number): readonly number[];
  /** Per-head policies: the stream index of each token KV head `head` of layer l holds, in slot order. */
  headSources?(layer: number, head: number): readonly number[];
  /** Per-head policies: KV heads per layer. */
  readonly kvHeads?: number;
  /**
   * Drops every token from stream index `from` on (fed again next: a generation re-reads the
   * last token). Returns the stream index feeding resumes from: `from`, or earlier when the
   * policy cannot drop exactly there (then it drops from the returned index).
   */
  dropFrom(from: number): number;
}

export type BoundedPolicy = StreamingPolicy | H2OPolicy | ResolvedLaCachePolicy;

// One layer's tokens: `order` the stream indices it holds, ascending (cache order); `slot` where
// each one is in the engine's page table; `score` the attention each has received (H2O).
interface LayerState {
  order: number[];
  slot: Map<number, number>;
  score: Map<number, number>;
  shift: number;
}

export class BoundedRuntime implements BoundedPolicyRuntime {
  readonly #policy: BoundedPolicy;
  readonly #layers: number;
  readonly #kvHeads: number;
  readonly #model: NativeModel;
  readonly #native: () => NativeSequence;
  #state: LayerState[] = [];
  #planner: LaCachePlanner | null = null;
  #offset = 0;

  constructor(policy: BoundedPolicy, setup: RuntimeSetup) {
    this.#policy = policy;
    this.#layers = setup.layers;
    this.#kvHeads = setup.kvHeads;
    this.#model = setup.model;
    this.#native = setup.native;
    this.reset();
  }

  get wantsScores(): boolean {
    return this.#policy.name === 'h2o';
  }

  get positionOffset(): number {
    return this.#offset;
  }

  sources(layer: number): readonly number[] {
    const st = this.#state[layer]!;
    const out = new Array<number>(st.order.length);
    for (const t of st.order) out[st.slot.get(t)!] = t;
    return out;
  }

  get held(): number {
    return this.#state[0]?.order.length ?? 0;
  }

  // Each chunk attends to what the layer kept and to itself: never more than the capacity.
  get maxChunk(): number {
    return this.capacity;
  }

  claim(chunk: number): number {
    return this.capacity + Math.min(this.capacity, chunk);
  }

  get capacity(): number {
    const p = this.#policy;
    if (p.name === 'streaming') return p.sinks + p.window;
    if (p.name === 'h2o') return p.budget;
    return this.#planner!.maxLength;
  }

  reset(): void {
    this.#state = Array.from({ length: this.#layers }, () => ({ order: [], slot: new Map(), score: new Map(), shift: 0 }));
    this.#planner = this.#policy.name === 'lacache' ? new LaCachePlanner(this.#policy, this.#layers) : null;
    this.#offset = 0;
  }

  after(first: number, count: number, columnSums: Float32Array | null): void {
    // The step appended its tokens at the end of every layer.
    let at = 0;
    for (const st of this.#state) {
      const slots = st.order.length + count;
      if (columnSums) {
        // (kvHeads, slots) of this layer in slot order: summed over the heads (per-layer selection).
        const bySlot = new Array<number>(slots).fill(0);
        for (let g = 0; g < this.#kvHeads; g++) for (let s = 0; s < slots; s++) bySlot[s]! += columnSums[at + g * slots + s]!;
        at += this.#kvHeads * slots;
        for (const t of st.order) st.score.set(t, st.score.get(t)! + bySlot[st.slot.get(t)!]!);
        for (let i = 0; i < count; i++) st.score.set(first + i, bySlot[st.order.length + i]!);
      }
      for (let i = 0; i < count; i++) {
        st.slot.set(first + i, st.order.length);
        st.order.push(first + i);
      }
    }
    // The planner counts every token once: one fed again (after dropFrom) is already in its plan.
    if (this.#planner) {
      const fresh = first + count - this.#planner.tokenCount;
      if (fresh > 0) this.#planner.append(fresh);
    }
    const plans: { layer: number; keep: Int32Array; positions: Int32Array; order: number[] }[] = [];
    for (let l = 0; l < this.#layers; l++) {
      const st = this.#state[l]!;
      const order = this.#keep(l, st);
      if (order === st.order) continue; // nothing dropped: positions are ranks already
      plans.push({ layer: l, keep: Int32Array.from(order, (t) => st.slot.get(t)!), positions: Int32Array.from(order, (_, i) => i), order });
    }
    this.#apply(plans);
    this.#place(first + count);
  }

  dropFrom(from: number): number {
    const plans: { layer: number; keep: Int32Array; positions: Int32Array; order: number[] }[] = [];
    for (let l = 0; l < this.#layers; l++) {
      const st = this.#state[l]!;
      if (st.order.length === 0 || st.order[st.order.length - 1]! < from) continue;
      // The dropped are the newest (highest ranks): the others keep their positions.
      const order = st.order.filter((t) => t < from);
      plans.push({ layer: l, keep: Int32Array.from(order, (t) => st.slot.get(t)!), positions: Int32Array.from(order, (_, i) => i), order });
    }
    this.#apply(plans);
    this.#place(from);
    return from;
  }

  // The next token goes to each layer's next slot: layer 0's through the step's positions, the
  // others through a per-layer shift (set only when it changes).
  #place(next: number): void {
    const held0 = this.#state[0]!.order.length;
    this.#offset = next - held0;
    let native: NativeSequence | null = null;
    for (let l = 1; l < this.#layers; l++) {
      const st = this.#state[l]!;
      const shift = st.order.length - held0;
      if (shift === st.shift) continue;
      native ??= this.#native();
      native.setLayerShift(l, shift);
      // setLayerShift sets every layer from l on: the later ones are set again below if they differ.
      for (let k = l; k < this.#layers; k++) this.#state[k]!.shift = shift;
    }
  }

  // Compacts the layers listed and follows the moves in the slot maps.
  #apply(plans: { layer: number; keep: Int32Array; positions: Int32Array; order: number[] }[]): void {
    if (plans.length === 0) return;
    const slots = this.#model.compact(this.#native(), plans);
    plans.forEach((p, j) => {
      const st = this.#state[p.layer]!;
      const kept = new Set(p.order);
      for (const t of st.order) {
        if (!kept.has(t)) {
          st.slot.delete(t);
          st.score.delete(t);
        }
      }
      const moved = slots[j]!;
      p.order.forEach((t, i) => {
        if (moved[i] !== p.keep[i]) st.slot.set(t, moved[i]!);
      });
      st.order = p.order;
    });
  }

  // The stream indices layer l keeps, in cache order (stream order for every policy here); the
  // layer's own `order` array when it keeps everything.
  #keep(l: number, st: LayerState): number[] {
    const p = this.#policy;
    const order = st.order;
    if (p.name === 'streaming') {
      // Sinks + the newest window - 1: the next token makes the window.
      const cap = p.sinks + p.window - 1;
      if (order.length <= cap) return order;
      return [...order.slice(0, p.sinks), ...order.slice(order.length - (p.window - 1))];
    }
    if (p.name === 'h2o') {
      const cap = p.budget - 1;
      if (order.length <= cap) return order;
      const recent = Math.min(p.recent, cap);
      const rest = order.slice(0, order.length - recent);
      // Heavy hitters: the highest accumulated attention; ties keep the older token.
      const heavy = rest.sort((a, b) => st.score.get(b)! - st.score.get(a)! || a - b).slice(0, cap - recent);
      return [...heavy.sort((a, b) => a - b), ...order.slice(order.length - recent)];
    }
    const kept = this.#planner!.kept(l);
    if (kept.length === order.length) return order; // the planner keeps tokens in stream order: same set
    return [...kept];
  }
}
