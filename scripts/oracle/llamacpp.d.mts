// Types for llamacpp.mjs (plain Node ESM, so it runs without a build step).

export interface LlamaCppLogitsResult {
  /** logits[i]: next-token logits after [...tokens, ...continuation][0..i]. */
  logits: Float32Array[];
  /** Greedy tokens: continuation[k] = argmax(logits[tokens.length - 1 + k]). */
  continuation: number[];
}

export declare function llamaCppLogits(
  ggufPath: string,
  tokens: readonly number[],
  options?: { continuation?: number },
): Promise<LlamaCppLogitsResult>;

export declare function llamaCppTokenize(
  ggufPath: string,
  text: string,
  options?: { specialTokens?: boolean },
): Promise<number[]>;

export declare function disposeLlamaCpp(): Promise<void>;

/** Index of the largest value; ties go to the lowest index. */
export declare function argmax(values: ArrayLike<number>): number;
