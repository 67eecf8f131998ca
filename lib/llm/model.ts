// loadModel() and Model: a Hugging Face checkpoint on a device, with a tokenizer, a paged KV
// pool, logits() for scoring and generate() for streaming generation.
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

import type { DeviceName, LayerWeightsNative, ModelWeightsNative, NativeModel } from '../binding.js';
import { DisposedError, InvalidArgumentError, ModelFormatError, UnsupportedError } from '../errors.js';
import { addon, native, packageRoot } from '../loader.js';
import { checkCheckpointTensors, type ModelConfig, openSafetensors, readModelConfig, ropeParameters, Tokenizer, type TensorInfo } from '../model/index.js';
import { isJsonObject, readOptionalJsonFile } from '../model/json-file.js';
import type { ChatMessage } from '../model/tokenizer.js';
import { checkDevice, describe, type DType, type FloatDType, Tensor } from '../tensor.js';
import { checkOptions, checkTokenIds, optionNames } from '../validate.js';
import { GENERATE_OPTIONS, generationLimits, type GenerateOptions, samplingSpec, seedOf } from './options.js';
import { type GenerationStream, Scheduler } from './scheduler.js';

export interface LoadModelOptions {
  /** 'auto' (default): CUDA when a GPU is usable, else the CPU. */
  device?: 'auto' | DeviceName;
  /** Weight storage dtype; default: as stored in the checkpoint. Norms are always f32. */
  dtype?: FloatDType;
  /** KV cache capacity in tokens per layer, shared by all live sequences (default: the model's context, at most 8192). */
  kvCacheTokens?: number;
  /** Tokens per KV page (default 16). */
  pageSize?: number;
  /** KV storage dtype (default f32 on the CPU, bf16 on CUDA). */
  kvDtype?: FloatDType;
  /** Most prompt tokens one sequence feeds per forward step (default 512). */
  prefillChunk?: number;
}

export type Prompt = string | { messages: ChatMessage[] } | readonly number[] | Int32Array;

export interface LogitsOptions {
  /** Logits of every position (rows x vocab) instead of the last one. */
  all?: boolean;
}

const LOAD_OPTIONS = optionNames<LoadModelOptions>({ device: true, dtype: true, kvCacheTokens: true, pageSize: true, kvDtype: true, prefillChunk: true });
const LOGITS_OPTIONS = optionNames<LogitsOptions>({ all: true });

const ST_DTYPE: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

export class Model {
  readonly config: ModelConfig;
  readonly tokenizer: Tokenizer;
  readonly device: DeviceName;
  /** KV capacity in tokens per layer. */
  readonly kvCacheTokens: number;
  /**
   * Longest sequence (prompt + generated tokens) one request may reach: kvCacheTokens, and on a
   * sliding-window checkpoint (Mistral v0.1, Qwen2 with use_sliding_window) at most the window,
   * since the engine does not apply the window yet and would attend past it.
   */
  readonly maxSequenceTokens: number;
  #native: NativeModel | null;
  #scheduler: Scheduler;
  #weights: Tensor[];
  #eos: number[];
  #prefillChunk: number;

  /** @internal Use loadModel(). */
  constructor(init: { config: ModelConfig; tokenizer: Tokenizer; device: DeviceName; native: NativeModel; weights: Tensor[]; eos: number[]; kvCacheTokens: number; prefillChunk: number }) {
    this.config = init.config;
    this.tokenizer = init.tokenizer;
    this.device = init.device;
    this.#native = init.native;
    this.#weights = init.weights;
    this.#eos = init.eos;
    this.kvCacheTokens = init.kvCacheTokens;
    this.maxSequenceTokens = Math.min(init.kvCacheTokens, init.config.slidingWindow ?? Infinity);
    this.#prefillChunk = init.prefillChunk;
    this.#scheduler = new Scheduler(init.native, { prefillChunk: init.prefillChunk, stepTokens: Math.max(init.prefillChunk, 2048), maxSequenceTokens: this.maxSequenceTokens });
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

  // Tokens come from encode(), which checked each id. One rule for every prompt form: it must
  // hold content of its own. '' and { messages: [] } are refused like [] rather than running on
  // the BOS (or template) the tokenizer adds; starting from BOS alone takes [bosTokenId].
  #checkTokens(tokens: Int32Array, extra: number, prompt: Prompt): void {
    const messages = (prompt as { messages?: unknown }).messages;
    if (tokens.length === 0 || prompt === '' || (Array.isArray(messages) && messages.length === 0)) {
      const bos = this.tokenizer.bosTokenId;
      throw new InvalidArgumentError(`prompt: is empty${bos === null ? '' : ` (to start from BOS alone, pass [${bos}])`}`, 'prompt');
    }
    if (tokens.length + extra > this.maxSequenceTokens) {
      const what = `prompt: ${tokens.length} tokens${extra ? ` + ${extra} to generate` : ''}`;
      if (this.maxSequenceTokens < this.kvCacheTokens) {
        throw new UnsupportedError(
          `${what} exceed the model's sliding window (${this.maxSequenceTokens} tokens); sliding-window attention is not applied yet, so longer sequences are refused`,
        );
      }
      throw new InvalidArgumentError(`${what} do not fit the KV cache (${this.kvCacheTokens} tokens; raise kvCacheTokens)`, 'prompt');
    }
  }

