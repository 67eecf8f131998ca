// Chat templates rendered within bounds. A template comes with the checkpoint, so it is input
// from outside, and Jinja is a language: `{% for x in range(10**9) %}` builds a billion-element
// array (V8 aborts the process), nested loops or a doubling string exhaust memory or CPU. The
// renderer here is @huggingface/jinja's interpreter with a budget checked at every node it
// evaluates: a step count and a deadline bound the time; a size bound on every string, list and
// mapping produced, and on the heap's growth, bound the memory; range() and numeric arguments
// (indent widths) are refused before they allocate. Exceeding the budget is a ModelFormatError naming the file that
// holds the template.

import * as path from 'node:path';
import { getHeapStatistics } from 'node:v8';
import type { Template } from '@huggingface/jinja' with { 'resolution-mode': 'import' };
import { InvalidArgumentError, ModelFormatError } from '../errors.js';

type JinjaModule = typeof import('@huggingface/jinja', { with: { 'resolution-mode': 'import' } });

export interface TemplateLimits {
  /** Nodes evaluated. A Llama 3 template spends about 100 per message. */
  readonly maxSteps: number;
  /** Wall-clock time of one render. */
  readonly maxMilliseconds: number;
  /** Characters of any string the template builds, on top of the size of its input. */
  readonly maxChars: number;
  /** Items of any list or mapping the template builds (range() included), and the largest
   * number passed to a function or filter. */
  readonly maxItems: number;
  /** Growth of the JavaScript heap during one render. */
  readonly maxHeapBytes: number;
}

export const DEFAULT_TEMPLATE_LIMITS: TemplateLimits = {
  maxSteps: 5_000_000,
  maxMilliseconds: 2_000,
  maxChars: 1024 * 1024,
  maxItems: 100_000,
  maxHeapBytes: 256 * 1024 * 1024,
};

/** Thrown inside the interpreter; becomes a ModelFormatError at the render call. */
class TemplateLimitExceeded extends Error {}

interface RuntimeValue {
  readonly type: string;
  readonly value: unknown;
}
interface InterpreterLike {
  run(program: unknown): RuntimeValue;
}
type InterpreterClass = new (env: unknown) => InterpreterLike & {
  evaluate(node: unknown, env: unknown): RuntimeValue;
  evaluateArguments(args: unknown, env: unknown): [RuntimeValue[], Map<string, RuntimeValue>];
};

class Budget {
  steps = 0;
  readonly deadline: number;
  readonly heapLimit: number;
  constructor(
    readonly limits: TemplateLimits,
    readonly maxChars: number,
  ) {
    this.deadline = performance.now() + limits.maxMilliseconds;
    this.heapLimit = getHeapStatistics().used_heap_size + limits.maxHeapBytes;
  }

  step(): void {
    // Clock and heap every 64 steps: one step builds at most a few MB (strings are bounded), so
    // the heap cannot run far past its limit between checks.
    if (++this.steps % 64 !== 0) return;
    if (this.steps > this.limits.maxSteps) throw new TemplateLimitExceeded(`evaluated more than ${this.limits.maxSteps} steps`);
    if (performance.now() > this.deadline) throw new TemplateLimitExceeded(`ran longer than ${this.limits.maxMilliseconds} ms`);
    if (getHeapStatistics().used_heap_size > this.heapLimit) {
      throw new TemplateLimitExceeded(`grew the heap by more than ${Math.round(this.limits.maxHeapBytes / 2 ** 20)} MiB`);
    }
  }

  check(value: RuntimeValue): void {
    const v = value.value;
    if (typeof v === 'string' && v.length > this.maxChars) throw new TemplateLimitExceeded(`built a string of over ${this.maxChars} characters`);
    if (Array.isArray(v) && v.length > this.limits.maxItems) throw new TemplateLimitExceeded(`built a list of over ${this.limits.maxItems} items`);
    if (v instanceof Map && v.size > this.limits.maxItems) throw new TemplateLimitExceeded(`built a mapping of over ${this.limits.maxItems} items`);
  }

  /** Numbers handed to functions and filters size what they build (indent(10**9), center()). */
  checkArgument(value: RuntimeValue): void {
    if (typeof value.value === 'number' && Math.abs(value.value) > this.limits.maxItems) {
      throw new TemplateLimitExceeded(`passed ${value.value} to a function or filter (limit ${this.limits.maxItems})`);
    }
  }
}

type BoundedInterpreterClass = new (env: unknown, budget: Budget) => InterpreterLike;
const interpreterClasses = new WeakMap<JinjaModule, BoundedInterpreterClass>();

