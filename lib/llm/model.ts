// loadModel() and Model: a Hugging Face checkpoint on a device, with a tokenizer, a paged KV
// pool, logits() for scoring and generate() for streaming generation.
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { freemem } from 'node:os';
import { dirname, join, resolve } from 'node:path';

import type { DeviceName, LayerWeightsNative, ModelWeightsNative, NativeModel, NativeSequence } from '../binding.js';
import { DisposedError, InvalidArgumentError, ModelFormatError, UnsupportedError } from '../errors.js';
import { addon, native, packageRoot } from '../loader.js';
import { checkCheckpointTensors, type ModelConfig, openSafetensors, readModelConfig, ropeParameters, Tokenizer, type TensorInfo } from '../model/index.js';
import { isJsonObject, readOptionalJsonFile } from '../model/json-file.js';
import type { ChatMessage } from '../model/tokenizer.js';
import { checkDevice, describe, type DType, dtypeBytes, type FloatDType, Tensor } from '../tensor.js';
import { checkOptions, checkTokenIds, optionNames } from '../validate.js';
import { BOUNDED_POLICIES, type CachePolicy, type ResolvedPolicy, resolvePolicy } from '../policies/index.js';
import { windowLayout } from '../policies/cache-focus.js';
import { CacheFocusRuntime } from '../policies/cache-focus-runtime.js';
import { ApeRuntime } from '../policies/ape-runtime.js';
import { BoundedRuntime } from '../policies/bounded-runtime.js';
import { CascadingRuntime } from '../policies/cascading-runtime.js';
import { SnapKVRuntime } from '../policies/snapkv-runtime.js';
import { GENERATE_OPTIONS, generationLimits, type GenerateOptions, samplingSpec, seedOf } from './options.js';
import { type GenerationInit, type GenerationStream, Scheduler, SequenceState } from './scheduler.js';
import { Sequence, type SequenceHost } from './sequence.js';
import { ContextStore, type OpenStoreOptions, type StoreHost } from '../store/context-store.js';

export interface LoadModelOptions {
  /** 'auto' (default): CUDA when a GPU is usable, else the CPU. */
  device?: 'auto' | DeviceName;
  /** Weight storage dtype; default: as stored in the checkpoint. Norms are always f32. */
  dtype?: FloatDType;
  /**
   * KV pool capacity in tokens per layer, shared by all live sequences. Default: sized from
   * memory (see defaultKvCacheTokens), not from the context length.
   */
  kvCacheTokens?: number;
  /**
   * Longest sequence one request may reach (default: the model's context, contextLength()).
   * Set it higher to run past what the checkpoint was trained or scaled for on purpose (a
   * baseline of what breaks there); a sliding window and the pool still cap it.
   */
  maxSequenceTokens?: number;
  /** Tokens per KV page (default 16). */
  pageSize?: number;
  /** KV storage dtype (default f32 on the CPU, bf16 on CUDA). */
  kvDtype?: FloatDType;
  /** Most prompt tokens one sequence feeds per forward step (default 512). */
  prefillChunk?: number;
  /**
   * Most generate() requests waiting for KV pages at once (default: no limit). Beyond it a new
   * request is refused at once with QueueFullError; 0 refuses any request that cannot start now.
   */
  maxQueuedRequests?: number;
}

/** What the KV pool and the scheduler hold right now (model.stats()). */
export interface ModelStats {
  /** Pool capacity in tokens per layer. */
  kvCacheTokens: number;
  pageSize: number;
  /** Pages of every layer together: kvCacheTokens / pageSize x layers. */
  totalPages: number;
  usedPages: number;
  freePages: number;
  /** Generations taking part in forward steps. */
  runningRequests: number;
  /** Generations waiting for KV pages (new, or preempted to be recomputed). */
  queuedRequests: number;
  /** Most generations waiting at once since the model was loaded. */
  peakQueuedRequests: number;
  /** Running generations and appends preempted (freed, later recomputed) because the pool ran dry. */
  preemptions: number;
  /**
   * Idle sequences whose KV was freed to make room for other work; each is recomputed from its
   * input stream on its next append or generate.
   */
  evictions: number;
}

/**
 * Stored documents and a query: the store's prefix, then the documents in the order listed
 * (each with the KV it was stored with), then the query (text without special tokens, or ids).
 */
export interface StoredDocumentsPrompt {
  store: ContextStore;
  documents: readonly string[];
  query: string | readonly number[] | Int32Array;
}

export type Prompt = string | { messages: ChatMessage[] } | readonly number[] | Int32Array;

export interface SequenceOptions {
  /** Cache policy (default: full attention, `{ name: 'full' }`). */
  policy?: CachePolicy;
  /**
   * A store (model.openStore()) whose prefix and `documents` open the sequence: the prefix at
   * positions 0 .. |P|-1, then each document at the next consecutive positions, each keeping the
   * KV it was stored with (documents do not attend to each other).
   */
  store?: ContextStore;
  /** Ids of stored documents, in order (with `store`). */
  documents?: readonly string[];
}

export interface LogitsOptions {
  /** Logits of every position (rows x vocab) instead of the last one. */
  all?: boolean;
}

