// Baselines on the same store as CacheFocus (shared/METHODS.md, "Baselines every benchmark must
// include"): plain RAG and parallel windows. Both are placements of the stored documents; the
// sequence applies them when it opens. APE (parallel windows + two-part attention) is ./ape.ts.

/**
 * Plain RAG: [P; documents; query] prefilled jointly at query time with full attention, the
 * documents attending to each other; nothing stored is reused (the store only supplies tokens).
 */
export interface ConcatPolicy {
  name: 'concat';
}

/**
 * Parallel windows (PCW-style): every stored document starts at position |P|, each keeping the
 * KV it was stored with (documents do not attend to each other); the query follows the longest.
 */
export interface ParallelWindowsPolicy {
  name: 'parallelWindows';
}
