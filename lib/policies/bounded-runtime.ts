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

/** @internal What the scheduler asks of a bounded policy (SequenceState.bounded). */
export interface BoundedPolicyRuntime {
  /** Whether steps should report column sums (attention received per slot). */
  readonly wantsScores: boolean;
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
  /** Drops every token from stream index `from` on (fed again next: a generation re-reads the last token). */
  dropFrom(from: number): void;
}

export type BoundedPolicy = StreamingPolicy | H2OPolicy | ResolvedLaCachePolicy;

export class BoundedRuntime implements BoundedPolicyRuntime {
  readonly #policy: BoundedPolicy;
  readonly #layers: number;
  readonly #kvHeads: number;
  readonly #model: NativeModel;
  readonly #native: () => NativeSequence;
  #src: number[][] = []; // per layer: the stream index each slot holds
  #score: number[][] = []; // per layer: attention each slot has received (H2O)
  #planner: LaCachePlanner | null = null;
  #offset = 0;

  constructor(setup: { policy: BoundedPolicy; layers: number; kvHeads: number; model: NativeModel; native: () => NativeSequence }) {
    this.#policy = setup.policy;
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
    return this.#src[layer]!;
  }

  get held(): number {
    return this.#src[0]?.length ?? 0;
  }

  get capacity(): number {
    const p = this.#policy;
    if (p.name === 'streaming') return p.sinks + p.window;
    if (p.name === 'h2o') return p.budget;
    return this.#planner!.maxLength;
  }

  reset(): void {
    this.#src = Array.from({ length: this.#layers }, () => []);
    this.#score = Array.from({ length: this.#layers }, () => []);
    this.#planner = this.#policy.name === 'lacache' ? new LaCachePlanner(this.#policy, this.#layers) : null;
    this.#offset = 0;
  }

  after(first: number, count: number, columnSums: Float32Array | null): void {
    // The step appended its tokens at the end of every layer.
    let at = 0;
    for (let l = 0; l < this.#layers; l++) {
      const src = this.#src[l]!;
      const score = this.#score[l]!;
      for (let i = 0; i < count; i++) {
        src.push(first + i);
        score.push(0);
      }
      if (columnSums) {
        // (kvHeads, slots) of this layer: summed over the heads (the policy selects per layer).
        const slots = src.length;
        for (let g = 0; g < this.#kvHeads; g++) for (let s = 0; s < slots; s++) score[s] = score[s]! + columnSums[at + g * slots + s]!;
        at += this.#kvHeads * slots;
      }
    }
    // The planner counts every token once: one fed again (after dropFrom) is already in its plan.
    if (this.#planner) {
      const fresh = first + count - this.#planner.tokenCount;
      if (fresh > 0) this.#planner.append(fresh);
    }
    const plans: { layer: number; keep: Int32Array; positions: Int32Array }[] = [];
    const kept: number[][] = [];
    for (let l = 0; l < this.#layers; l++) {
      const order = this.#keep(l); // stream indices, in cache order
      kept.push(order);
      if (order.length === this.#src[l]!.length && order.every((t, i) => this.#src[l]![i] === t)) continue; // unchanged
      const slotOf = new Map(this.#src[l]!.map((t, s) => [t, s]));
      plans.push({ layer: l, keep: Int32Array.from(order, (t) => slotOf.get(t)!), positions: Int32Array.from(order, (_, i) => i) });
    }
    const native = this.#native();
    this.#apply(plans);
    // The next token goes to each layer's next slot: layer 0's through the step's positions, the
    // others through a per-layer shift.
    const next = first + count;
    const held0 = kept[0]!.length;
    this.#offset = next - held0;
    for (let l = 1; l < this.#layers; l++) native.setLayerShift(l, kept[l]!.length - held0);
  }

  dropFrom(from: number): void {
    const plans: { layer: number; keep: Int32Array; positions: Int32Array }[] = [];
    for (let l = 0; l < this.#layers; l++) {
      const src = this.#src[l]!;
      if (src.every((t) => t < from)) continue;
      // Cache order is stream order and positions are ranks: the dropped are the newest, so the
      // others keep their positions.
      const order = src.filter((t) => t < from).sort((a, b) => a - b);
      const slotOf = new Map(src.map((t, s) => [t, s]));
      plans.push({ layer: l, keep: Int32Array.from(order, (t) => slotOf.get(t)!), positions: Int32Array.from(order, (_, i) => i) });
    }
    this.#apply(plans);
    const held0 = this.#src[0]!.length;
    this.#offset = from - held0;
    const native = this.#native();
    for (let l = 1; l < this.#layers; l++) native.setLayerShift(l, this.#src[l]!.length - held0);
  }

  // Compacts the layers listed and follows the moves in the slot mirrors.
  #apply(plans: { layer: number; keep: Int32Array; positions: Int32Array }[]): void {
    if (plans.length === 0) return;
    const slots = this.#model.compact(this.#native(), plans);
    plans.forEach((p, j) => {
      const src = this.#src[p.layer]!;
      const score = this.#score[p.layer]!;
      const nextSrc = new Array<number>(p.keep.length);
      const nextScore = new Array<number>(p.keep.length);
      p.keep.forEach((slot, i) => {
        nextSrc[slots[j]![i]!] = src[slot]!;
        nextScore[slots[j]![i]!] = score[slot]!;
      });
      this.#src[p.layer] = nextSrc;
      this.#score[p.layer] = nextScore;
    });
  }

  // The stream indices layer l keeps, in cache order (stream order for every policy here).
  #keep(l: number): number[] {
    const p = this.#policy;
    const src = this.#src[l]!;
    const ordered = [...src].sort((a, b) => a - b);
    if (p.name === 'streaming') {
      // Sinks + the newest window - 1: the next token makes the window.
      const cap = p.sinks + p.window - 1;
      if (ordered.length <= cap) return ordered;
      return [...ordered.slice(0, p.sinks), ...ordered.slice(ordered.length - (p.window - 1))];
    }
    if (p.name === 'h2o') {
      const cap = p.budget - 1;
      if (ordered.length <= cap) return ordered;
      const recent = ordered.slice(ordered.length - Math.min(p.recent, cap));
      const rest = ordered.slice(0, ordered.length - recent.length);
      const scoreOf = new Map(src.map((t, s) => [t, this.#score[l]![s]!]));
      // Heavy hitters: the highest accumulated attention; ties keep the older token.
      const heavy = [...rest].sort((a, b) => scoreOf.get(b)! - scoreOf.get(a)! || a - b).slice(0, cap - recent.length);
      return [...heavy.sort((a, b) => a - b), ...recent];
    }
    return [...this.#planner!.kept(l)];
  }
}
