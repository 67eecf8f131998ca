// Generation options: validated here with messages that name the option, then handed to the
// native sampler as plain numbers.
import type { CachePolicy } from '../policies/index.js';
import type { SamplingSpec } from '../binding.js';
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../tensor.js';
import { optionNames } from '../validate.js';

export interface SamplingOptions {
  /** 0 (default) is greedy decoding. */
  temperature?: number;
  /** Keep the k most likely tokens (0: off). */
  topK?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches topP (1: off). */
  topP?: number;
  /** Drop tokens less likely than minP times the most likely one (0: off). */
  minP?: number;
  /** CTRL-style penalty on tokens seen in the last `penaltyWindow` tokens (1: off). */
  repetitionPenalty?: number;
  penaltyWindow?: number;
  /** Seed of this generation's random stream: the same seed reproduces the same text. */
  seed?: number;
}

export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  /** Stop when the text ends with one of these strings (not included in the result). */
  stop?: string | string[];
  /** Also stop at these token ids; the model's end-of-sequence ids always stop. */
  stopTokens?: number[];
  /**
   * Cancels the generation, queued or running: the stream rejects with AbortError and the KV
   * pages the request holds are freed at once (a queued request holds none).
   */
  signal?: AbortSignal;
  /**
   * Cache policy of the request's sequence (`policies.*`). Default: full attention; with
   * `{ store, documents, query }`, CacheFocus.
   */
  policy?: CachePolicy;
}

/** Every GenerateOptions key; any other key is refused (a misspelt option must not be ignored). */
export const GENERATE_OPTIONS = optionNames<GenerateOptions>({
  temperature: true,
  topK: true,
  topP: true,
  minP: true,
  repetitionPenalty: true,
  penaltyWindow: true,
  seed: true,
  maxTokens: true,
  stop: true,
  stopTokens: true,
  signal: true,
  policy: true,
});

function num(v: unknown, name: string, fallback: number, ok: (x: number) => boolean, expected: string): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) {
    throw new InvalidArgumentError(`${name}: expected ${expected} but received ${describe(v)}`, name);
  }
  return v;
}

export function samplingSpec(o: SamplingOptions): SamplingSpec {
  return {
    temperature: num(o.temperature, 'temperature', 0, (x) => x >= 0, 'a number >= 0'),
    topK: num(o.topK, 'topK', 0, (x) => Number.isInteger(x) && x >= 0, 'an integer >= 0'),
    topP: num(o.topP, 'topP', 1, (x) => x > 0 && x <= 1, 'a number in (0, 1]'),
    minP: num(o.minP, 'minP', 0, (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
    repetitionPenalty: num(o.repetitionPenalty, 'repetitionPenalty', 1, (x) => x > 0, 'a number > 0'),
    penaltyWindow: num(o.penaltyWindow, 'penaltyWindow', 64, (x) => Number.isInteger(x) && x >= 0, 'an integer >= 0'),
  };
}

export function seedOf(o: SamplingOptions): number {
  if (o.seed === undefined) return Math.floor(Math.random() * 2 ** 52);
  return num(o.seed, 'seed', 0, (x) => Number.isSafeInteger(x) && x >= 0, 'a non-negative safe integer');
}

export function generationLimits(o: GenerateOptions, vocabSize: number): { maxTokens: number; stop: string[]; stopTokens: number[] } {
  const maxTokens = num(o.maxTokens, 'maxTokens', 256, (x) => Number.isInteger(x) && x >= 1, 'an integer >= 1');
  const stop = o.stop === undefined ? [] : typeof o.stop === 'string' ? [o.stop] : o.stop;
  if (!Array.isArray(stop) || !stop.every((s) => typeof s === 'string' && s.length > 0)) {
    throw new InvalidArgumentError(`stop: expected a non-empty string or an array of them but received ${describe(o.stop)}`, 'stop');
  }
  const stopTokens = o.stopTokens ?? [];
  if (!Array.isArray(stopTokens)) {
    throw new InvalidArgumentError(`stopTokens: expected an array of token ids but received ${describe(o.stopTokens)}`, 'stopTokens');
  }
  // An id the model can never sample would never stop anything: refuse it rather than ignore it.
  stopTokens.forEach((t: unknown, i) => {
    if (typeof t !== 'number' || !Number.isInteger(t)) {
      throw new InvalidArgumentError(`stopTokens[${i}]: expected an integer token id but received ${t === undefined ? 'undefined' : describe(t)}`, 'stopTokens');
    }
    if (t < 0 || t >= vocabSize) throw new InvalidArgumentError(`stopTokens[${i}]: ${t} is outside the vocabulary [0, ${vocabSize})`, 'stopTokens');
  });
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) {
    throw new InvalidArgumentError(`signal: expected an AbortSignal but received ${describe(o.signal)}`, 'signal');
  }
  return { maxTokens, stop, stopTokens };
}
