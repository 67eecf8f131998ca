// Continuous batching. Every live append or generation of a model's sequences is a Request here;
// one loop builds each forward step from all running requests — decode tokens first (one per
// request), then input chunks up to the step's token budget — runs it as one native job, and
// routes logits and sampled tokens back. Requests join and leave between steps.
//
// A sequence (SequenceState) is an input stream — every token it was given or generated, in
// order — and the KV of a prefix of it. A request feeds the rest of the stream, then samples if it
// is a generation. Between requests a sequence kept by the caller is idle and holds its pages.
//
// Admission: a request runs once the KV pool has pages for its input plus one page of decoding
// beyond what the running requests still need for theirs (each keeps the same one-page headroom);
// until then it waits in a FIFO queue. Idle sequences give way first: the least recently used has
// its KV freed (an eviction), to be recomputed from its input stream when it is used again. When
// the pool still runs dry mid-decode, the newest running request is preempted the same way and
// goes back to the head of the queue. The oldest request always progresses, so the queue drains;
// only a request that could never fit is refused.
import type { NativeKvBlock, NativeModel, NativeSequence, SamplingSpec, StepRequest } from '../binding.js';
import { AbortError, DisposedError, KvfocusError, OutOfMemoryError, QueueFullError } from '../errors.js';
import type { StreamDecoder } from '../model/tokenizer.js';
import type { LayerSegmenter } from '../policies/cache-focus-runtime.js';
import type { BoundedPolicyRuntime } from '../policies/bounded-runtime.js';
import type { ContextAttention } from '../policies/ape-runtime.js';

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

/** What a generation samples and when it stops. */
export interface GenerationInit {
  sampling: SamplingSpec;
  maxTokens: number;
  stop: string[];
  stopTokens: Set<number>;
  decoder: StreamDecoder;
  signal: AbortSignal | undefined;
}

/** Rows of logits an append returns: none, its last input token's, or every input token's. */
export type LogitsRows = 'none' | 'last' | 'all';

/**
 * One sequence's KV state and the input stream it was computed from. `keep`: the caller holds the
 * sequence between requests (model.sequence()); otherwise its pages go when its one request ends.
 */
export class SequenceState {
  native: NativeSequence | null;
  #stream = new Int32Array(64);
  /** Tokens of the input stream. */
  length = 0;
  /** Stream tokens whose KV the native sequence holds: a prefix of the stream (0 after an eviction). */
  cached = 0;
  /** Stream tokens placed in the cache once at least (an eviction or preemption keeps the count). */
  placed = 0;
  /** The append or generation feeding this sequence now. */
  request: Request | null = null;
  disposed = false;
  /**
   * Stream tokens whose KV comes from stored blocks (a store's prefix and documents) rather than
   * from forward steps: the first `attached` tokens. After an eviction they are attached again
   * (`restore`), never recomputed.
   */
  attached = 0;
  restore: (() => void) | null = null;
  /** Block handles this sequence holds until it is released (the stored pages it reads). */
  pins: NativeKvBlock[] = [];
  /**
   * Stream index minus RoPE position of the tokens fed after the attached ones (layer 0's
   * frame): 0 unless stored documents share positions (parallel windows beyond the context).
   */
  positionOffset = 0;
  /** A policy that runs this sequence's next prefill in segments of layers (CacheFocus). */
  segments: LayerSegmenter | null = null;
  /** A policy that bounds what each layer keeps, applied after every step (streaming, LaCache, H2O). */
  bounded: BoundedPolicyRuntime | null = null;
  /** A policy whose steps attend to the documents as a separate part (APE's two-part attention). */
  contextAttention: ContextAttention | null = null;

  constructor(
    native: NativeSequence,
    readonly keep: boolean,
  ) {
    this.native = native;
  }

  get tokens(): Int32Array {
    return this.#stream.subarray(0, this.length);
  }

