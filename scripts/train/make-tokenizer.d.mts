// Types for make-tokenizer.mjs (plain Node ESM, so it runs without a build step).

export declare const SPECIAL_TOKENS: readonly string[];

export interface TaskModule {
  trainSeed(i: number): number;
  generateExample(seed: number, options?: object): { extra: readonly { question: string; answer: string }[]; answer: string; prefix: string; documents: readonly string[]; question: string };
  formatPrompt(example: { prefix: string; documents: readonly string[]; question: string }): string;
  formatCompletion(answer: string): string;
  Rng: new (seed: number) => { next(): number; range(lo: number, hi: number): number };
}

/** Trains a byte-level BPE on the task text and writes tokenizer.json + tokenizer_config.json; returns the vocabulary size. */
export declare function makeTokenizer(options: { out: string; vocabSize?: number; examples?: number; contextLength?: number; task?: TaskModule }): number;