const LOAD_OPTIONS = optionNames<LoadModelOptions>({ device: true, dtype: true, kvCacheTokens: true, pageSize: true, kvDtype: true, prefillChunk: true, maxQueuedRequests: true, maxSequenceTokens: true });
const LOGITS_OPTIONS = optionNames<LogitsOptions>({ all: true });
const SEQUENCE_OPTIONS = optionNames<SequenceOptions>({ policy: true, store: true, documents: true });

// The policies sequences run so far. The others validate (a mistake in their options is still
// an InvalidArgumentError) but are refused until the engine interprets them.
const ST_DTYPE: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

export class Model {
  readonly config: ModelConfig;
  readonly tokenizer: Tokenizer;
  readonly device: DeviceName;
  /** KV pool capacity in tokens per layer, shared by all sequences. */
  readonly kvCacheTokens: number;
  /** Tokens per KV page. */
  readonly pageSize: number;
  /**
   * Longest sequence (prompt + generated tokens) one request may reach: the model's context
   * (contextLength(), or loadModel's maxSequenceTokens), and at most the whole pool. (On a
   * sliding-window checkpoint the pages of tokens that left the window stay allocated, so the
   * pool bounds the length there too.)
   */
  readonly maxSequenceTokens: number;
  // Which of those limits binds, for the error that refuses a longer prompt.
  #sequenceLimit: 'context' | 'option' | 'pool';
  #native: NativeModel | null;
  #scheduler: Scheduler;
  #weights: Tensor[];
  #eos: number[];
  #sequenceHost: SequenceHost;
  #storeHost: StoreHost;

