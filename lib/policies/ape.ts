// APE, adaptive parallel encoding (Yang et al., "APE: Faster and Longer Context-Augmented
// Generation via Adaptive Parallel Encoding", ICLR 2025, arXiv 2502.05431; code:
// Infini-AI-Lab/APE): a baseline of CacheFocus (shared/METHODS.md). The store already encodes
// every document after one shared prefix P, kept once; APE lays the documents out as parallel
// windows (each from position |P|, the query after the longest) and changes how the query and
// everything generated attend: the documents' keys with logits divided by a temperature T, the
// rest (prefix, query, generated tokens) separately, and the two outputs mixed with weights
// softmax([S * T * lse_documents, lse_rest]) (kernels/paged_attention.h, two-part attention).
//
// What follows the authors' code (ape/ape_llama.py, llama_attention_prefill_query, which
// replaces the attention of every layer for the query prefill and for every decode step
// after it): the context part's softmax scale is 1 / (sqrt(d) * T); its log-sum-exp is
// multiplied by `scale * temperature` (S * T, not S alone as the paper's prose reads) before
// the softmax that merges it with the prefix + query part; every layer; the documents' own
// encoding is untouched (plain causal attention over [P; document], as the store computes it).
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';

/**
 * APE: the stored documents in parallel windows after the shared prefix; the query and the
 * generated tokens attend to them with temperature `temperature` and weigh them by `scale`.
 */
export interface ApePolicy {
  name: 'ape';
  /** T > 0: the documents' attention logits are divided by it. Default 0.9. */
  temperature?: number;
  /** S > 0: the documents' log-sum-exp is multiplied by S * T when merged with the rest. Default 0.9. */
  scale?: number;
}

export interface ResolvedApePolicy {
  readonly name: 'ape';
  readonly temperature: number;
  readonly scale: number;
}

export const APE_OPTIONS: readonly string[] = ['name', 'temperature', 'scale'];

// The authors' defaults (README and demo_ape.py: --temperature 0.9 --scale 0.9, "preserving
// over 90% performance on few-shot tasks").
export const DEFAULT_APE_TEMPERATURE = 0.9;
export const DEFAULT_APE_SCALE = 0.9;

function positive(p: Record<string, unknown>, key: string, fallback: number): number {
  const v = p[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new InvalidArgumentError(`policy.${key}: expected a finite number > 0 but received ${describe(p[key])}`, 'policy');
  }
  return v;
}

export function resolveApe(p: Record<string, unknown>): ResolvedApePolicy {
  return Object.freeze({ name: 'ape' as const, temperature: positive(p, 'temperature', DEFAULT_APE_TEMPERATURE), scale: positive(p, 'scale', DEFAULT_APE_SCALE) });
}