  /**
   * Logits of the last position (or of every position, with `all`) for a token sequence, as one
   * Float32Array of rows x vocab. For scoring and evaluation harnesses.
   */
  async logits(prompt: Prompt, options?: LogitsOptions | null): Promise<Float32Array> {
    const m = this.#handle('logits');
    const { all: allRows = false } = checkOptions(options, LOGITS_OPTIONS);
    if (typeof allRows !== 'boolean') throw new InvalidArgumentError(`all: expected a boolean but received ${describe(allRows)}`, 'all');
    const tokens = this.encode(prompt);
    this.#checkTokens(tokens, 0, prompt);
    const seq = m.newSequence();
    try {
      const rows: Float32Array[] = [];
      for (let at = 0; at < tokens.length; at += this.#prefillChunk) {
        const chunk = tokens.subarray(at, at + this.#prefillChunk);
        const last = at + chunk.length >= tokens.length;
        const mode = allRows ? 'all' : last ? 'last' : 'none';
        const positions = Int32Array.from({ length: chunk.length }, (_, i) => at + i);
        const out = await m.step([{ seq, tokens: Int32Array.from(chunk), positions, logits: mode }]);
        if (out.logits[0]) rows.push(out.logits[0]);
      }
      if (rows.length === 1) return rows[0]!;
      const all = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
      let o = 0;
      for (const r of rows) {
        all.set(r, o);
        o += r.length;
      }
      return all;
    } finally {
      seq.release();
    }
  }

  /**
   * Streams generated tokens: `for await (const { token, text } of model.generate(...))`, and
   * `await stream.result` for the text, counts, finish reason and timings. Concurrent calls are
   * batched into shared forward steps.
   */
  generate(prompt: Prompt, options?: GenerateOptions | null): GenerationStream {
    const m = this.#handle('generate');
    const opts = checkOptions(options, GENERATE_OPTIONS);
    const tokens = this.encode(prompt);
    const limits = generationLimits(opts, this.config.vocabSize);
    this.#checkTokens(tokens, 0, prompt);
    if (tokens.length + limits.maxTokens > this.config.maxPositionEmbeddings * 64) {
      throw new InvalidArgumentError(`maxTokens: ${limits.maxTokens} is beyond any usable position range`, 'maxTokens');
    }
    const sampling = samplingSpec(opts);
    const seq = m.newSequence(seedOf(opts));
    return this.#scheduler.submit({
      seq,
      prompt: tokens,
      sampling,
      maxTokens: limits.maxTokens,
      stop: limits.stop,
      stopTokens: new Set([...this.#eos, ...limits.stopTokens]),
      decoder: this.tokenizer.createStreamDecoder({ skipSpecialTokens: true }),
      signal: opts.signal,
    });
  }

  /** Free KV pages right now (pages of live sequences are in use). */
  get freeKvPages(): number {
    return this.#handle('freeKvPages').freePages();
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
  const kvCacheTokens = options.kvCacheTokens ?? Math.min(config.maxPositionEmbeddings, 8192);
  if (!Number.isInteger(kvCacheTokens) || kvCacheTokens < 1) throw new InvalidArgumentError(`kvCacheTokens: expected a positive integer but received ${describe(kvCacheTokens)}`, 'kvCacheTokens');
  const prefillChunk = options.prefillChunk ?? 512;
  if (!Number.isInteger(prefillChunk) || prefillChunk < 1) throw new InvalidArgumentError(`prefillChunk: expected a positive integer but received ${describe(prefillChunk)}`, 'prefillChunk');
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
    if (config.qkvBias) {
      lw.bq = get(`${p}self_attn.q_proj.bias`, 'f32').handle();
      lw.bk = get(`${p}self_attn.k_proj.bias`, 'f32').handle();
      lw.bv = get(`${p}self_attn.v_proj.bias`, 'f32').handle();
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
  const numPages = Math.ceil(kvCacheTokens / pageSize) * config.numLayers;
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
      },
      weights,
      { numPages, pageSize, dtype: kvDtype },
    );
  } finally {
    // The native model holds its own references; tensors that were only sources of a cast go.
    for (const t of tensors.values()) if (!owned.includes(t)) t.dispose();
  }
  return new Model({ config, tokenizer, device, native: nativeModel, weights: owned, eos, kvCacheTokens, prefillChunk });
}

// generation_config.json may list more end-of-sequence ids than config.json (Llama 3). It is
// read like every model file (a regular file inside the directory, size-limited); ids that are
// not integers are ignored, as before.
async function generationEos(dir: string): Promise<number[]> {
  const g = await readOptionalJsonFile(join(dir, 'generation_config.json'), { dir });
  const e = isJsonObject(g) ? g['eos_token_id'] : undefined;
  return e === undefined ? [] : (Array.isArray(e) ? e : [e]).filter((x): x is number => Number.isInteger(x));
}
