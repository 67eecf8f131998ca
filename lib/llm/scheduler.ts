// Continuous batching. Every live generation of a model is a Request here; one loop builds each
// forward step from all of them — decode tokens first (one per request), then prompt chunks up
// to the step's token budget — runs it as one native job, and routes the sampled tokens back.
// Requests join and leave between steps, so a new prompt never waits for others to finish.
import type { NativeModel, NativeSequence, SamplingSpec, StepRequest } from '../binding.js';
import { AbortError, KvfocusError, OutOfMemoryError } from '../errors.js';
import type { StreamDecoder } from '../model/tokenizer.js';

function asKvfocusError(e: unknown): KvfocusError {
  return e instanceof KvfocusError ? e : new KvfocusError(String(e), 'KVFOCUS_ERROR', { cause: e });
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GeneratedToken {
  token: number;
  /**
   * Text this token completes (empty while a multi-byte character, or a possible stop string, is
   * incomplete). A last event with token -1 carries text held back that way when the generation
   * ends for another reason.
   */
  text: string;
}

export interface GenerationResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  completionTokens: number;
  finishReason: FinishReason;
  timings: {
    /** From generate() to the first generated token. */
    timeToFirstTokenMs: number;
    /** Generated tokens after the first, per second of decoding. */
    decodeTokensPerSecond: number;
    totalMs: number;
  };
}

export interface RequestInit {
  seq: NativeSequence;
  prompt: Int32Array;
  sampling: SamplingSpec;
  maxTokens: number;
  stop: string[];
  stopTokens: Set<number>;
  decoder: StreamDecoder;
  signal: AbortSignal | undefined;
}

/** An async iterable of generated tokens, with the whole result as a promise. */
export class GenerationStream implements AsyncIterable<GeneratedToken> {
  readonly result: Promise<GenerationResult>;
  #events: GeneratedToken[] = [];
  #waiters: (() => void)[] = [];
  #end: { error?: unknown } | undefined;
  #resolve!: (r: GenerationResult) => void;
  #reject!: (e: unknown) => void;

  constructor() {
    this.result = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.result.catch(() => {}); // rejections are delivered to whoever awaits; never unhandled
  }

