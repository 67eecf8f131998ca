// Argument checks shared by the public entry points. Values are checked as given and never
// coerced: Int32Array.from would turn NaN, 3.7, '300' or 2**32 + 300 into other, valid-looking
// token ids, and an options object with a misspelt key would silently run with the defaults.
import { InvalidArgumentError } from './errors.js';
import { describe } from './tensor.js';

/** describe() for one array element: holes and undefined read as "undefined". */
function describeElement(v: unknown): string {
  return v === undefined ? 'undefined' : describe(v);
}

/**
 * An options argument. undefined and null both mean "no options" (null arrives from JSON and
 * from callers that clear a variable); anything else must be a plain object whose keys are all
 * in `known`. `op` prefixes messages ("softmax: options: ...") where several functions share them.
 */
export function checkOptions<T extends object>(value: T | null | undefined, known: readonly string[], op?: string): T {
  const what = op ? `${op}: options` : 'options';
  if (value === undefined || value === null) return {} as T;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidArgumentError(`${what}: expected an object but received ${describe(value)}`, 'options');
  }
  for (const key of Object.keys(value)) {
    if (known.includes(key)) continue;
    const near = known.find((k) => squash(k) === squash(key));
    throw new InvalidArgumentError(
      `${what}: unknown option '${key}'${near ? ` (did you mean '${near}'?)` : ''}; known options: ${known.join(', ')}`,
      'options',
    );
  }
  return value;
}

// max_tokens, MaxTokens and maxtokens all point at maxTokens.
function squash(name: string): string {
  return name.replace(/[_-]/g, '').toLowerCase();
}

/** The keys of an options interface, listed once (the Record makes the compiler check the list). */
export function optionNames<T>(keys: Record<keyof T & string, true>): readonly string[] {
  return Object.freeze(Object.keys(keys));
}

/**
 * Token ids checked one by one (each an integer in [0, vocabSize)) and copied into an
 * Int32Array. `what` names the argument.
 */
export function checkTokenIds(ids: ArrayLike<unknown>, vocabSize: number, what: string): Int32Array {
  const out = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i];
    if (typeof t !== 'number' || !Number.isInteger(t)) {
      throw new InvalidArgumentError(`${what}: token at index ${i} is ${describeElement(t)}, not an integer token id`, what);
    }
    if (t < 0 || t >= vocabSize) {
      throw new InvalidArgumentError(`${what}: token ${t} at index ${i} is outside the vocabulary [0, ${vocabSize})`, what);
    }
    out[i] = t;
  }
  return out;
}

/** An array of 32-bit integers (positions, slots, ids) checked entry by entry. */
export function checkInt32Array(values: readonly unknown[], what: string): Int32Array {
  const out = new Int32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) {
      throw new InvalidArgumentError(`${what}[${i}]: expected a 32-bit integer but received ${describeElement(v)}`, lastName(what));
    }
    out[i] = v;
  }
  return out;
}

// "rope: positions" -> "positions": InvalidArgumentError.argument is the parameter's name.
function lastName(what: string): string {
  return what.slice(what.lastIndexOf(' ') + 1);
}