  push(tokens: ArrayLike<number>): void {
    if (this.length + tokens.length > this.#stream.length) {
      const grown = new Int32Array(Math.max(this.#stream.length * 2, this.length + tokens.length));
      grown.set(this.tokens);
      this.#stream = grown;
    }
    this.#stream.set(tokens, this.length);
    this.length += tokens.length;
  }

  // Cuts the stream back to `length` tokens, and the KV with it.
  // Drops the KV of a bounded policy's sequence: its stream is fed again from the start.
  recompute(): void {
    this.native?.clear();
    this.cached = 0;
    this.bounded?.reset();
  }

  rollback(length: number): void {
    this.length = Math.min(this.length, length);
    this.placed = Math.min(this.placed, length);
    if (this.cached > length && this.bounded) {
      // What a bounded policy evicted is gone: its KV is recomputed from the stream instead.
      this.recompute();
    } else if (this.cached > length) {
      this.native?.truncate(this.cached - length);
      this.cached = length;
    }
  }
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
  #cancel: () => void;

  /** @internal */
  constructor(cancel: () => void) {
    this.#cancel = cancel;
    this.result = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.result.catch(() => {}); // rejections are delivered to whoever awaits; never unhandled
  }

  /** @internal What leaving the stream early does, once the request behind it exists. */ bind(cancel: () => void): void {
    this.#cancel = cancel;
  }
  /** @internal */ get ended(): boolean {
    return this.#end !== undefined;
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
  readonly stream: GenerationStream | null;
  state: 'queued' | 'running' | 'done' = 'queued';
  from = 0; // stream index of this request's first input token
  end = 0; // stream length once its input is in: what its generation reads
  rowsTo = 0; // stream index up to which logits rows were collected
  readonly rows: Float32Array[] = [];
  readonly generated: number[] = [];
  text = '';
  emitted = 0; // characters of `text` already streamed
  readonly started = performance.now();
  firstTokenAt = 0;
  cutByStopString = false;
  // Set once a generation has decided to end: it still feeds its last sampled token, so that the
  // sequence's KV holds every token of its stream, and then finishes with this reason.
  finishing: Exclude<FinishReason, 'abort'> | null = null;
  readonly onAbort = () => this.scheduler.abort(this);

  constructor(
    readonly init: RequestInit,
    private readonly scheduler: Scheduler,
    stream: GenerationStream | null,
    readonly settle: { resolve: (rows: Float32Array | undefined) => void; reject: (e: unknown) => void } | null,
  ) {
    this.stream = stream;
  }

  get signal(): AbortSignal | undefined {
    return this.init.generation?.signal;
  }
}

export interface RequestInit {
  seq: SequenceState;
  /** Tokens appended to the sequence's input stream when the request is submitted. */
  input: Int32Array;
  /** Logits rows to return for `input` (appends; generations take none). */
  logits: LogitsRows;
  /** Present for a generation: after the input, sample until a stop condition. */
  generation?: GenerationInit;
  /** Runs when an append has computed its input, before its sequence is released or idle. */
  capture?: () => void;
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

interface Planned {
  req: Request;
  fed: number;
  sampling: boolean;
  /** A step of a segmented prefill: the request's input counts as fed after its last segment. */
  segment?: boolean;
  rows: [number, number] | null; // input rows [a, b) of this chunk whose logits the request keeps
  step: StepRequest;
}

export class Scheduler {
  #running: Request[] = []; // in admission order: the last is the newest
  #waiting: Request[] = []; // FIFO; preempted requests go back to the front
  #idle: SequenceState[] = []; // kept sequences holding KV with no request, least recently used first
  #looping = false;
  // Two-part attention (APE) and column sums (H2O) cannot share a step: the kind a step left
  // out goes first in the next one.
  #first: 'context' | 'scores' | null = null;
  #peakQueued = 0;
  #preemptions = 0;
  #evictions = 0;

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
  /** Idle sequences whose KV was freed for other work (to be recomputed when used again). */
  get evictions(): number {
    return this.#evictions;
  }

  /** Starts a generation on `init.seq`: feeds `init.input` (and any unfed stream tail), then samples. */
  generate(init: RequestInit, stream?: GenerationStream): GenerationStream {
    const s = stream ?? new GenerationStream(() => {});
    const req = new Request(init, this, s, null);
    s.bind(() => this.cancel(req));
    this.#submit(req);
    return s;
  }

  /** Appends `init.input` to `init.seq` and resolves once its KV is computed, with the rows asked for. */
  append(init: RequestInit): Promise<Float32Array | undefined> {
    return new Promise((resolve, reject) => {
      this.#submit(new Request(init, this, null, { resolve, reject }));
    });
  }

  #submit(req: Request): void {
    const { seq, input, generation } = req.init;
    if (seq.native === null || seq.disposed) throw new DisposedError('the sequence has been disposed');
    if (seq.request !== null) throw new KvfocusError('a sequence runs one request at a time');
    if (req.signal?.aborted) {
      if (!seq.keep) this.#release(seq);
      req.state = 'done';
      req.stream?.fail(new AbortError(undefined, { cause: req.signal.reason }));
      return;
    }
    this.#idle = this.#idle.filter((s) => s !== seq);
    // Slots a step appended for a request that ended while the step ran were never accepted.
    const stale = seq.native.length - (seq.bounded ? seq.bounded.held : seq.cached);
    if (stale > 0 && seq.segments && seq.cached === seq.attached) {
      // A segmented prefill left part way: its pruning is undone by attaching the documents again.
      seq.native.clear();
      seq.cached = 0;
      seq.segments.reset();
    } else if (stale > 0) seq.native.truncate(stale);
    req.from = seq.length;
    seq.push(input);
    req.end = seq.length;
    req.rowsTo = req.from;
    // Sampling reads the logits of the stream's last token: when its KV is already cached (a
    // generation continuing a sequence), feed it again, at the same position.
    if (generation && seq.cached === seq.length && seq.cached > 0) {
      if (seq.bounded) seq.cached = seq.bounded.dropFrom(seq.cached - 1);
      else {
        seq.native.truncate(1);
        seq.cached -= 1;
      }
    }
    seq.request = req;
    this.#waiting.push(req);
    this.#admit();
    if (req.state === 'queued' && this.#waiting.length > this.options.maxQueuedRequests) {
      this.#waiting.pop();
      seq.request = null;
      seq.rollback(req.from);
      req.state = 'done';
      if (seq.keep) this.#idle.push(seq);
      else this.#release(seq);
      throw new QueueFullError(
        `the request queue is full: ${this.#waiting.length} request(s) waiting (maxQueuedRequests ${this.options.maxQueuedRequests}) for KV pages; retry later, or raise maxQueuedRequests or kvCacheTokens`,
      );
    }
    this.#peakQueued = Math.max(this.#peakQueued, this.#waiting.length);
    req.signal?.addEventListener('abort', req.onAbort, { once: true });
    if (!this.#looping) void this.#loop();
  }

  abort(req: Request): void {
    if (req.state !== 'done') this.#end(req, new AbortError(undefined, { cause: req.signal?.reason }));
  }

  cancel(req: Request): void {
    if (req.state !== 'done') this.#end(req, 'cancelled');
  }

  /**
   * Frees a kept sequence's pages at once: its request, if any, rejects with DisposedError. A step
   * in flight may still write the freed pages; any later owner's steps are queued after it.
   */
  dispose(seq: SequenceState): void {
    if (seq.disposed) return;
    seq.disposed = true;
    const req = seq.request;
    if (req && req.state !== 'done') this.#end(req, new DisposedError('the sequence was disposed while it ran'));
    this.#idle = this.#idle.filter((s) => s !== seq);
    if (seq.native) {
      seq.native.clear();
      this.#release(seq);
    }
  }

  #release(seq: SequenceState): void {
    seq.native?.release();
    seq.native = null;
    for (const b of seq.pins.splice(0)) b.release();
  }

  // Pages of every layer for a sequence of `tokens` tokens.
  #pages(tokens: number): number {
    return Math.ceil(tokens / this.options.pageSize) * this.options.layers;
  }

  // Tokens a request should have room for: its whole stream, plus one page of decoding for a
  // generation, but never more than it can reach.
  #claim(req: Request): number {
    const target = req.init.seq.length;
    const g = req.init.generation;
    // A bounded policy never holds more than its capacity plus the chunk being fed.
    const bounded = req.init.seq.bounded;
    const cap = bounded ? bounded.claim(this.options.prefillChunk) : Infinity;
    if (!g || req.finishing) return Math.min(target, cap);
    const longest = Math.min(req.end + g.maxTokens, this.options.maxSequenceTokens);
    return Math.min(cap, Math.max(target, Math.min(target + this.options.pageSize, longest)));
  }

  // Pages a request still has to take for its claim.
  #need(req: Request): number {
    return Math.max(0, this.#pages(this.#claim(req)) - this.#pages(req.init.seq.native?.length ?? 0));
  }

  // Free pages not yet spoken for by running requests. Their cached length is read from the
  // sequence, which a step in flight has already extended.
  #available(): number {
    let free = this.model.freePages();
    for (const r of this.#running) free -= this.#need(r);
    return free;
  }

  // Frees idle sequences' KV, least recently used first, until `pages` are free or none is left.
  #evictIdle(pages: number): void {
    while (this.#idle.length > 0 && this.model.freePages() < pages) {
      const seq = this.#idle.shift()!;
      seq.native?.clear();
      seq.cached = 0;
      this.#evictions++;
    }
    // Then stores give back device pages of documents no sequence reads now.
    for (const reclaim of this.reclaimers) {
      if (this.model.freePages() >= pages) break;
      reclaim(pages);
    }
  }

