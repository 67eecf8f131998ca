// Continuous batching. Every live generation of a model is a Request here; one loop builds each
// forward step from all running requests — decode tokens first (one per request), then prompt
// chunks up to the step's token budget — runs it as one native job, and routes the sampled
// tokens back. Requests join and leave between steps.
//
// Admission: a request runs once the KV pool has pages for its prompt plus one page of decoding
// beyond what the running requests still need for theirs (each keeps the same one-page headroom);
// until then it waits in a FIFO queue. When the pool still runs dry mid-decode, the newest running
// request is preempted: its pages are freed and it goes back to the head of the queue, to be
// recomputed (prompt + generated tokens prefilled again) when pages free up. The oldest request
// always progresses, so the queue drains; only a request that could never fit is refused.
import type { NativeModel, NativeSequence, SamplingSpec, StepRequest } from '../binding.js';
import { AbortError, KvfocusError, OutOfMemoryError, QueueFullError } from '../errors.js';
import type { StreamDecoder } from '../model/tokenizer.js';

/**
 * Why a generation ended: a stop token or string ('stop'), maxTokens or the sequence limit
 * ('length'), or the consumer leaving the stream early ('cancelled': `break` out of
 * `for await`, or the iterator's return() / throw()). An AbortSignal rejects with AbortError
 * instead. ('abort' is never produced; it stays for compatibility.)
 */
export type FinishReason = 'stop' | 'length' | 'abort' | 'cancelled';

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

/**
 * An async iterable of generated tokens, with the whole result as a promise. Leaving the
 * iteration early (`break`, return(), throw()) cancels the generation: its KV pages are freed
 * and `result` resolves with what was generated and finishReason 'cancelled'.
 */
export class GenerationStream implements AsyncIterable<GeneratedToken> {
  readonly result: Promise<GenerationResult>;
  #events: GeneratedToken[] = [];
  #waiters: (() => void)[] = [];
  #end: { error?: unknown } | undefined;
  #resolve!: (r: GenerationResult) => void;
  #reject!: (e: unknown) => void;
  readonly #cancel: () => void;

  /** @internal */
  constructor(cancel: () => void) {
    this.#cancel = cancel;
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
    try {
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
    } finally {
      // Reached with the generation still live only when the consumer left early: nobody will
      // read the rest, so stop it rather than decode to maxTokens holding its pages.
      if (!this.#end) this.#cancel();
    }
  }
}

class Request {
  readonly stream = new GenerationStream(() => this.scheduler.cancel(this));
  state: 'queued' | 'running' | 'done' = 'queued';
  pending: Int32Array; // tokens to feed at the next step
  position = 0; // position of pending[0]; also the sequence's length between steps
  readonly generated: number[] = [];
  text = '';
  emitted = 0; // characters of `text` already streamed
  readonly started = performance.now();
  firstTokenAt = 0;
  cutByStopString = false;
  readonly onAbort = () => this.scheduler.abort(this);

  constructor(
    readonly init: RequestInit,
    private readonly scheduler: Scheduler,
  ) {
    this.pending = init.prompt;
  }
}

export interface SchedulerOptions {
  prefillChunk: number;
  /** Most tokens of one forward step. */
  stepTokens: number;
  maxSequenceTokens: number;
  pageSize: number;
  /** The model's layers: n cached tokens take ceil(n / pageSize) pages of each. */
  layers: number;
  /** Waiting requests beyond which a new one is refused with QueueFullError. */
  maxQueuedRequests: number;
  /** RoPE frequencies for a forward step of this sequence length, when not the model's. */
  ropeFrequencies?: (length: number) => Float32Array | undefined;
}

function asKvfocusError(e: unknown): KvfocusError {
  return e instanceof KvfocusError ? e : new KvfocusError(String(e), 'KVFOCUS_ERROR', { cause: e });
}

export class Scheduler {
  #running: Request[] = []; // in admission order: the last is the newest
  #waiting: Request[] = []; // FIFO; preempted requests go back to the front
  #looping = false;
  #peakQueued = 0;
  #preemptions = 0;

  constructor(
    private readonly model: NativeModel,
    private readonly options: SchedulerOptions,
  ) {}

