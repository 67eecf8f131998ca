// Sequence: one KV state that input is appended to, under a cache policy. Appends and
// generations go through the model's scheduler, so the work of many sequences shares forward
// steps; the input stream a sequence keeps (every token it was given or generated, in order) is
// what its KV is recomputed from after the scheduler frees it for other work.
import { AbortError, DisposedError, InvalidArgumentError } from '../errors.js';
import type { ResolvedPolicy } from '../policies/index.js';
import { describe } from '../tensor.js';
import { checkOptions, checkTokenIds, optionNames } from '../validate.js';
import type { GenerateOptions } from './options.js';
import { type FinishReason, type GenerationInit, type GenerationResult, GenerationStream, type LogitsRows, type Scheduler, type SequenceState } from './scheduler.js';

/** Input to append: text, or token ids (each an integer in [0, vocabSize)). */
export type SequenceInput = string | readonly number[] | Int32Array;

export interface AppendOptions {
  /**
   * Logits to return for the appended tokens: 'none' (default; resolves undefined), 'last' (the
   * last appended token's row) or 'all' (one row per appended token), as rows x vocab.
   */
  logits?: LogitsRows;
}

/** Where one layer's cached tokens come from and the RoPE position each key is rotated at now. */
export interface LayerLayout {
  /** Input-stream index of every token the layer holds, in the order attention reads them. */
  source: Int32Array;
  /** RoPE position of each of those tokens' keys. */
  positions: Int32Array;
  /** Per KV head, when the policy keeps different tokens for different heads (never for 'full'). */
  heads?: { source: Int32Array; positions: Int32Array }[];
}

export interface SequenceLayout {
  layers: LayerLayout[];
}

/** @internal What a sequence needs from its model. */
export interface SequenceHost {
  readonly scheduler: Scheduler;
  readonly layers: number;
  readonly vocabSize: number;
  /** Throws DisposedError once the model is disposed. */
  live(what: string): void;
  /** Text as tokens: with the tokenizer's special tokens (BOS) only at the start of a sequence. */
  encodeText(text: string, atStart: boolean): Int32Array;
  /** Throws InvalidArgumentError (naming `argument`) when `tokens` (+ `extra`) exceed the sequence limit. */
  checkLength(tokens: number, extra: number, argument: string): void;
  /** Validates generate() options: what the scheduler needs, and the seed when one is given. */
  generation(options: GenerateOptions | null | undefined): { init: GenerationInit; seed: number | undefined };
}

const APPEND_OPTIONS = optionNames<AppendOptions>({ logits: true });
const LOGITS_ROWS: readonly LogitsRows[] = ['none', 'last', 'all'];

/**
 * One KV state: `append()` input, `generate()` from it, read its `layout()`. Appends and
 * generations run one at a time, in call order; a call made while another runs waits its turn.
 * Create with model.sequence().
 */
export class Sequence {
  /** The cache policy, validated, with its defaults. */
  readonly policy: ResolvedPolicy;
  readonly #host: SequenceHost;
  readonly #state: SequenceState;
  #busy = false;
  readonly #turns: (() => void)[] = [];
  // Work before the first append or generate (attaching stored documents); null once done.
  #prepare: (() => Promise<void>) | null;

  /** @internal Use model.sequence(). */
  constructor(host: SequenceHost, state: SequenceState, policy: ResolvedPolicy, prepare?: () => Promise<void>) {
    this.#host = host;
    this.#state = state;
    this.policy = policy;
    this.#prepare = prepare ?? null;
  }