  /**
   * Holders of KV pages that can give some back when work needs them (a store's device tier):
   * each is called with the free pages wanted and releases what it can.
   */
  readonly reclaimers = new Set<(pages: number) => void>();

  // Starts waiting requests in order while their claim fits, evicting idle sequences to make
  // room. With nothing running the head always starts: it fits the pool (the model checks), so
  // at worst a step meets pages that other waiting requests' sequences still hold.
  #admit(): void {
    while (this.#waiting.length > 0) {
      const req = this.#waiting[0]!;
      const spoken = this.model.freePages() - this.#available();
      if (this.#need(req) > this.#available()) this.#evictIdle(this.#need(req) + spoken);
      if (this.#running.length > 0 && this.#need(req) > this.#available()) return;
      this.#waiting.shift();
      req.state = 'running';
      this.#running.push(req);
    }
  }

  // Frees a request's KV and queues it at the front to be recomputed: its whole input stream
  // (earlier turns, input, generated tokens) is fed again, and a generation's last chunk samples
  // the next token as its decode step would have (the sampler's random state lives on in the
  // sequence). Under dynamic NTK past max_position_embeddings the recomputed keys take the
  // frequencies of that one pass, not of the steps that first computed them, so the output there
  // may differ.
  #preempt(req: Request): void {
    this.#running = this.#running.filter((r) => r !== req);
    req.init.seq.native?.clear();
    req.init.seq.cached = 0;
    req.state = 'queued';
    this.#waiting.unshift(req);
    this.#preemptions++;
    this.#peakQueued = Math.max(this.#peakQueued, this.#waiting.length);
  }