  get running(): number {
    return this.#running.length;
  }
  get queued(): number {
    return this.#waiting.length;
  }
  /** Most requests waiting at once since the model was loaded. */
  get peakQueued(): number {
    return this.#peakQueued;
  }
  /** Running requests preempted (to be recomputed) because the pool ran dry. */
  get preemptions(): number {
    return this.#preemptions;
  }

  submit(init: RequestInit): GenerationStream {
    const req = new Request(init, this);
    if (init.signal?.aborted) {
      init.seq.release();
      req.stream.fail(new AbortError(undefined, { cause: init.signal.reason }));
      return req.stream;
    }
    this.#waiting.push(req);
    this.#admit();
    if (req.state === 'queued' && this.#waiting.length > this.options.maxQueuedRequests) {
      this.#waiting.pop();
      init.seq.release();
      throw new QueueFullError(
        `the request queue is full: ${this.#waiting.length} request(s) waiting (maxQueuedRequests ${this.options.maxQueuedRequests}) for KV pages; retry later, or raise maxQueuedRequests or kvCacheTokens`,
      );
    }
    this.#peakQueued = Math.max(this.#peakQueued, this.#waiting.length);
    init.signal?.addEventListener('abort', req.onAbort, { once: true });
    if (!this.#looping) void this.#loop();
    return req.stream;
  }

  abort(req: Request): void {
    if (req.state !== 'done') this.#end(req, new AbortError(undefined, { cause: req.init.signal?.reason }));
  }

  cancel(req: Request): void {
    if (req.state !== 'done') this.#end(req, 'cancelled');
  }

  // Pages of every layer for a sequence of `tokens` tokens.
  #pages(tokens: number): number {
    return Math.ceil(tokens / this.options.pageSize) * this.options.layers;
  }

  // Tokens a request should have room for: what it has yet to feed plus one page of decoding,
  // but never more than it can reach.
  #claim(req: Request): number {
    const target = req.position + req.pending.length;
    const longest = Math.min(req.init.prompt.length + req.init.maxTokens, this.options.maxSequenceTokens);
    return Math.max(target, Math.min(target + this.options.pageSize, longest));
  }

  // Free pages not yet spoken for by running requests. Their cached length is read from the
  // sequence, which a step in flight has already extended.
  #available(): number {
    let free = this.model.freePages();
    for (const r of this.#running) free -= Math.max(0, this.#pages(this.#claim(r)) - this.#pages(r.init.seq.length));
    return free;
  }

  // Starts waiting requests in order while their claim fits. With nothing running the head
  // always starts: it fits the pool (generate() checks), so it could only wait for pages held
  // outside the scheduler (logits()), and a step fails it if they are still taken.
  #admit(): void {
    while (this.#waiting.length > 0) {
      const req = this.#waiting[0]!;
      if (this.#running.length > 0 && this.#pages(this.#claim(req)) > this.#available()) return;
      this.#waiting.shift();
      req.state = 'running';
      this.#running.push(req);
    }
  }