  // Runs `then` once the sequence is prepared: at once (synchronously) when it already is.
  #whenReady<T>(then: () => T): T | Promise<T> {
    const prepare = this.#prepare;
    if (prepare === null) return then();
    return prepare().then(() => {
      this.#prepare = null;
      this.#live('append');
      return then();
    });
  }

  /** Tokens in the input stream so far: every token appended or generated. */
  get tokenCount(): number {
    return this.#state.length;
  }

  /** Whether dispose() was called. */
  get disposed(): boolean {
    return this.#state.disposed;
  }

  #live(what: string): void {
    if (this.#state.disposed) throw new DisposedError(`${what}: the sequence has been disposed`);
    this.#host.live(what);
  }

  // Runs `start` now when no call is running on this sequence, else after the earlier ones.
  // `start` settles its caller itself and returns a promise of its end.
  #enqueue(start: () => Promise<unknown>): void {
    const go = (): void => {
      this.#busy = true;
      let done: Promise<unknown>;
      try {
        done = start();
      } catch {
        done = Promise.resolve();
      }
      void done.catch(() => {}).finally(() => {
        const next = this.#turns.shift();
        if (next) next();
        else this.#busy = false;
      });
    };
    if (this.#busy) this.#turns.push(go);
    else go();
  }

  /**
   * Appends input to the sequence and computes its KV (prefilled in chunks, batched with the
   * model's other work). Text is tokenized with the tokenizer's special tokens (BOS) when it is
   * the first input of the sequence, and without them after that, so a conversation carries one
   * BOS; token ids are appended as given. Resolves with the logits asked for (AppendOptions).
   */
  append(input: SequenceInput, options?: AppendOptions | null): Promise<Float32Array | undefined> {
    let ids: Int32Array | null;
    let logits: LogitsRows;
    try {
      this.#live('append');
      ({ logits = 'none' } = checkOptions(options, APPEND_OPTIONS, 'append'));
      if (!LOGITS_ROWS.includes(logits)) {
        throw new InvalidArgumentError(`logits: expected 'none', 'last' or 'all' but received ${describe(logits)}`, 'logits');
      }
      ids = this.#checkInput(input);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      this.#enqueue(() => {
        try {
          this.#live('append');
          const done = Promise.resolve(
            this.#whenReady(() => this.appendTokens(ids ?? this.#host.encodeText(input as string, this.#state.length === 0), logits)),
          );
          done.then(resolve, reject);
          return done;
        } catch (e) {
          reject(e);
          return Promise.resolve();
        }
      });
    });
  }

  // Token ids checked now; text is encoded at its turn (whether it opens the sequence decides BOS).
  #checkInput(input: SequenceInput): Int32Array | null {
    if (typeof input === 'string') {
      if (input === '') throw new InvalidArgumentError('input: is empty', 'input');
      return null;
    }
    if (!(input instanceof Int32Array) && !Array.isArray(input)) {
      throw new InvalidArgumentError(`input: expected a string or token ids (number[] or Int32Array) but received ${describe(input)}`, 'input');
    }
    const ids = checkTokenIds(input, this.#host.vocabSize, 'input');
    if (ids.length === 0) throw new InvalidArgumentError('input: is empty', 'input');
    return ids;
  }

  /** @internal Appends checked token ids now (the caller holds this sequence's turn). */
  appendTokens(tokens: Int32Array, logits: LogitsRows): Promise<Float32Array | undefined> {
    if (tokens.length === 0) throw new InvalidArgumentError('input: is empty', 'input');
    if (!this.#state.bounded) this.#host.checkLength(this.#state.length - this.#state.positionOffset + tokens.length, 0, 'input');
    return this.#host.scheduler.append({ seq: this.#state, input: tokens, logits });
  }

  /**
   * Generates from the end of the sequence: the same stream as model.generate() (async iterable
   * of tokens, `result`), with the same options. What it generates stays in the sequence (the
   * tokens of `result.tokens`; a stop token is not kept), so a later append or generate continues
   * after it. A generation that ends on its own first computes the KV of its last token, so
   * layout() covers every token of the stream; one cancelled or aborted leaves that token to the
   * next call. `result.promptTokens` counts the stream the generation read (every earlier token).
   */
  generate(options?: GenerateOptions | null): GenerationStream {
    return this.generateAfter(null, options);
  }

  /** @internal generate() after appending `input` (checked here) in the same turn. */
  generateAfter(input: SequenceInput | null, options?: GenerateOptions | null): GenerationStream {
    this.#live('generate');
    if (options?.policy !== undefined) {
      throw new InvalidArgumentError("policy: a sequence's policy is chosen when it is created (model.sequence({ policy })), not per generation", 'policy');
    }
    const ids = input === null ? new Int32Array(0) : this.#checkInput(input);
    const { init, seed } = this.#host.generation(options);
    const stream = new GenerationStream(() => {});
    // Leaving the stream, or aborting, before its turn comes ends it there and then.
    stream.bind(() => stream.finish(emptyResult(this.#state.length, 'cancelled')));
    const onAbort = (): void => stream.fail(new AbortError(undefined, { cause: init.signal?.reason }));
    init.signal?.addEventListener('abort', onAbort, { once: true });
    // When no earlier call runs, the generation starts inside this call: its errors throw here,
    // as model.generate()'s do; a call that waited its turn fails its stream instead.
    let waited = false;
    let refused: { error: unknown } | undefined;
    this.#enqueue(() => {
      init.signal?.removeEventListener('abort', onAbort);
      if (stream.ended) return Promise.resolve();
      try {
        this.#live('generate');
        const tokens = ids ?? this.#host.encodeText(input as string, this.#state.length === 0);
        if (this.#state.length + tokens.length === 0) throw new InvalidArgumentError('sequence: is empty; append a prompt before generate()', 'sequence');
        if (this.#state.length + tokens.length === this.#state.attached) {
          throw new InvalidArgumentError('sequence: holds only stored documents; append a query before generate()', 'sequence');
        }
        if (!this.#state.bounded) this.#host.checkLength(this.#state.length - this.#state.positionOffset + tokens.length, 0, 'sequence');
        const started = this.#whenReady(() => {
          if (stream.ended) return; // left or aborted while stored documents were attached
          if (seed !== undefined) this.#state.native!.reseed(seed);
          this.generateFrom(tokens, init, stream);
        });
        if (started instanceof Promise) started.catch((e: unknown) => stream.fail(e));
      } catch (e) {
        if (!waited) refused = { error: e };
        stream.fail(e);
      }
      return stream.result;
    });
    waited = true;
    if (refused) throw refused.error;
    return stream;
  }

  /** @internal Appends `input` and generates from it now (the caller holds this sequence's turn). */
  generateFrom(input: Int32Array, init: GenerationInit, stream?: GenerationStream): GenerationStream {
    return this.#host.scheduler.generate({ seq: this.#state, input, logits: 'none', generation: init }, stream);
  }

  /**
   * For every layer, in the order attention reads them: the input-stream index of each token
   * the layer holds and the RoPE position its key is rotated at now. Full attention holds the
   * whole stream: source = positions = 0..n-1 in every layer.
   */
  layout(): SequenceLayout {
    this.#live('layout');
    const { native, placed, attached, bounded } = this.#state;
    const source = Int32Array.from({ length: placed }, (_, i) => i);
    const layers: LayerLayout[] = [];
    if (bounded && native!.length > 0) {
      // A bounded policy's layers hold what it kept, in slot order.
      // (A step in flight may have appended a slot past them: it is not the layer's yet.)
      for (let l = 0; l < this.#host.layers; l++) {
        const source = Int32Array.from(bounded.sources(l));
        const positions = native!.positions(l).slice(0, source.length);
        if (!bounded.headSources) {
          layers.push({ source, positions });
          continue;
        }
        // Each KV head keeps its own tokens, at the slots' shared positions; `source` is head 0's.
        const heads = Array.from({ length: bounded.kvHeads! }, (_, h) => ({
          source: Int32Array.from(bounded.headSources!(l, h)),
          positions: positions.slice(),
        }));
        layers.push({ source, positions, heads });
      }
      return { layers };
    }
    // Where each attached block starts in the stream: the blocks follow each other in it.
    const blockStream: number[] = [];
    for (let l = 0; l < this.#host.layers; l++) {
      // Positions are the engine's data. After the scheduler freed the KV for other work, the
      // layout is the one its recompute restores.
      const held = native!.positions(l);
      if (attached === 0 || held.length === 0) {
        layers.push({ source: source.slice(), positions: held.length >= placed ? held.slice(0, placed) : source.slice() });
        continue;
      }
      // Attached blocks this layer still holds (a policy may have dropped some), then every
      // token fed after them.
      const spans = native!.spans(l);
      if (l === 0) {
        let at = 0;
        for (let i = 0; i < spans.length; i += 4) {
          blockStream[spans[i]!] = at;
          at += spans[i + 2]!;
        }
      }
      const src: number[] = [];
      for (let i = 0; i < spans.length; i += 4) for (let t = 0; t < spans[i + 2]!; t++) src.push(blockStream[spans[i]!]! + t);
      for (let t = attached; t < placed; t++) src.push(t);
      layers.push({ source: Int32Array.from(src), positions: held.slice(0, src.length) });
    }
    return { layers };
  }

  /**
   * Frees the sequence's KV pages at once. A generation still running ends: its `result` rejects
   * with DisposedError (as does an append in progress, and any call waiting its turn). Idempotent.
   */
  dispose(): void {
    if (this.#state.disposed) return;
    this.#host.scheduler.dispose(this.#state);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

// The result of a generation that ended before it started.
function emptyResult(promptTokens: number, finishReason: FinishReason): GenerationResult {
  return {
    text: '',
    tokens: [],
    promptTokens,
    completionTokens: 0,
    finishReason,
    timings: { timeToFirstTokenMs: 0, decodeTokensPerSecond: 0, totalMs: 0 },
  };
}
