// What the per-KV-head policies (Cascading KV cache, SnapKV) share on a sequence: each layer and
// KV head holds its own tokens (every head of a layer as many), and the work a step asks for is
// deferred to just before the sequence's next step (prepare). A generation that continues an
// appended sequence re-reads the last chunk: while that chunk is still pending, dropping it is
// exact (its rows go, it is fed again and the same scores follow); once applied it may have
// evicted what it replaced, so the stream is fed again from its start.
import type { NativeModel, NativeSequence } from '../binding.js';
import type { BoundedPolicyRuntime, RuntimeSetup } from './bounded-runtime.js';

export type { RuntimeSetup } from './bounded-runtime.js';

export interface PendingChunk {
  first: number;
  count: number;
  sums: Float32Array;
}

export abstract class PerHeadRuntime implements BoundedPolicyRuntime {
  protected readonly layers: number;
  readonly kvHeads: number;
  protected readonly group: number;
  protected readonly model: NativeModel;
  protected readonly native: () => NativeSequence;
  protected pending: PendingChunk | null = null;
  /** Stream tokens applied so far (the next step must feed from here). */
  protected applied = 0;

  constructor(setup: RuntimeSetup) {
    this.layers = setup.layers;
    this.kvHeads = setup.kvHeads;
    this.group = setup.heads / setup.kvHeads;
    this.model = setup.model;
    this.native = setup.native;
  }

  readonly wantsScores = true;
  abstract readonly scoreOptions: { columnSumsPerHead?: boolean; scoreDecay?: number; scoreRows?: number };
  abstract readonly capacity: number;
  abstract readonly maxChunk: number;
  abstract claim(chunk: number): number;
  abstract reset(): void;
  /** Applies the pending chunk (its tokens appended after every layer's slots, its sums). */
  protected abstract apply(chunk: PendingChunk): void;
  /** The stream indices KV head `head` of layer `layer` holds (applied chunks only), in slot order. */
  protected abstract heldTokens(layer: number, head: number): readonly number[];
  /** How many tokens every layer and head holds (applied chunks only). */
  protected abstract heldCount(): number;

  get held(): number {
    return this.heldCount() + (this.pending?.count ?? 0);
  }

  // The next token's stream index minus its position: positions go by slot.
  get positionOffset(): number {
    return this.applied + (this.pending?.count ?? 0) - this.held;
  }

  after(first: number, count: number, columnSums: Float32Array | null): void {
    if (this.pending) throw new Error('a step ran before the previous one was applied');
    if (first !== this.applied) throw new Error(`a step fed stream token ${first}, expected ${this.applied}`);
    if (!columnSums) throw new Error('the step returned no column sums');
    this.pending = { first, count, sums: columnSums };
  }

  prepare(): void {
    const chunk = this.pending;
    if (!chunk) return;
    this.pending = null;
    this.applied = chunk.first + chunk.count;
    this.apply(chunk);
  }

  dropFrom(from: number): number {
    const p = this.pending;
    if (p && from >= p.first) {
      this.native().truncate(p.count);
      this.pending = null;
      return p.first;
    }
    this.native().clear();
    this.reset();
    return 0;
  }

  /** Resets what this class keeps; subclasses call it from reset(). */
  protected resetPending(): void {
    this.pending = null;
    this.applied = 0;
  }

  sources(layer: number): readonly number[] {
    return this.headSources(layer, 0);
  }

  headSources(layer: number, head: number): readonly number[] {
    const out = [...this.heldTokens(layer, head)];
    const p = this.pending;
    if (p) for (let k = 0; k < p.count; k++) out.push(p.first + k);
    return out;
  }
}
