// Types for common.mjs (plain Node ESM, so it runs without a build step).
import type { Tokenizer } from '../../lib/model/tokenizer.js';
import type { MultiDocQaExample, MultiDocQaOptions } from '../../lib/task/multidoc-qa.js';

export interface EncodedExample {
  ids: number[];
  /** [start, end) index ranges of completion tokens (" answer" and </s>). */
  answers: [number, number][];
  /** Tokens before the first completion. */
  promptLength: number;
  /** Index of each document's first token. */
  docStarts: number[];
  /** Index of the first question's first token (the end of the last document). */
  docEnd: number;
}

export declare function encodeExample(tok: Tokenizer, ex: MultiDocQaExample): EncodedExample;
export declare function fitExample(tok: Tokenizer, seed: number, context: number, options?: MultiDocQaOptions, maxDocs?: number): EncodedExample & { ex: MultiDocQaExample };