function interpreterClass(jinja: JinjaModule): BoundedInterpreterClass {
  const cached = interpreterClasses.get(jinja);
  if (cached) return cached;
  // evaluate/evaluateArguments are the interpreter's only entry points for nodes and call
  // arguments; they are private in its typings, hence the cast.
  const Base = jinja.Interpreter as unknown as InterpreterClass;
  class BoundedInterpreter extends Base {
    readonly #budget: Budget;
    constructor(env: unknown, budget: Budget) {
      super(env);
      this.#budget = budget;
    }
    override evaluate(node: unknown, env: unknown): RuntimeValue {
      this.#budget.step();
      const value = super.evaluate(node, env);
      this.#budget.check(value);
      return value;
    }
    override evaluateArguments(args: unknown, env: unknown): [RuntimeValue[], Map<string, RuntimeValue>] {
      const evaluated = super.evaluateArguments(args, env);
      for (const value of evaluated[0]) this.#budget.checkArgument(value);
      for (const value of evaluated[1].values()) this.#budget.checkArgument(value);
      return evaluated;
    }
  }
  interpreterClasses.set(jinja, BoundedInterpreter);
  return BoundedInterpreter;
}

/** Python's range() (as @huggingface/jinja's), refusing more than `maxItems` items up front. */
function boundedRange(maxItems: number) {
  return (start: number, stop?: number, step = 1): number[] => {
    if (stop === undefined) [start, stop] = [0, start];
    if (![start, stop, step].every((n) => typeof n === 'number' && Number.isFinite(n))) throw new Error('range() takes numbers');
    if (step === 0) throw new Error('range() step must not be zero');
    const count = Math.max(0, Math.ceil((stop - start) / step));
    if (count > maxItems) throw new TemplateLimitExceeded(`called range() for ${count} items (limit ${maxItems})`);
    return Array.from({ length: count }, (_, i) => start + i * step);
  };
}

/** strftime_now(format), as @huggingface/jinja defines it (%Y %m %d %b %B %H %M %%). */
function strftimeNow(format: string): string {
  const date = new Date();
  const pad2 = (n: number): string => String(n).padStart(2, '0');
  return String(format).replace(/%[YmdbBHM%]/g, (token) => {
    switch (token) {
      case '%Y':
        return String(date.getFullYear());
      case '%m':
        return pad2(date.getMonth() + 1);
      case '%d':
        return pad2(date.getDate());
      case '%b':
        return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(date);
      case '%B':
        return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(date);
      case '%H':
        return pad2(date.getHours());
      case '%M':
        return pad2(date.getMinutes());
      default:
        return '%';
    }
  });
}

/** Characters of the strings inside `value` (messages, tools, documents), to size the budget. */
function textSize(value: unknown, seen = new Set<unknown>()): number {
  if (typeof value === 'string') return value.length;
  if (typeof value !== 'object' || value === null || seen.has(value)) return 0;
  seen.add(value);
  let n = 0;
  for (const [key, item] of Object.entries(value)) n += key.length + textSize(item, seen);
  return n;
}

export class ChatTemplate {
  constructor(
    readonly template: Template,
    /** The file the template came from (tokenizer_config.json or chat_template.jinja). */
    readonly file: string,
    readonly jinja: JinjaModule,
  ) {}

  /**
   * Renders with `variables`, as Template.render does, within `limits`. A string may be as long
   * as twice the input's text plus limits.maxChars, so long conversations still render.
   */
  render(variables: Readonly<Record<string, unknown>>, limits: TemplateLimits = DEFAULT_TEMPLATE_LIMITS): string {
    const jinja = this.jinja;
    const Interpreter = interpreterClass(jinja);
    const budget = new Budget(limits, limits.maxChars + 2 * textSize(variables));
    // The globals Template.render sets up, with range() bounded.
    const env = new jinja.Environment();
    const globals: Record<string, unknown> = {
      false: false,
      true: true,
      none: null,
      False: false,
      True: true,
      None: null,
      raise_exception: (message: unknown) => {
        throw new Error(String(message));
      },
      range: boundedRange(limits.maxItems),
      strftime_now: strftimeNow,
    };
    for (const [key, value] of Object.entries({ ...globals, ...variables })) env.set(key, value);
    const name = path.basename(this.file);
    try {
      const result = new Interpreter(env, budget).run(this.template.parsed);
      return String(result.value);
    } catch (error) {
      if (error instanceof TemplateLimitExceeded) {
        throw new ModelFormatError(`${name}: the chat template exceeded its limits: it ${error.message}`, this.file);
      }
      // Out of stack (unbounded recursion through macros) or past V8's longest string.
      if (error instanceof RangeError) {
        throw new ModelFormatError(`${name}: the chat template exceeded its limits (${error.message})`, this.file);
      }
      // Templates reject bad conversations with raise_exception("..."), e.g. roles out of order.
      throw new InvalidArgumentError(`chat template failed: ${(error as Error).message}`, 'messages');
    }
  }
}