  /** @internal Use loadModel(). */
  constructor(init: {
    config: ModelConfig;
    tokenizer: Tokenizer;
    device: DeviceName;
    native: NativeModel;
    weights: Tensor[];
    eos: number[];
    kvCacheTokens: number;
    pageSize: number;
    prefillChunk: number;
    maxQueuedRequests: number;
    maxSequenceTokens: number | undefined;
    kvDtype: FloatDType;
    fingerprint: string;
  }) {
    this.config = init.config;
    this.tokenizer = init.tokenizer;
    this.device = init.device;
    this.#native = init.native;
    this.#weights = init.weights;
    this.#eos = init.eos;
    this.kvCacheTokens = init.kvCacheTokens;
    this.pageSize = init.pageSize;
    const model = init.maxSequenceTokens ?? contextLength(init.config);
    this.maxSequenceTokens = Math.min(init.kvCacheTokens, model);
    // On a tie, name the model's own limit: raising kvCacheTokens would not help there.
    if (this.maxSequenceTokens === model) this.#sequenceLimit = init.maxSequenceTokens === undefined ? 'context' : 'option';
    else this.#sequenceLimit = 'pool';
    this.#scheduler = new Scheduler(init.native, {
      prefillChunk: init.prefillChunk,
      stepTokens: Math.max(init.prefillChunk, 2048),
      maxSequenceTokens: this.maxSequenceTokens,
      ropeFrequencies: (length) => this.#ropeFrequencies(length),
      pageSize: init.pageSize,
      layers: init.config.numLayers,
      maxQueuedRequests: init.maxQueuedRequests,
    });
    const vocab = init.config.vocabSize;
    this.#sequenceHost = {
      scheduler: this.#scheduler,
      layers: init.config.numLayers,
      vocabSize: vocab,
      live: (what) => void this.#handle(what),
      encodeText: (text, atStart) => checkTokenIds(this.tokenizer.encode(text, { addSpecialTokens: atStart }), vocab, 'input'),
      checkLength: (tokens, extra, argument) => this.#checkLength(tokens, extra, argument),
      generation: (options) => {
        const opts = checkOptions(options, GENERATE_OPTIONS);
        return { init: this.#generation(opts), seed: opts.seed === undefined ? undefined : seedOf(opts) };
      },
    };
    const c = init.config;
    this.#storeHost = {
      scheduler: this.#scheduler,
      vocabSize: vocab,
      layers: c.numLayers,
      kvHeads: c.numKvHeads,
      headDim: c.headDim,
      kvDtype: init.kvDtype,
      pageSize: init.pageSize,
      pageBytes: 2 * init.pageSize * c.numKvHeads * c.headDim * dtypeBytes(init.kvDtype),
      fingerprint: init.fingerprint,
      native: (what) => this.#handle(what),
      encodeText: (text, atStart) => checkTokenIds(this.tokenizer.encode(text, { addSpecialTokens: atStart }), vocab, 'content'),
      checkLength: (tokens, extra, argument) => this.#checkLength(tokens, extra, argument),
    };
  }

  /**
   * Opens a store of document KV caches after a shared prefix (computed now, or read from the
   * store's disk or remote tier): see ContextStore and OpenStoreOptions (`dir`, `hostBytes`,
   * `remote`). Refused (UnsupportedError naming the field) where moving cached keys is
   * not a pure rotation by the position shift: dynamic NTK rope scaling (frequencies depend on
   * the sequence length) and sliding-window layers (the window counts cache slots).
   */
  async openStore(options: OpenStoreOptions): Promise<ContextStore> {
    this.#handle('openStore');
    if (this.config.ropeScaling?.type === 'dynamic') {
      throw new UnsupportedError("rope_scaling: 'dynamic' rope frequencies depend on the sequence length, so stored keys cannot be moved to new positions by a rotation");
    }
    if (this.config.layerAttention.some((a) => a === 'sliding')) {
      throw new UnsupportedError('sliding_window: stored documents are not supported on sliding-window layers yet');
    }
    return ContextStore.open(this.#storeHost, options);
  }

  // A sequence opened by a store's prefix and stored documents: their KV is attached before its
  // first append or generate (documents evicted from the store are recomputed then).
  #storeSequence(store: unknown, documents: unknown, policy: CachePolicy | undefined, keep: boolean, reserve?: number): Sequence {
    const m = this.#handle('sequence');
    if (!(store instanceof ContextStore) || store.host !== this.#storeHost) {
      throw new InvalidArgumentError(`store: expected a store opened by this model's openStore() but received ${describe(store)}`, 'store');
    }
    const resolved = runnable(resolvePolicy(policy), true);
    const entries = store.entries(documents ?? []);
    const state = new SequenceState(m.newSequence(), keep);
    state.push(store.prefixTokens);
    for (const e of entries) state.push(e.tokens);
    const lengths = entries.map((e) => e.tokens.length);
    const prefix = store.prefixTokens.length;
    if (resolved.name === 'concat') {
      // Plain RAG: the stream is [P; documents], prefilled with the query (nothing attached).
      this.#checkLength(state.length, 0, 'documents');
      return new Sequence(this.#sequenceHost, state, resolved);
    }
    let starts: number[];
    let runtime: CacheFocusRuntime | null = null;
    if (resolved.name === 'parallelWindows' || resolved.name === 'ape') {
      starts = lengths.map(() => prefix);
      const end = prefix + Math.max(0, ...lengths);
      this.#checkLength(end, 0, 'documents');
      state.positionOffset = state.length - end;
      if (resolved.name === 'ape') {
        state.contextAttention = new ApeRuntime({ policy: resolved, layers: this.config.numLayers, native: () => state.native! });
      }
    } else if (resolved.name === 'cacheFocus') {
      // Documents that do not fit the positions (with room for the query and the generation)
      // share them in parallel windows until pruning makes room.
      // Positions stay inside the model's context even where maxSequenceTokens runs past it.
      const range = Math.min(this.maxSequenceTokens, contextLength(this.config));
      const room = reserve ?? Math.min(512, Math.floor(range / 4));
      starts = windowLayout(lengths, prefix, Math.max(prefix + 1, range - room));
      runtime = new CacheFocusRuntime({
        policy: resolved,
        layers: this.config.numLayers,
        heads: this.config.numHeads,
        prefixTokens: prefix,
        lengths,
        starts,
        positionLimit: Math.min(this.maxSequenceTokens, contextLength(this.config)),
        reserve: () => state.length - state.attached + (state.request?.init.generation?.maxTokens ?? 0),
        model: m,
        native: () => state.native!,
      });
      state.segments = runtime;
      let end = prefix;
      lengths.forEach((n, i) => (end = Math.max(end, starts[i]! + n)));
      state.positionOffset = state.length - end;
    } else {
      this.#checkLength(state.length, 0, 'documents');
      starts = [];
      lengths.reduce((at, n) => (starts.push(at), at + n), prefix);
    }
    state.attached = state.length;
    state.placed = state.length;
    const prepare = async (): Promise<void> => {
      const blocks = await store.blocks(entries); // the prefix's, then each document's
      if (state.disposed || !state.native) {
        for (const b of blocks) b.release();
        throw new DisposedError('sequence: disposed while its stored documents were attached');
      }
      state.pins.push(...blocks);
      const placements = blocks.map((block, i) => ({ block, start: i === 0 ? 0 : starts[i - 1]! }));
      state.restore = () => {
        m.attach(state.native!, placements);
        runtime?.reset();
        state.contextAttention?.reset();
      };
    };
    return new Sequence(this.#sequenceHost, state, resolved, prepare);
  }

  #handle(what: string): NativeModel {
    if (this.#native === null) throw new DisposedError(`${what}: the model has been disposed`);
    return this.#native;
  }

  /**
   * Prompt tokens: text is encoded with the tokenizer's special tokens, messages with the chat
   * template; token ids are checked as given (integers in [0, vocabSize)), never converted.
   */
  encode(prompt: Prompt): Int32Array {
    const vocab = this.config.vocabSize;
    if (typeof prompt === 'string') return checkTokenIds(this.tokenizer.encode(prompt), vocab, 'prompt');
    if (prompt instanceof Int32Array || Array.isArray(prompt)) return checkTokenIds(prompt, vocab, 'prompt');
    if (prompt && typeof prompt === 'object' && Array.isArray((prompt as { messages?: unknown }).messages)) {
      return checkTokenIds(this.tokenizer.encodeChat((prompt as { messages: ChatMessage[] }).messages, { addGenerationPrompt: true }), vocab, 'prompt');
    }
    throw new InvalidArgumentError(`prompt: expected a string, { messages }, or token ids but received ${describe(prompt)}`, 'prompt');
  }

  /**
   * RoPE frequencies of a forward step whose sequence length (HF: largest position id + 1) is
   * `length`, when they differ from the model's: dynamic NTK scaling past
   * max_position_embeddings. HF recomputes them per forward and never re-rotates cached keys, so
   * each step's new keys keep the frequencies of their step; undefined means the model's.
   */
  #ropeFrequencies(length: number): Float32Array | undefined {
    const { ropeScaling, maxPositionEmbeddings } = this.config;
    if (ropeScaling?.type !== 'dynamic' || length <= maxPositionEmbeddings) return undefined;
    return ropeParameters(this.config, length).invFreq;
  }

  // Tokens come from encode(), which checked each id. One rule for every prompt form: it must
  // hold content of its own. '' and { messages: [] } are refused like [] rather than running on
  // the BOS (or template) the tokenizer adds; starting from BOS alone takes [bosTokenId].
  #checkTokens(tokens: Int32Array, extra: number, prompt: Prompt, unbounded = false): void {
    const messages = (prompt as { messages?: unknown }).messages;
    if (tokens.length === 0 || prompt === '' || (Array.isArray(messages) && messages.length === 0)) {
      const bos = this.tokenizer.bosTokenId;
      throw new InvalidArgumentError(`prompt: is empty${bos === null ? '' : ` (to start from BOS alone, pass [${bos}])`}`, 'prompt');
    }
    if (!unbounded) this.#checkLength(tokens.length, extra, 'prompt');
  }

  // Refuses a sequence of `tokens` tokens (+ `extra` to generate) longer than maxSequenceTokens,
  // naming the limit that binds; `argument` names what brought it there.
  #checkLength(tokens: number, extra: number, argument: string): void {
    if (tokens + extra > this.maxSequenceTokens) {
      const what = `${argument}: ${tokens} tokens${extra ? ` + ${extra} to generate` : ''}`;
      switch (this.#sequenceLimit) {
        case 'pool':
          throw new InvalidArgumentError(`${what} do not fit the KV cache (${this.kvCacheTokens} tokens; raise kvCacheTokens)`, argument);
        case 'option':
          throw new InvalidArgumentError(`${what} exceed maxSequenceTokens (${this.maxSequenceTokens})`, argument);
        case 'context': {
          const scaling = this.config.ropeScaling ? `, ${this.config.ropeScaling.type} rope scaling` : '';
          throw new InvalidArgumentError(
            `${what} exceed the model's context (${this.maxSequenceTokens} tokens: max_position_embeddings ${this.config.maxPositionEmbeddings}${scaling}; loadModel's maxSequenceTokens runs past it on purpose)`,
            argument,
          );
        }
      }
    }
  }

  /**
   * A new, empty sequence: one KV state that input is appended to and generated from, under a
   * cache policy (default: full attention). Its pages stay in use until dispose().
   */
  sequence(options?: SequenceOptions | null): Sequence {
    const m = this.#handle('sequence');
    const { policy, store, documents } = checkOptions(options, SEQUENCE_OPTIONS, 'sequence');
    if (store !== undefined) return this.#storeSequence(store, documents, policy, true);
    if (documents !== undefined) throw new InvalidArgumentError('documents: needs a store (sequence({ store, documents }))', 'documents');
    return this.#plainSequence(m.newSequence(), true, runnable(resolvePolicy(policy), false));
  }

  // A sequence for one call of generate() or logits(): its pages go when that call ends.
  #oneShot(seed?: number, policy: ResolvedPolicy = resolvePolicy(undefined)): Sequence {
    return this.#plainSequence(this.#handle('generate').newSequence(seed), false, policy);
  }

  // A sequence with no stored documents; a bounded policy compacts its layers after every step.
  #plainSequence(native: NativeSequence, keep: boolean, policy: ResolvedPolicy): Sequence {
    const state = new SequenceState(native, keep);
    const setup = {
      layers: this.config.numLayers,
      heads: this.config.numHeads,
      kvHeads: this.config.numKvHeads,
      model: this.#handle('sequence'),
      native: () => state.native!,
    };
    if (policy.name === 'cascading') state.bounded = new CascadingRuntime(policy, setup);
    else if (policy.name === 'snapkv') state.bounded = new SnapKVRuntime(policy, setup);
    else if (policy.name === 'streaming' || policy.name === 'h2o' || policy.name === 'lacache') state.bounded = new BoundedRuntime(policy, setup);
    return new Sequence(this.#sequenceHost, state, policy);
  }

  /**
   * Logits of the last position (or of every position, with `all`) for a token sequence, as one
   * Float32Array of rows x vocab. For scoring and evaluation harnesses. Runs as an append to a
   * new sequence, through the scheduler: it waits for KV pages like a generation.
   */
  async logits(prompt: Prompt, options?: LogitsOptions | null): Promise<Float32Array> {
    this.#handle('logits');
    const { all: allRows = false } = checkOptions(options, LOGITS_OPTIONS);
    if (typeof allRows !== 'boolean') throw new InvalidArgumentError(`all: expected a boolean but received ${describe(allRows)}`, 'all');
    const tokens = this.encode(prompt);
    this.#checkTokens(tokens, 0, prompt);
    return (await this.#oneShot().appendTokens(tokens, allRows ? 'all' : 'last'))!;
  }

  // Validated GenerateOptions as the scheduler takes them.
  #generation(opts: GenerateOptions): GenerationInit {
    const limits = generationLimits(opts, this.config.vocabSize);
    return {
      sampling: samplingSpec(opts),
      maxTokens: limits.maxTokens,
      stop: limits.stop,
      stopTokens: new Set([...this.#eos, ...limits.stopTokens]),
      decoder: this.tokenizer.createStreamDecoder({ skipSpecialTokens: true }),
      signal: opts.signal,
    };
  }

  /**
   * Streams generated tokens: `for await (const { token, text } of model.generate(...))`, and
   * `await stream.result` for the text, counts, finish reason and timings. Concurrent calls are
   * batched into shared forward steps; a call the KV pool has no room for yet waits in a FIFO
   * queue (`signal` bounds the wait; beyond maxQueuedRequests it throws QueueFullError).
   * Leaving the stream early cancels the generation (finishReason 'cancelled'). Runs on a new
   * sequence that is freed when the generation ends (model.sequence() keeps one).
   */
  generate(prompt: Prompt | StoredDocumentsPrompt, options?: GenerateOptions | null): GenerationStream {
    this.#handle('generate');
    if (prompt !== null && typeof prompt === 'object' && 'store' in prompt) {
      // model.sequence({ store, documents }) then generation after the query, freed at the end.
      const { store, documents, query, ...rest } = prompt;
      const extra = Object.keys(rest);
      if (extra.length > 0) throw new InvalidArgumentError(`prompt: unknown key '${extra[0]}' (expected store, documents, query)`, 'prompt');
      if (query === undefined) throw new InvalidArgumentError('query: is required with { store, documents }', 'query');
      const policy = (options as GenerateOptions | null | undefined)?.policy ?? { name: 'cacheFocus' };
      const rest2 = options ? { ...options } : options;
      if (rest2) delete rest2.policy;
      const maxTokens = generationLimits(checkOptions(rest2, GENERATE_OPTIONS), this.config.vocabSize).maxTokens;
      const queryTokens = typeof query === 'string' ? this.tokenizer.encode(query, { addSpecialTokens: false }).length : (query as ArrayLike<number>).length;
      const seq = this.#storeSequence(store, documents, policy, true, queryTokens + maxTokens);
      try {
        const stream = seq.generateAfter(query, rest2);
        const done = (): void => seq.dispose();
        stream.result.then(done, done);
        return stream;
      } catch (e) {
        seq.dispose();
        throw e;
      }
    }
    const opts = checkOptions(options, GENERATE_OPTIONS);
    const policy = runnable(resolvePolicy(opts.policy), false);
    const tokens = this.encode(prompt);
    const limits = generationLimits(opts, this.config.vocabSize);
    // A bounded policy keeps positions inside its budget: any prompt and any length fit.
    const bounded = BOUNDED_POLICIES.includes(policy.name);
    this.#checkTokens(tokens, 0, prompt, bounded);
    if (!bounded && tokens.length + limits.maxTokens > this.config.maxPositionEmbeddings * 64) {
      throw new InvalidArgumentError(`maxTokens: ${limits.maxTokens} is beyond any usable position range`, 'maxTokens');
    }
    const init = this.#generation(opts);
    return this.#oneShot(seedOf(opts), policy).generateFrom(tokens, init);
  }

  /** Free KV pages right now (pages of live sequences are in use). */
  get freeKvPages(): number {
    return this.#handle('freeKvPages').freePages();
  }

  /** Pool occupancy and the scheduler's running and queued generations, right now. */
  stats(): ModelStats {
    const free = this.#handle('stats').freePages();
    const total = Math.ceil(this.kvCacheTokens / this.pageSize) * this.config.numLayers;
    return {
      kvCacheTokens: this.kvCacheTokens,
      pageSize: this.pageSize,
      totalPages: total,
      usedPages: total - free,
      freePages: free,
      runningRequests: this.#scheduler.running,
      queuedRequests: this.#scheduler.queued,
      peakQueuedRequests: this.#scheduler.peakQueued,
      preemptions: this.#scheduler.preemptions,
      evictions: this.#scheduler.evictions,
    };
  }

  /** Frees the weights and the KV pool once queued work is done. Idempotent. */
  dispose(): void {
    if (this.#native === null) return;
    this.#native.release();
    this.#native = null;
    for (const w of this.#weights) w.dispose();
    this.#weights = [];
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * The embedded models shipped with the package (scripts/train/), small test and evaluation
 * models trained on the multi-document QA task, not general language models:
 * - 'fast' (models/): 2 layers; the demo's model and the default.
 * - 'deep' (models/deep/): 6 layers, the same width and tokenizer; for measuring the layer-adaptive
 *   cache methods, which need layers before and after the ones where retrieval happens.
 */
export type DefaultModelVariant = 'fast' | 'deep';
const VARIANT_DIRS: Record<DefaultModelVariant, string[]> = { fast: ['models'], deep: ['models', 'deep'] };

/** Folder of an embedded model (`variant`: 'fast', the default, or 'deep'). */
export function defaultModelDir(variant: DefaultModelVariant = 'fast'): string {
  const parts = Object.hasOwn(VARIANT_DIRS, variant) ? VARIANT_DIRS[variant] : undefined;
  if (!parts) throw new InvalidArgumentError(`variant: expected one of ${Object.keys(VARIANT_DIRS).map((v) => `'${v}'`).join(', ')} but received ${describe(variant)}`, 'variant');
  return join(packageRoot(), ...parts);
}

/**
 * Loads an embedded model (defaultModelDir(variant)); the other options are loadModel's. Throws
 * ModelFormatError when its files are missing.
 */
export async function loadDefaultModel(options?: (LoadModelOptions & { variant?: DefaultModelVariant }) | null): Promise<Model> {
  const { variant, ...rest } = checkOptions(options, [...LOAD_OPTIONS, 'variant']);
  const dir = defaultModelDir(variant);
  if (!existsSync(join(dir, 'config.json'))) throw new ModelFormatError(`the embedded model '${variant ?? 'fast'}' is missing: ${dir} has no config.json (a source checkout without models/?)`, join(dir, 'config.json'));
  return loadModel(dir, rest);
}

/** Loads a Llama / Mistral / Qwen2 checkpoint folder (config.json, *.safetensors, tokenizer.json). */
export async function loadModel(dir: string, loadOptions?: LoadModelOptions | null): Promise<Model> {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidArgumentError(`dir: expected a model folder path but received ${describe(dir)}`, 'dir');
  const options = checkOptions(loadOptions, LOAD_OPTIONS);
  // A file inside the checkpoint (config.json, model.safetensors) is a common slip; without this
  // check it surfaces as a confusing error about a missing shard index.
  const isFile = await stat(dir).then((s) => !s.isDirectory(), () => false);
  if (isFile) {
    throw new InvalidArgumentError(`dir: ${dir} is a file, not a directory; loadModel() expects the model directory holding config.json, *.safetensors and tokenizer.json (${dirname(resolve(dir))}?)`, 'dir');
  }
  const device: DeviceName =
    options.device === undefined || options.device === 'auto' ? (addon().binding.buildInfo().devices.length > 0 ? 'cuda' : 'cpu') : checkDevice(options.device, 'device');
  const config = await readModelConfig(dir);
  const index = await openSafetensors(dir);
  checkCheckpointTensors(config, index, dir);
  const tokenizer = await Tokenizer.load(dir);
  // Every file is read before native memory is allocated, so a bad one leaks nothing.
  const eos = [...new Set([...config.eosTokenIds, ...(await generationEos(dir))])];
  const pageSize = options.pageSize ?? 16;
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 1024) throw new InvalidArgumentError(`pageSize: expected an integer in [1, 1024] but received ${describe(pageSize)}`, 'pageSize');
  const kvCacheTokens = options.kvCacheTokens;
  if (kvCacheTokens !== undefined && (!Number.isInteger(kvCacheTokens) || kvCacheTokens < 1)) {
    throw new InvalidArgumentError(`kvCacheTokens: expected a positive integer but received ${describe(kvCacheTokens)}`, 'kvCacheTokens');
  }
  const prefillChunk = options.prefillChunk ?? 512;
  if (!Number.isInteger(prefillChunk) || prefillChunk < 1) throw new InvalidArgumentError(`prefillChunk: expected a positive integer but received ${describe(prefillChunk)}`, 'prefillChunk');
  const maxSequenceTokens = options.maxSequenceTokens;
  if (maxSequenceTokens !== undefined && (!Number.isInteger(maxSequenceTokens) || maxSequenceTokens < 1)) {
    throw new InvalidArgumentError(`maxSequenceTokens: expected a positive integer but received ${describe(maxSequenceTokens)}`, 'maxSequenceTokens');
  }
  const maxQueuedRequests = options.maxQueuedRequests ?? Infinity;
  if (maxQueuedRequests !== Infinity && (!Number.isInteger(maxQueuedRequests) || maxQueuedRequests < 0)) {
    throw new InvalidArgumentError(`maxQueuedRequests: expected an integer >= 0 (or Infinity) but received ${describe(maxQueuedRequests)}`, 'maxQueuedRequests');
  }
  for (const [name, v] of [['dtype', options.dtype], ['kvDtype', options.kvDtype]] as const) {
    if (v !== undefined && v !== 'f32' && v !== 'f16' && v !== 'bf16') throw new InvalidArgumentError(`${name}: expected 'f32', 'f16' or 'bf16' but received ${describe(v)}`, name);
  }
  const kvDtype = options.kvDtype ?? (device === 'cpu' ? 'f32' : 'bf16');

  // Map every weight file once; tensors are zero-copy views on the CPU when aligned.
  const byFile = new Map<string, TensorInfo[]>();
  for (const t of index) {
    if (!(t.dtype in ST_DTYPE)) continue;
    const list = byFile.get(t.file) ?? [];
    list.push(t);
    byFile.set(t.file, list);
  }
  const tensors = new Map<string, Tensor>();
  const owned: Tensor[] = [];
  const b = native();
  for (const [file, infos] of byFile) {
    const handles = b.mapTensors(
      file,
      infos.map((t) => ({ offset: t.byteOffset, bytes: t.byteLength, dtype: ST_DTYPE[t.dtype]!, shape: [...t.shape] })),
      device,
    );
    infos.forEach((t, i) => {
      const tensor = new Tensor(handles[i]!, ST_DTYPE[t.dtype]!, t.shape, device);
      tensors.set(t.name, tensor);
    });
  }
  const get = (name: string, dtype: FloatDType | undefined): Tensor => {
    const t = tensors.get(name);
    if (!t) throw new ModelFormatError(`${dir}: tensor ${name} is missing`, dir);
    const out = dtype && dtype !== t.dtype ? t.cast(dtype) : t;
    owned.push(out);
    return out;
  };
  const wd = options.dtype;
  const layers: LayerWeightsNative[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const lw: LayerWeightsNative = {
      attnNorm: get(`${p}input_layernorm.weight`, 'f32').handle(),
      wq: get(`${p}self_attn.q_proj.weight`, wd).handle(),
      wk: get(`${p}self_attn.k_proj.weight`, wd).handle(),
      wv: get(`${p}self_attn.v_proj.weight`, wd).handle(),
      wo: get(`${p}self_attn.o_proj.weight`, wd).handle(),
      ffnNorm: get(`${p}post_attention_layernorm.weight`, 'f32').handle(),
      gate: get(`${p}mlp.gate_proj.weight`, wd).handle(),
      up: get(`${p}mlp.up_proj.weight`, wd).handle(),
      down: get(`${p}mlp.down_proj.weight`, wd).handle(),
    };
    // Biases stay f32 whatever the weight dtype: they are added to f32 activations.
    if (config.qkvBias) {
      lw.bq = get(`${p}self_attn.q_proj.bias`, 'f32').handle();
      lw.bk = get(`${p}self_attn.k_proj.bias`, 'f32').handle();
      lw.bv = get(`${p}self_attn.v_proj.bias`, 'f32').handle();
    }
    if (config.outputBias) lw.bo = get(`${p}self_attn.o_proj.bias`, 'f32').handle();
    if (config.mlpBias) {
      lw.bGate = get(`${p}mlp.gate_proj.bias`, 'f32').handle();
      lw.bUp = get(`${p}mlp.up_proj.bias`, 'f32').handle();
      lw.bDown = get(`${p}mlp.down_proj.bias`, 'f32').handle();
    }
    layers.push(lw);
  }
  const embed = get('model.embed_tokens.weight', wd);
  const rope = ropeParameters(config);
  const invFreq = Tensor.from(rope.invFreq, { device });
  owned.push(invFreq);
  const weights: ModelWeightsNative = {
    embed: embed.handle(),
    finalNorm: get('model.norm.weight', 'f32').handle(),
    lmHead: config.tieWordEmbeddings ? embed.handle() : get('lm_head.weight', wd).handle(),
    invFreq: invFreq.handle(),
    layers,
  };
  const poolTokens =
    kvCacheTokens ?? defaultKvCacheTokens(config, { device, kvDtype, pageSize, maxSequenceTokens, weightBytes: owned.reduce((n, t) => n + t.byteLength, 0) });
  const numPages = Math.ceil(poolTokens / pageSize) * config.numLayers;
  let nativeModel: NativeModel;
  try {
    nativeModel = b.createModel(
      {
        vocab: config.vocabSize,
        hidden: config.hiddenSize,
        intermediate: config.intermediateSize,
        layers: config.numLayers,
        heads: config.numHeads,
        kvHeads: config.numKvHeads,
        headDim: config.headDim,
        rmsEps: config.rmsNormEps,
        ropeLayout: 'half', // HF checkpoints of these families use rotate_half
        ropeAttnFactor: rope.attentionScaling,
        slidingWindow: config.slidingWindow ?? 0,
        slidingLayers: config.layerAttention.map((a) => a === 'sliding'),
      },
      weights,
      { numPages, pageSize, dtype: kvDtype },
    );
  } finally {
    // The native model holds its own references; tensors that were only sources of a cast go.
    for (const t of tensors.values()) if (!owned.includes(t)) t.dispose();
  }
  // Entries of a store never cross models: the key includes the config, the tensor index, the
  // compute and KV formats and a sample of every tensor's bytes (two checkpoints of one
  // architecture, a fine-tune and its base say, differ in every tensor).
  const fingerprint = createHash('sha256')
    .update(JSON.stringify({ config, dtype: wd ?? null, kvDtype, pageSize, tensors: [...index].map((t) => [t.name, t.dtype, t.shape, t.byteLength]) }))
    .update(weightsSample(index))
    .digest('hex');
  return new Model({ config, tokenizer, device, native: nativeModel, weights: owned, eos, kvCacheTokens: poolTokens, pageSize, prefillChunk, maxQueuedRequests, maxSequenceTokens, kvDtype, fingerprint });
}

/**
 * Longest sequence the checkpoint is meant to run, from config.json: max_position_embeddings,
 * or the length its rope scaling extends it to when that is longer (the rule vLLM derives its
 * max_model_len with): factor x original_max_position_embeddings for llama3 and yarn (yarn's
 * original defaults to max_position_embeddings, as in transformers), factor x
 * max_position_embeddings for linear (position interpolation: HF configs keep the trained
 * length there, e.g. Vicuna 16k: 4096 x 4) and dynamic NTK (transformers' "factor of max len
 * extension").
 */
export function contextLength(config: ModelConfig): number {
  const trained = config.maxPositionEmbeddings;
  const s = config.ropeScaling;
  if (s === null) return trained;
  const original = s.type === 'linear' || s.type === 'dynamic' ? trained : s.originalMaxPositionEmbeddings;
  return Math.max(trained, Math.floor(s.factor * original));
}

// Pool sequences of the longest length the default pool is sized for at most: beyond that much
// concurrency a bigger pool rarely helps and only takes memory.
const DEFAULT_POOL_SEQUENCES = 64;

/**
 * The default KV pool in tokens per layer, from the memory left when the model is loaded: a
 * quarter of the host's free memory (os.freemem()) on the CPU; on CUDA half of what the device
 * has beyond the weights. Capped at 64 sequences of the longest length (64 x maxSequenceTokens
 * before the pool caps it) and rounded down to whole pages (at least one). A token costs
 * keys + values of every layer: 2 x layers x kvHeads x headDim x the KV dtype's bytes.
 */
export function defaultKvCacheTokens(
  config: ModelConfig,
  o: { device: DeviceName; kvDtype: FloatDType; pageSize: number; maxSequenceTokens: number | undefined; weightBytes: number },
): number {
  const bytesPerToken = 2 * config.numLayers * config.numKvHeads * config.headDim * dtypeBytes(o.kvDtype);
  let budget: number;
  if (o.device === 'cpu') budget = freemem() / 4;
  else {
    const index = o.device === 'cuda' ? 0 : Number(o.device.slice('cuda:'.length));
    const memory = addon().binding.buildInfo().devices[index]?.memoryBytes ?? 0;
    budget = Math.max(0, memory - o.weightBytes) / 2;
  }
  const tokens = Math.min(Math.floor(budget / bytesPerToken), DEFAULT_POOL_SEQUENCES * (o.maxSequenceTokens ?? contextLength(config)));
  return Math.max(o.pageSize, Math.floor(tokens / o.pageSize) * o.pageSize);
}

// generation_config.json may list more end-of-sequence ids than config.json (Llama 3). It is
// read like every model file (a regular file inside the directory, size-limited); ids that are
// not integers are ignored, as before.
async function generationEos(dir: string): Promise<number[]> {
  const g = await readOptionalJsonFile(join(dir, 'generation_config.json'), { dir });
  const e = isJsonObject(g) ? g['eos_token_id'] : undefined;
  return e === undefined ? [] : (Array.isArray(e) ? e : [e]).filter((x): x is number => Number.isInteger(x));
}

// Up to 4 windows of 4 KiB of every tensor (start, thirds, end), hashed: a few MB read at most.
function weightsSample(index: Iterable<TensorInfo>): Buffer {
  const hash = createHash('sha256');
  const fds = new Map<string, number>();
  try {
    const buf = Buffer.alloc(4096);
    for (const t of index) {
      let fd = fds.get(t.file);
      if (fd === undefined) fds.set(t.file, (fd = openSync(t.file, 'r')));
      const n = Math.min(4096, t.byteLength);
      for (const at of [0, Math.floor(t.byteLength / 3), Math.floor((2 * t.byteLength) / 3), t.byteLength - n]) {
        const got = readSync(fd, buf, 0, n, t.byteOffset + Math.max(0, Math.min(at, t.byteLength - n)));
        hash.update(buf.subarray(0, got));
      }
    }
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  return hash.digest();
}

// A policy the engine runs here: cacheFocus works on stored documents; policies whose
// mechanics are not in the engine yet are refused by name rather than run as full attention.
function runnable(p: ResolvedPolicy, overStore: boolean): ResolvedPolicy {
  if (p.name === 'cacheFocus' && !overStore) {
    throw new InvalidArgumentError("policy: 'cacheFocus' works on stored documents: model.sequence({ store, documents, policy })", 'policy');
  }
  if ((p.name === 'concat' || p.name === 'parallelWindows' || p.name === 'ape') && !overStore) {
    throw new InvalidArgumentError(`policy: '${p.name}' places stored documents: model.sequence({ store, documents, policy })`, 'policy');
  }
  if (BOUNDED_POLICIES.includes(p.name) && overStore) {
    throw new UnsupportedError(`policy: '${p.name}' runs on sequences without stored documents`);
  }
  return p;
}
