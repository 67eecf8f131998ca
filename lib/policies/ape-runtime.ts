// APE on one sequence (./ape.ts): every forward step after the documents are attached (the
// query's prefill chunks and each decode step) asks for two-part attention with the documents'
// slots as the context, in every layer, as the authors' code patches every layer's attention.
// The documents are attached blocks 1.. (block 0 is the shared prefix); each layer holds them
// at consecutive pages in attach order, so one slot range [first document's first slot, last
// document's last slot + 1) covers them, the rows between them being holes (masked anyway).
import type { NativeSequence, StepRequest } from '../binding.js';
import type { ResolvedApePolicy } from './ape.js';

/** @internal A policy that asks for two-part attention on a sequence's steps (see Scheduler). */
export interface ContextAttention {
  /** The context of the sequence's next step, or undefined when it has none. */
  context(): StepRequest['context'] | undefined;
  /** The blocks were attached again (after an eviction): recompute the ranges. */
  reset(): void;
}

export class ApeRuntime implements ContextAttention {
  readonly #policy: ResolvedApePolicy;
  readonly #layers: number;
  readonly #native: () => NativeSequence;
  #ranges: Int32Array | null = null;

  constructor(setup: { policy: ResolvedApePolicy; layers: number; native: () => NativeSequence }) {
    this.#policy = setup.policy;
    this.#layers = setup.layers;
    this.#native = setup.native;
  }

  context(): StepRequest['context'] | undefined {
    if (this.#ranges === null) {
      const native = this.#native();
      const ranges = new Int32Array(this.#layers * 2);
      let any = false;
      for (let l = 0; l < this.#layers; l++) {
        const spans = native.spans(l); // [block, firstSlot, tokens, firstPosition], in slot order
        let begin = Infinity;
        let end = -Infinity;
        for (let i = 0; i < spans.length; i += 4) {
          if (spans[i] === 0) continue; // the prefix
          begin = Math.min(begin, spans[i + 1]!);
          end = Math.max(end, spans[i + 1]! + spans[i + 2]!);
        }
        if (begin < end) {
          ranges[2 * l] = begin;
          ranges[2 * l + 1] = end;
          any = true;
        }
      }
      this.#ranges = any ? ranges : new Int32Array(0);
    }
    if (this.#ranges.length === 0) return undefined; // no documents: plain attention
    return { ranges: this.#ranges, temperature: this.#policy.temperature, scale: this.#policy.scale };
  }

  reset(): void {
    this.#ranges = null;
  }
}