  // Frees a running request's pages and queues it at the front to be recomputed: the prompt and
  // every generated token are fed again, and the last chunk samples the next token as its decode
  // step would have (the sampler's random state lives on in the sequence). Under dynamic NTK
  // past max_position_embeddings the recomputed keys take the frequencies of that one pass, not
  // of the decode steps that first computed them, so the output there may differ.
  #preempt(req: Request): void {
    this.#running = this.#running.filter((r) => r !== req);
    req.init.seq.clear();
    const all = new Int32Array(req.init.prompt.length + req.generated.length);
    all.set(req.init.prompt);
    all.set(req.generated, req.init.prompt.length);
    req.pending = all;
    req.position = 0;
    req.state = 'queued';
    this.#waiting.unshift(req);
    this.#preemptions++;
    this.#peakQueued = Math.max(this.#peakQueued, this.#waiting.length);
  }

  // Ends a request: frees its KV pages at once (a step in flight keeps its own reference until
  // it finishes) and settles its stream.
  #end(req: Request, outcome: KvfocusError | Exclude<FinishReason, 'abort'>): void {
    req.state = 'done';
    this.#running = this.#running.filter((r) => r !== req);
    this.#waiting = this.#waiting.filter((r) => r !== req);
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
    this.#looping = true;
    try {
      for (;;) {
        this.#admit();
        if (this.#running.length === 0) return; // #admit starts the head when nothing runs: the queue is empty
        const batch = this.#plan();
        let out: Awaited<ReturnType<NativeModel['step']>>;
        try {
          out = await this.model.step(batch.map((b) => b.step));
        } catch (e) {
          // A step that failed on the device had already appended its tokens' slots: drop them,
          // so the requests that go on feed those tokens again at the same positions.
          for (const { req } of batch) {
            const stale = req.state === 'done' ? 0 : req.init.seq.length - req.position;
            if (stale > 0) req.init.seq.truncate(stale);
          }
          // Out of pages (taken outside the scheduler since the plan, by logits()) or of device
          // memory: preempt as the plan would have. With one request left it fails.
          if (e instanceof OutOfMemoryError && this.#running.length > 1) {
            this.#preempt(this.#running[this.#running.length - 1]!);
            continue;
          }
          const victims = e instanceof OutOfMemoryError ? batch.slice(-1) : batch;
          for (const { req } of victims) if (req.state !== 'done') this.#guard(req, () => this.#end(req, asKvfocusError(e)));
          continue;
        }
        batch.forEach(({ req, fed, sampling }, i) => {
          if (req.state === 'done') return; // aborted or cancelled while the step ran
          req.pending = req.pending.subarray(fed);
          req.position += fed;
          // Decoding runs the checkpoint's tokenizer: its failure ends this request (its
          // `result` rejects), never the loop, whose rejection nobody would handle.
          if (sampling) this.#guard(req, () => this.#accept(req, out.tokens[i]!));
        });
      }
    } catch (e) {
      // Anything else that escapes a step fails every live request instead of the process.
      for (const req of [...this.#running, ...this.#waiting]) this.#guard(req, () => this.#end(req, asKvfocusError(e)));
    } finally {
      this.#looping = false;
    }
  }

  #guard(req: Request, action: () => void): void {
    try {
      action();
    } catch (e) {
      if (req.state === 'done') {
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

  // The next step's batch. When its new tokens need more pages than are free, the newest running
  // request is preempted (and the batch rebuilt) instead of failing the step.
  #plan(): { req: Request; fed: number; sampling: boolean; step: StepRequest }[] {
    for (;;) {
      const batch = this.#build();
      let need = 0;
      for (const { req, fed } of batch) need += this.#pages(req.position + fed) - this.#pages(req.position);
      if (need <= this.model.freePages() || this.#running.length === 1) return batch;
      this.#preempt(this.#running[this.#running.length - 1]!);
    }
  }

  // Decode rows first (one token each), then prompt chunks within the step's token budget.
  #build(): { req: Request; fed: number; sampling: boolean; step: StepRequest }[] {
    let budget = this.options.stepTokens;
    const order = [...this.#running].sort((a, b) => a.pending.length - b.pending.length);
    const batch: { req: Request; fed: number; sampling: boolean; step: StepRequest }[] = [];
    for (const req of order) {
      if (budget <= 0) break;
      const n = Math.min(req.pending.length, this.options.prefillChunk, budget);
      budget -= n;
      const tokens = req.pending.subarray(0, n);
      const positions = Int32Array.from({ length: n }, (_, i) => req.position + i);
      const sampling = n === req.pending.length; // the prompt (or last token) is complete
      // The sequence length HF would see in this forward: the whole prompt for each prompt chunk
      // (HF reads it in one forward), then each decode step's own length.
      const invFreq = this.options.ropeFrequencies?.(Math.max(req.init.prompt.length, req.position + n));
      batch.push({
        req,
        fed: n,
        sampling,
        step: {
          seq: req.init.seq,
          tokens: Int32Array.from(tokens),
          positions,
          logits: 'none',
          ...(sampling ? { sample: req.init.sampling } : {}),
          ...(invFreq ? { invFreq } : {}),
        },
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
    // The token just sampled would sit at req.position: a sequence that has filled the KV cache
    // ends as it would at maxTokens, not with an out-of-memory error on its next step.
    if (req.generated.length >= req.init.maxTokens || req.position >= this.options.maxSequenceTokens) {
      this.#end(req, 'length');
      return;
    }
    req.pending = Int32Array.of(token);
  }
}