  /** @internal */ push(t: GeneratedToken): void {
    this.#events.push(t);
    this.#wake();
  }
  /** @internal */ finish(r: GenerationResult): void {
    this.#end = {};
    this.#resolve(r);
    this.#wake();
  }
  /** @internal */ fail(error: unknown): void {
    this.#end = { error };
    this.#reject(error);
    this.#wake();
  }
  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GeneratedToken> {
    for (;;) {
      const next = this.#events.shift();
      if (next) {
        yield next;
        continue;
      }
      if (this.#end) {
        if (this.#end.error !== undefined) throw this.#end.error;
        return;
      }
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }
}

class Request {
  readonly stream = new GenerationStream();
  pending: Int32Array; // tokens to feed at the next step
  position = 0; // position of pending[0]
  readonly generated: number[] = [];
  text = '';
  emitted = 0; // characters of `text` already streamed
  readonly started = performance.now();
  firstTokenAt = 0;
  done = false;
  cutByStopString = false;
  readonly onAbort = () => this.scheduler.abort(this);

  constructor(
    readonly init: RequestInit,
    private readonly scheduler: Scheduler,
  ) {
    this.pending = init.prompt;
  }
}

export class Scheduler {
  #active: Request[] = [];
  #running = false;

  constructor(
    private readonly model: NativeModel,
    private readonly options: { prefillChunk: number; stepTokens: number; maxSequenceTokens: number },
  ) {}

  get active(): number {
    return this.#active.length;
  }

  submit(init: RequestInit): GenerationStream {
    const req = new Request(init, this);
    if (init.signal?.aborted) {
      init.seq.release();
      req.stream.fail(new AbortError(undefined, { cause: init.signal.reason }));
      return req.stream;
    }
    init.signal?.addEventListener('abort', req.onAbort, { once: true });
    this.#active.push(req);
    if (!this.#running) void this.#loop();
    return req.stream;
  }

  abort(req: Request): void {
    if (req.done) return;
    this.#end(req, new AbortError(undefined, { cause: req.init.signal?.reason }));
  }

  // Ends a request: frees its KV pages at once (a step in flight keeps its own reference until
  // it finishes) and settles its stream.
  #end(req: Request, outcome: KvfocusError | GenerationResult['finishReason']): void {
    req.done = true;
    this.#active = this.#active.filter((r) => r !== req);
    req.init.signal?.removeEventListener('abort', req.onAbort);
    req.init.seq.release();
    if (typeof outcome !== 'string') {
      req.stream.fail(outcome);
      return;
    }
    // Bytes the decoder still holds (an unfinished UTF-8 sequence) belong to the text, unless a
    // stop string cut it.
    if (!req.cutByStopString) req.text += req.init.decoder.flush();
    if (req.text.length > req.emitted) req.stream.push({ token: -1, text: req.text.slice(req.emitted) });
    const now = performance.now();
    const decodeMs = now - req.firstTokenAt;
    req.stream.finish({
      text: req.text,
      tokens: req.generated,
      promptTokens: req.init.prompt.length,
      completionTokens: req.generated.length,
      finishReason: outcome,
      timings: {
        timeToFirstTokenMs: req.firstTokenAt ? req.firstTokenAt - req.started : now - req.started,
        decodeTokensPerSecond: req.generated.length > 1 && decodeMs > 0 ? ((req.generated.length - 1) * 1000) / decodeMs : 0,
        totalMs: now - req.started,
      },
    });
  }

  async #loop(): Promise<void> {
    this.#running = true;
    try {
      while (this.#active.length > 0) {
        const batch = this.#plan();
        let out: Awaited<ReturnType<NativeModel['step']>>;
        try {
          out = await this.model.step(batch.map((b) => b.step));
        } catch (e) {
          // Out of KV pages: fail the newest request of the step and go on with the others.
          const victims = e instanceof OutOfMemoryError ? batch.slice(-1) : batch;
          for (const { req } of victims) if (!req.done) this.#guard(req, () => this.#end(req, asKvfocusError(e)));
          continue;
        }
        batch.forEach(({ req, fed, sampling }, i) => {
          if (req.done) return; // aborted while the step ran
          req.pending = req.pending.subarray(fed);
          req.position += fed;
          // Decoding runs the checkpoint's tokenizer: its failure ends this request (its
          // `result` rejects), never the loop, whose rejection nobody would handle.
          if (sampling) this.#guard(req, () => this.#accept(req, out.tokens[i]!));
        });
      }
    } catch (e) {
      // Anything else that escapes a step fails every live request instead of the process.
      for (const req of [...this.#active]) this.#guard(req, () => this.#end(req, asKvfocusError(e)));
    } finally {
      this.#running = false;
    }
  }

  #guard(req: Request, action: () => void): void {
    try {
      action();
    } catch (e) {
      if (req.done) {
        // #end itself failed (the decoder's flush): settle the stream directly.
        req.stream.fail(asKvfocusError(e));
        return;
      }
      try {
        this.#end(req, asKvfocusError(e));
      } catch (again) {
        req.stream.fail(asKvfocusError(again));
      }
    }
  }

  // Decode rows first (one token each), then prompt chunks within the step's token budget.
  #plan(): { req: Request; fed: number; sampling: boolean; step: StepRequest }[] {
    let budget = this.options.stepTokens;
    const order = [...this.#active].sort((a, b) => a.pending.length - b.pending.length);
    const batch: { req: Request; fed: number; sampling: boolean; step: StepRequest }[] = [];
    for (const req of order) {
      if (budget <= 0) break;
      const n = Math.min(req.pending.length, this.options.prefillChunk, budget);
      budget -= n;
      const tokens = req.pending.subarray(0, n);
      const positions = Int32Array.from({ length: n }, (_, i) => req.position + i);
      const sampling = n === req.pending.length; // the prompt (or last token) is complete
      batch.push({
        req,
        fed: n,
        sampling,
        step: { seq: req.init.seq, tokens: Int32Array.from(tokens), positions, logits: 'none', ...(sampling ? { sample: req.init.sampling } : {}) },
      });
    }
    return batch;
  }

  #accept(req: Request, token: number): void {
    if (req.generated.length === 0) req.firstTokenAt = performance.now();
    if (req.init.stopTokens.has(token)) {
      this.#end(req, 'stop');
      return;
    }
    req.generated.push(token);
    req.text += req.init.decoder.push(token);
    // Stop strings: cut at the earliest match; hold back a tail that could still become one.
    let cut = -1;
    for (const s of req.init.stop) {
      const at = req.text.indexOf(s, Math.max(0, req.emitted - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      req.text = req.text.slice(0, cut);
      req.cutByStopString = true;
      this.#end(req, 'stop');
      return;
    }
    let hold = 0;
    for (const s of req.init.stop) {
      for (let k = Math.min(s.length - 1, req.text.length); k > hold; k--) {
        if (req.text.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    const safe = req.text.length - hold;
    req.stream.push({ token, text: safe > req.emitted ? req.text.slice(req.emitted, safe) : '' });
    req.emitted = Math.max(req.emitted, safe);
    // The token just sampled would sit at req.position: a sequence that has reached its longest
    // length (the KV cache, or a sliding window) ends as it would at maxTokens, not with an
    // out-of-memory error on its next step.
    if (req.generated.length >= req.init.maxTokens || req.position >= this.options.maxSequenceTokens) {
      this.#end(req, 'length');
      return;
    }
    req.pending = Int32Array.of(token);
  }
}
