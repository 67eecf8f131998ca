// CacheFocus on one sequence: the query's first prefill runs in segments of layers, each ending
// at a pruning layer. After a segment the attention mass every scored query token put on each
// document at each of its layers (reported by the attention kernels themselves) scores the
// documents; the keep rule drops some from every later layer, and the survivors' keys in those
// layers are re-rotated to their new positions (one fused launch). Later layers then run in
// their own coordinate frame: the query and everything generated follow each layer's last held
// token (a per-layer position shift in the engine).
import type { NativeModel, NativeSequence } from '../binding.js';
import { allocate, defaultPruneLayers, documentScores, keepDocuments, ruleAt, type ResolvedCacheFocus } from './cache-focus.js';

/** @internal A policy that runs a sequence's next prefill in segments of layers (see Scheduler). */
export interface LayerSegmenter {
  /** Whether the next prefill of the sequence is segmented (the query's, right after the documents). */
  readonly active: boolean;
  /** The next segment: its layers, and the slot ranges to score at each layer (or none). */
  next(rows: number): { layers: [number, number]; rangeMass?: Int32Array[] };
  /** After the segment's step: the range masses it reported (layers, rows, heads, ranges). */
  after(mass: Float32Array | null, rows: number): void;
  /** Back to before the query (the sequence's KV was freed and its documents attached again). */
  reset(): void;
}

export interface CacheFocusSetup {
  policy: ResolvedCacheFocus;
  layers: number;
  heads: number;
  prefixTokens: number;
  /** Tokens of each document, in listed order (document i is attached block i + 1). */
  lengths: readonly number[];
  /** First position of each document as attached (consecutive, or parallel windows). */
  starts: readonly number[];
  /** The largest position + 1 any layer may use, and the tokens that must still fit after the documents. */
  positionLimit: number;
  reserve: () => number;
  model: NativeModel;
  native: () => NativeSequence;
}

/** What the policy decided, for layout() and tests. */
export interface CacheFocusDecision {
  layer: number;
  scores: Float64Array; // S_l per document (listed order); NaN for documents no longer held
  kept: number[];
  starts: Map<number, number>;
}

export class CacheFocusRuntime implements LayerSegmenter {
  readonly #s: CacheFocusSetup;
  readonly #prune: number[];
  #segment = 0;
  #active = true;
  #held: number[] = [];
  #score!: Float64Array;
  #starts: number[] = [];
  /** Decisions taken at each pruning layer of the last query prefill. */
  decisions: CacheFocusDecision[] = [];

  constructor(setup: CacheFocusSetup) {
    this.#s = setup;
    // Pruning at the last layer changes nothing after it.
    this.#prune = (setup.policy.pruneLayers ?? defaultPruneLayers(setup.layers)).filter((l) => l < setup.layers - 1);
    this.reset();
  }

  get active(): boolean {
    return this.#active && this.#s.lengths.length > 0;
  }

  reset(): void {
    this.#segment = 0;
    this.#active = true;
    this.#held = this.#s.lengths.map((_, i) => i);
    this.#score = new Float64Array(this.#s.lengths.length);
    this.#starts = [...this.#s.starts];
    this.decisions = [];
  }

  // The frame end (last held token + 1) of a layer holding `held` at `starts`.
  #end(held: readonly number[], starts: ArrayLike<number>): number {
    let end = this.#s.prefixTokens;
    for (const d of held) end = Math.max(end, starts[d]! + this.#s.lengths[d]!);
    return end;
  }