  // Ends a request: a sequence nobody keeps frees its KV pages at once (a step in flight keeps
  // its own reference until it finishes), a kept one becomes idle; then settles the caller.
  #end(req: Request, outcome: KvfocusError | Exclude<FinishReason, 'abort'>): void {
    req.state = 'done';
    this.#running = this.#running.filter((r) => r !== req);
    this.#waiting = this.#waiting.filter((r) => r !== req);
    req.signal?.removeEventListener('abort', req.onAbort);
    const seq = req.init.seq;
    if (seq.request === req) seq.request = null;
    if (outcome === 'stop' && req.init.capture) {
      try {
        req.init.capture();
      } catch (e) {
        outcome = asKvfocusError(e);
      }
    }
    if (!seq.keep) this.#release(seq);
    else if (!seq.disposed && seq.native) this.#idle.push(seq);
    if (req.settle) {
      if (typeof outcome !== 'string') {
        seq.rollback(req.from); // a failed append leaves the sequence as it was
        req.settle.reject(outcome);
      } else req.settle.resolve(concatRows(req.rows));
      return;
    }
    const stream = req.stream!;
    if (typeof outcome !== 'string') {
      stream.fail(outcome);
      return;
    }
    const { decoder } = req.init.generation!;
    // Bytes the decoder still holds (an unfinished UTF-8 sequence) belong to the text, unless a
    // stop string cut it.
    if (!req.cutByStopString) req.text += decoder.flush();
    if (req.text.length > req.emitted) stream.push({ token: -1, text: req.text.slice(req.emitted) });
    const now = performance.now();
    const decodeMs = now - req.firstTokenAt;
    stream.finish({
      text: req.text,
      tokens: req.generated,
      promptTokens: req.end,
      completionTokens: req.generated.length,
      finishReason: outcome,
      timings: {
        timeToFirstTokenMs: req.firstTokenAt ? req.firstTokenAt - req.started : now - req.started,
        decodeTokensPerSecond: req.generated.length > 1 && decodeMs > 0 ? ((req.generated.length - 1) * 1000) / decodeMs : 0,
        totalMs: now - req.started,
      },
    });
  }

  // A generation that decided to stop: a kept sequence first feeds the token it sampled last.
  #finish(req: Request, reason: Exclude<FinishReason, 'abort'>): void {
    const seq = req.init.seq;
    if (seq.keep && seq.cached < seq.length && seq.length - seq.positionOffset <= this.options.maxSequenceTokens) req.finishing = reason;
    else this.#end(req, reason);
  }

  async #loop(): Promise<void> {
    this.#looping = true;
    try {
      for (;;) {
        this.#admit();
        if (this.#running.length === 0) return; // #admit starts the head when nothing runs: the queue is empty
        const batch = this.#plan();
        if (batch.length === 0) continue; // every request ended while planning (a failed restore)
        let out: Awaited<ReturnType<NativeModel['step']>>;
        try {
          out = await this.model.step(batch.map((b) => b.step));
        } catch (e) {
          // A step that failed on the device had already appended its tokens' slots: drop them,
          // so the requests that go on feed those tokens again at the same positions. A
          // segmented prefill starts over: its documents are attached again.
          for (const { req, segment } of batch) {
            const seq = req.init.seq;
            if (segment && seq.native) {
              seq.native.clear();
              seq.cached = 0;
              seq.segments?.reset();
              continue;
            }
            const stale = req.state === 'done' || !seq.native ? 0 : seq.native.length - (seq.bounded ? seq.bounded.held : seq.cached);
            if (stale > 0) seq.native!.truncate(stale);
          }
          // Out of pages or of device memory: preempt as the plan would have. With one request
          // left it fails.
          if (e instanceof OutOfMemoryError && this.#running.length > 1) {
            this.#preempt(this.#running[this.#running.length - 1]!);
            continue;
          }
          const victims = e instanceof OutOfMemoryError ? batch.slice(-1) : batch;
          for (const { req } of victims) if (req.state !== 'done') this.#guard(req, () => this.#end(req, asKvfocusError(e)));
          continue;
        }
        batch.forEach(({ req, fed, sampling, rows, segment }, i) => {
          if (req.state === 'done') return; // aborted, cancelled or disposed while the step ran
          const seq = req.init.seq;
          if (segment) {
            try {
              seq.segments!.after(out.rangeMass[i] ?? null, fed);
            } catch (e) {
              this.#guard(req, () => this.#end(req, asKvfocusError(e)));
              return;
            }
            if (seq.segments!.active) return; // more segments: the input is not in yet
          }
          const at = seq.cached;
          if (seq.bounded) {
            // The policy compacts every layer before the sequence's next step is planned.
            try {
              seq.bounded.after(at, fed, out.columnSums?.[i] ?? null);
            } catch (e) {
              seq.recompute(); // its plan and the KV may disagree: fed again from the start
              this.#guard(req, () => this.#end(req, asKvfocusError(e)));
              return;
            }
          }
          seq.cached += fed;
          seq.placed = Math.max(seq.placed, seq.cached);
          const logits = out.logits[i];
          if (rows && logits) {
            const vocab = logits.length / (req.init.logits === 'all' ? fed : 1);
            req.rows.push(req.init.logits === 'all' ? logits.subarray(rows[0] * vocab, rows[1] * vocab) : logits);
            req.rowsTo = at + rows[1];
          }
          // Decoding runs the checkpoint's tokenizer: its failure ends this request (its
          // `result` rejects), never the loop, whose rejection nobody would handle.
          if (sampling) this.#guard(req, () => this.#accept(req, out.tokens[i]!));
          else if (seq.cached === seq.length) {
            if (req.finishing) this.#end(req, req.finishing);
            else if (!req.init.generation) this.#end(req, 'stop');
          }
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
        // #end itself failed (the decoder's flush): settle the caller directly.
        if (req.stream) req.stream.fail(asKvfocusError(e));
        else req.settle?.reject(asKvfocusError(e));
        return;
      }
      try {
        this.#end(req, asKvfocusError(e));
      } catch (again) {
        req.stream?.fail(asKvfocusError(again));
      }
    }
  }

  // The next step's batch. When its new tokens need more pages than are free, idle sequences
  // give way first, then waiting requests' sequences, then the newest running request is
  // preempted (and the batch rebuilt) instead of failing the step.
  #plan(): Planned[] {
    // Sequences over stored blocks whose KV was freed attach the blocks again first.
    for (const req of [...this.#running]) {
      const seq = req.init.seq;
      if (seq.cached >= seq.attached || !seq.native || !seq.restore) continue;
      try {
        seq.restore();
        seq.cached = seq.attached;
        seq.placed = Math.max(seq.placed, seq.attached);
      } catch (e) {
        this.#end(req, asKvfocusError(e));
      }
    }
    for (;;) {
      const batch = this.#build();
      let need = 0;
      for (const { req, fed } of batch) {
        const cached = req.init.seq.native?.length ?? 0;
        need += this.#pages(cached + fed) - this.#pages(cached);
      }
      if (need <= this.model.freePages()) return batch;
      this.#evictIdle(need);
      if (need <= this.model.freePages()) return batch;
      for (let i = this.#waiting.length - 1; i >= 0 && need > this.model.freePages(); i--) {
        const seq = this.#waiting[i]!.init.seq;
        if (seq.cached > 0) {
          seq.native?.clear();
          seq.cached = 0;
          this.#evictions++;
        }
      }
      if (need <= this.model.freePages() || this.#running.length === 1) return batch;
      this.#preempt(this.#running[this.#running.length - 1]!);
    }
  }

  // Decode rows first (one token each), then input chunks within the step's token budget. A
  // segmented prefill (CacheFocus's query) runs alone: its whole input in each segment's step.
  #build(): Planned[] {
    const pending = (r: Request) => r.init.seq.length - r.init.seq.cached;
    for (const req of this.#running) {
      const seq = req.init.seq;
      const n = pending(req);
      if (!seq.segments?.active || n === 0 || seq.cached !== seq.attached) continue;
      const { layers, rangeMass } = seq.segments.next(n);
      const last = layers[1] === this.options.layers;
      const at = seq.cached;
      const sampling = last && req.init.generation !== undefined && req.finishing === null;
      let logits: LogitsRows = 'none';
      let rows: [number, number] | null = null;
      if (last && req.init.logits === 'all') [logits, rows] = ['all', [0, n]];
      else if (last && req.init.logits === 'last') [logits, rows] = ['last', [n - 1, n]];
      return [
        {
          req,
          fed: n,
          sampling,
          rows,
          segment: true,
          step: {
            seq: seq.native!,
            tokens: seq.tokens.slice(at, at + n),
            positions: Int32Array.from({ length: n }, (_, i) => at + i - seq.positionOffset),
            logits,
            layers,
            ...(rangeMass ? { rangeMass } : {}),
            ...(sampling ? { sample: req.init.generation!.sampling } : {}),
          },
        },
      ];
    }
    let budget = this.options.stepTokens;
    // The kernels define no attention scores for APE's two-part mixture, so a step holds
    // sequences that attend in two parts or sequences that want column sums, never both.
    const kind = (r: Request) => (r.init.seq.contextAttention ? 'context' : r.init.seq.bounded?.wantsScores ? 'scores' : null);
    const preferred = (r: Request) => Number(this.#first !== null && kind(r) === this.#first);
    const order = [...this.#running].sort((a, b) => preferred(b) - preferred(a) || pending(a) - pending(b));
    const batch: Planned[] = [];
    let taken: 'context' | 'scores' | null = null;
    let left: 'context' | 'scores' | null = null;
    for (const req of order) {
      if (budget <= 0) break;
      const seq = req.init.seq;
      const k = kind(req);
      if (k !== null && taken !== null && k !== taken) {
        left = k;
        continue;
      }
      const at = seq.cached;
      // A bounded policy takes its input in chunks of at most its capacity (each chunk attends
      // to what the layer kept and to itself), so it never needs more than twice that.
      const n = Math.min(pending(req), this.options.prefillChunk, budget, seq.bounded ? seq.bounded.maxChunk : Infinity);
      if (n === 0) continue;
      budget -= n;
      if (k !== null) taken = k;
      const tokens = seq.tokens.slice(at, at + n);
      if (seq.bounded && at === 0) seq.bounded.reset(); // fed again from the start (its KV was freed)
      try {
        seq.bounded?.prepare?.(); // what the policy deferred from the last step, before this one's positions
      } catch (e) {
        seq.recompute(); // its plan and the KV may disagree: fed again from the start
        this.#guard(req, () => this.#end(req, asKvfocusError(e)));
        continue;
      }
      const offset = seq.bounded ? seq.bounded.positionOffset : seq.positionOffset;
      const positions = Int32Array.from({ length: n }, (_, i) => at + i - offset);
      // The input (or last token) is complete and the generation has not decided to stop.
      const sampling = req.init.generation !== undefined && req.finishing === null && n === pending(req);
      let logits: LogitsRows = 'none';
      let rows: [number, number] | null = null;
      if (req.init.logits === 'all') {
        const a = Math.max(at, req.rowsTo);
        const b = Math.min(at + n, req.end);
        if (a < b) [logits, rows] = ['all', [a - at, b - at]];
      } else if (req.init.logits === 'last' && at + n === req.end && req.rowsTo < req.end) {
        [logits, rows] = ['last', [n - 1, n]];
      }
      // The sequence length HF would see in this forward: the whole input for each of its
      // chunks (HF reads it in one forward), then each decode step's own length.
      const invFreq = this.options.ropeFrequencies?.(Math.max(req.end, at + n));
      const context = seq.cached >= seq.attached ? seq.contextAttention?.context() : undefined;
      batch.push({
        req,
        fed: n,
        sampling,
        rows,
        step: {
          seq: seq.native!,
          tokens,
          positions,
          logits,
          ...(sampling ? { sample: req.init.generation!.sampling } : {}),
          ...(invFreq ? { invFreq } : {}),
          ...(seq.bounded?.wantsScores ? { columnSums: true, ...seq.bounded.scoreOptions } : {}),
          ...(context ? { context } : {}),
        },
      });
    }
    this.#first = left;
    return batch;
  }

  #accept(req: Request, token: number): void {
    const g = req.init.generation!;
    const seq = req.init.seq;
    if (req.generated.length === 0) req.firstTokenAt = performance.now();
    if (g.stopTokens.has(token)) {
      this.#end(req, 'stop');
      return;
    }
    req.generated.push(token);
    seq.push([token]);
    req.text += g.decoder.push(token);
    // Stop strings: cut at the earliest match; hold back a tail that could still become one.
    let cut = -1;
    for (const s of g.stop) {
      const at = req.text.indexOf(s, Math.max(0, req.emitted - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      req.text = req.text.slice(0, cut);
      req.cutByStopString = true;
      this.#finish(req, 'stop');
      return;
    }
    let hold = 0;
    for (const s of g.stop) {
      for (let k = Math.min(s.length - 1, req.text.length); k > hold; k--) {
        if (req.text.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    const safe = req.text.length - hold;
    req.stream!.push({ token, text: safe > req.emitted ? req.text.slice(req.emitted, safe) : '' });
    req.emitted = Math.max(req.emitted, safe);
    // The token just sampled would sit at position seq.cached: a sequence that has filled the KV
    // cache ends as it would at maxTokens, not with an out-of-memory error on its next step.
    const reach = seq.bounded ? seq.cached - seq.bounded.positionOffset : seq.cached - seq.positionOffset;
    if (req.generated.length >= g.maxTokens || reach >= this.options.maxSequenceTokens) {
      this.#finish(req, 'length');
      return;
    }
  }
}

function concatRows(rows: Float32Array[]): Float32Array | undefined {
  if (rows.length <= 1) return rows[0];
  const all = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
  let o = 0;
  for (const r of rows) {
    all.set(r, o);
    o += r.length;
  }
  return all;
}