  next(_rows: number): { layers: [number, number]; rangeMass?: Int32Array[] } {
    const begin = this.#segment === 0 ? 0 : this.#prune[this.#segment - 1]! + 1;
    if (this.#segment >= this.#prune.length) return { layers: [begin, this.#s.layers] };
    const end = this.#prune[this.#segment]! + 1;
    // Every layer of the segment scores the held documents (accumulate adds them up); each in
    // its own slot order, from the engine's spans.
    const native = this.#s.native();
    const rangeMass: Int32Array[] = [];
    for (let l = 0; l < this.#s.layers; l++) {
      const ranges = new Int32Array(this.#held.length * 2);
      if (l >= begin && l < end) {
        const spans = native.spans(l);
        const slotOf = new Map<number, [number, number]>();
        for (let i = 0; i < spans.length; i += 4) slotOf.set(spans[i]! - 1, [spans[i + 1]!, spans[i + 2]!]);
        this.#held.forEach((d, j) => {
          const [first, tokens] = slotOf.get(d)!;
          ranges[2 * j] = first;
          ranges[2 * j + 1] = first + tokens;
        });
      }
      rangeMass.push(ranges);
    }
    return { layers: [begin, end], rangeMass };
  }

  after(mass: Float32Array | null, rows: number): void {
    if (this.#segment >= this.#prune.length) {
      this.#active = false; // the last segment: the query is in
      return;
    }
    const p = this.#s.policy;
    const begin = this.#segment === 0 ? 0 : this.#prune[this.#segment - 1]! + 1;
    const layer = this.#prune[this.#segment]!;
    const R = this.#held.length;
    const heads = this.#s.heads;
    const lengths = this.#held.map((d) => this.#s.lengths[d]!);
    // S_l: the sum of s over layers 0..l (accumulate), else s_l.
    const per = rows * heads * R;
    for (let l = p.accumulate ? begin : layer; l <= layer; l++) {
      const s = documentScores(mass!.subarray(l * per, (l + 1) * per), rows, heads, R, p, lengths);
      this.#held.forEach((d, j) => {
        this.#score[d] = (p.accumulate ? this.#score[d]! : 0) + s[j]!;
      });
    }
    let kept = keepDocuments(this.#held, this.#score, ruleAt(p, this.#segment));
    let starts = allocate(kept, this.#s.lengths, this.#score, p.allocation, this.#s.prefixTokens, this.#starts);
    // After the last pruning, the survivors (and what follows them) must fit the positions:
    // the lowest-scored go until they do.
    if (this.#segment === this.#prune.length - 1) {
      while (kept.length > 1 && this.#end(kept, toArray(starts, this.#starts)) + this.#s.reserve() > this.#s.positionLimit) {
        const worst = [...kept].sort((a, b) => this.#score[a]! - this.#score[b]! || b - a)[0]!;
        kept = kept.filter((d) => d !== worst);
        starts = allocate(kept, this.#s.lengths, this.#score, p.allocation, this.#s.prefixTokens, this.#starts);
      }
    }
    const dropped = this.#held.filter((d) => !kept.includes(d));
    const native = this.#s.native();
    const endBefore = this.#end(this.#s.lengths.map((_, i) => i), this.#s.starts);
    if (dropped.length > 0) native.dropBlocks(layer + 1, Int32Array.from(dropped, (d) => d + 1));
    const moved = kept.filter((d) => starts.get(d) !== this.#starts[d]);
    if (moved.length > 0) {
      this.#s.model.moveBlocks(native, layer + 1, Int32Array.from(moved, (d) => d + 1), Int32Array.from(moved, (d) => starts.get(d)!));
    }
    for (const [d, at] of starts) this.#starts[d] = at;
    // The query (and what is generated) follows the layer's last held token.
    native.setLayerShift(layer + 1, this.#end(kept, this.#starts) - endBefore);
    const scores = new Float64Array(this.#s.lengths.length).fill(NaN);
    for (const d of this.#held) scores[d] = this.#score[d]!;
    this.decisions.push({ layer, scores, kept: [...kept], starts });
    this.#held = kept;
    this.#segment++;
  }
}

function toArray(starts: Map<number, number>, fallback: readonly number[]): number[] {
  const out = [...fallback];
  for (const [d, at] of starts) out[d] = at;
  return out;
}
