// config.json of a Hugging Face checkpoint, normalised into one ModelConfig for the three decoder
// families kvfocus runs: Llama (2 and 3.x), Mistral and Qwen2. They share one block
// (RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU MLP) and differ only in biases,
// sliding windows and RoPE scaling, which the normalised fields make explicit.
//
// Optional fields take the defaults of the matching transformers Config class, so a checkpoint
// means the same thing here as in transformers. Anything we cannot run faithfully is refused with
// a ModelFormatError naming config.json and the field. README (loadModel) lists every field read
// here and what it does; fields not read are ones transformers' inference ignores too
// (initializer_range, use_cache, attention_dropout) or computes the same with
// (pretraining_tp > 1 splits each projection into slices whose sum is the whole product).

import * as path from 'node:path';
import { ModelFormatError } from '../errors.js';
import { describeValue, isJsonObject, readJsonFile, type JsonObject } from './json-file.js';

export type Architecture = 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM';
export type ModelType = 'llama' | 'mistral' | 'qwen2';

export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'];

const MODEL_TYPE: Readonly<Record<Architecture, ModelType>> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

/** RoPE frequency scaling, normalised from `rope_scaling` / `rope_parameters`. See rope.ts. */
export type RopeScaling =
  | { readonly type: 'linear'; readonly factor: number }
  | { readonly type: 'dynamic'; readonly factor: number }
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositionEmbeddings: number;
    }
  | {
      readonly type: 'yarn';
      readonly factor: number;
      /** Pre-extension context length; max_position_embeddings when the config omits it. */
      readonly originalMaxPositionEmbeddings: number;
      readonly betaFast: number;
      readonly betaSlow: number;
      /** Explicit attention (cos/sin) scale; null means derive it from factor and mscale. */
      readonly attentionFactor: number | null;
      readonly mscale: number | null;
      readonly mscaleAllDim: number | null;
      /** Round the correction range to whole dimensions (transformers' default). */
      readonly truncate: boolean;
    };

export type RopeScalingType = RopeScaling['type'];
export type TorchDtype = 'float32' | 'float16' | 'bfloat16';
/** Attention span of one layer: every earlier token, or only the last `slidingWindow` ones. */
export type LayerAttention = 'full' | 'sliding';

export interface ModelConfig {
  readonly architecture: Architecture;
  readonly modelType: ModelType;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly ropeTheta: number;
  readonly ropeScaling: RopeScaling | null;
  readonly rmsNormEps: number;
  readonly maxPositionEmbeddings: number;
  readonly tieWordEmbeddings: boolean;
  /** Biases on q_proj, k_proj, v_proj (always for Qwen2; Llama's attention_bias). */
  readonly qkvBias: boolean;
  /** Bias on o_proj (Llama's attention_bias only). */
  readonly outputBias: boolean;
  /** Biases on gate_proj, up_proj, down_proj (Llama's mlp_bias). */
  readonly mlpBias: boolean;
  /** Window size of the sliding layers, null when no layer slides. */
  readonly slidingWindow: number | null;
  /** One entry per layer. */
  readonly layerAttention: readonly LayerAttention[];
  readonly bosTokenId: number | null;
  /** Generation stops at any of these (Llama 3.1 instruct lists three). */
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** The dtype the checkpoint was saved in, as a hint; the safetensors headers are authoritative. */
  readonly torchDtype: TorchDtype | null;
}

/** transformers' defaults per Config class, for fields a config.json may omit. */
interface FamilyDefaults {
  readonly numKvHeads: number | 'numHeads';
  readonly maxPositionEmbeddings: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly slidingWindow: number | null;
}

const DEFAULTS: Readonly<Record<ModelType, FamilyDefaults>> = {
  llama: { numKvHeads: 'numHeads', maxPositionEmbeddings: 2048, bosTokenId: 1, eosTokenId: 2, slidingWindow: null },
  mistral: { numKvHeads: 8, maxPositionEmbeddings: 4096 * 32, bosTokenId: 1, eosTokenId: 2, slidingWindow: 4096 },
  qwen2: { numKvHeads: 32, maxPositionEmbeddings: 32768, bosTokenId: null, eosTokenId: null, slidingWindow: 4096 },
};
const DEFAULT_ROPE_THETA = 10000;
/** Bounds on sizes read from config.json (the largest released models use 126 layers). */
const MAX_SIZE = 2 ** 31 - 1;
const MAX_LAYERS = 65536;
const DEFAULT_RMS_NORM_EPS = 1e-6;

/** Field access with messages of the form "config.json: hidden_size must be ...". */
class ConfigFields {
  constructor(
    readonly json: JsonObject,
    readonly file: string,
    readonly prefix = '',
  ) {}

  error(field: string, detail: string): ModelFormatError {
    return new ModelFormatError(`${path.basename(this.file)}: ${this.prefix}${field} ${detail}`, this.file);
  }

  has(field: string): boolean {
    return this.json[field] !== undefined && this.json[field] !== null;
  }

  /** `max` bounds sizes before anything is allocated from them (2**32 layers would make the
   * per-layer lists throw an untyped RangeError); the default keeps them int32 for native code. */
  positiveInt(field: string, fallback?: number, max = MAX_SIZE): number {
    const value = this.json[field];
    if (value === undefined || value === null) {
      if (fallback !== undefined) return fallback;
      throw this.error(field, 'is missing');
    }
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
      throw this.error(field, `must be a positive integer, got ${describeValue(value)}`);
    }
    if (value > max) throw this.error(field, `(${value}) is larger than kvfocus accepts (${max})`);
    return value;
  }

  positiveNumber(field: string, fallback?: number): number {
    const value = this.json[field];
    if (value === undefined || value === null) {
      if (fallback !== undefined) return fallback;
      throw this.error(field, 'is missing');
    }
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw this.error(field, `must be a positive number, got ${describeValue(value)}`);
    }
    return value;
  }

  /** A finite number, or null when absent. */
  optionalNumber(field: string): number | null {
    const value = this.json[field];
    if (value === undefined || value === null) return null;
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw this.error(field, `must be a number, got ${describeValue(value)}`);
    }
    return value;
  }

  boolean(field: string, fallback: boolean): boolean {
    const value = this.json[field];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'boolean') throw this.error(field, `must be true or false, got ${describeValue(value)}`);
    return value;
  }

  tokenId(field: string, fallback: number | null, vocabSize: number): number | null {
    const value = this.json[field] === undefined ? fallback : this.json[field];
    if (value === null) return null;
    return this.checkTokenId(field, value, vocabSize);
  }

  checkTokenId(field: string, value: unknown, vocabSize: number): number {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      throw this.error(field, `must be a token id (a non-negative integer), got ${describeValue(value)}`);
    }
    if (value >= vocabSize) throw this.error(field, `(${value}) must be below vocab_size (${vocabSize})`);
    return value;
  }
}

/** Reads config.json from a model folder (or the file itself) and validates it. */
export async function readModelConfig(dirOrFile: string): Promise<ModelConfig> {
  const resolved = path.resolve(dirOrFile);
  const file = resolved.endsWith('.json') ? resolved : path.join(resolved, 'config.json');
  return parseModelConfig(await readJsonFile(file), file);
}

/** Validates a parsed config.json. `file` is used in error messages and ModelFormatError.file. */
export function parseModelConfig(json: unknown, file = 'config.json'): ModelConfig {
  if (!isJsonObject(json)) {
    throw new ModelFormatError(`${path.basename(file)}: must be a JSON object, got ${describeValue(json)}`, file);
  }
  const fields = new ConfigFields(json, file);
  const architecture = readArchitecture(fields);
  const modelType = MODEL_TYPE[architecture];
  const defaults = DEFAULTS[modelType];

  if (fields.has('quantization_config')) {
    const method = isJsonObject(json['quantization_config']) ? json['quantization_config']['quant_method'] : undefined;
    throw fields.error('quantization_config', `(${describeValue(method ?? 'unknown method')}) is not supported; kvfocus loads unquantized F32/F16/BF16 weights`);
  }
  // transformers' ACT2FN maps "swish" to the same SiLU.
  const hiddenAct = json['hidden_act'] ?? 'silu';
  if (hiddenAct !== 'silu' && hiddenAct !== 'swish') {
    throw fields.error('hidden_act', `${describeValue(hiddenAct)} is not supported; ${architecture} uses "silu"`);
  }

  const vocabSize = fields.positiveInt('vocab_size');
  const hiddenSize = fields.positiveInt('hidden_size');
  const intermediateSize = fields.positiveInt('intermediate_size');
  const numLayers = fields.positiveInt('num_hidden_layers', undefined, MAX_LAYERS);
  const numHeads = fields.positiveInt('num_attention_heads');
  const numKvHeads = fields.positiveInt('num_key_value_heads', defaults.numKvHeads === 'numHeads' ? numHeads : defaults.numKvHeads);
  if (numHeads % numKvHeads !== 0) {
    throw fields.error('num_key_value_heads', `(${numKvHeads}) must divide num_attention_heads (${numHeads})`);
  }
  let headDim: number;
  if (fields.has('head_dim')) {
    headDim = fields.positiveInt('head_dim');
  } else {
    if (hiddenSize % numHeads !== 0) {
      throw fields.error('hidden_size', `(${hiddenSize}) must be divisible by num_attention_heads (${numHeads}) when head_dim is not given`);
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) {
    throw fields.error(fields.has('head_dim') ? 'head_dim' : 'hidden_size', `gives head dimension ${headDim}, which must be even for rotary embeddings`);
  }
  const partialRotary = fields.optionalNumber('partial_rotary_factor');
  if (partialRotary !== null && partialRotary !== 1) {
    throw fields.error('partial_rotary_factor', `(${partialRotary}) is not supported; kvfocus rotates the whole head`);
  }

  const maxPositionEmbeddings = fields.positiveInt('max_position_embeddings', defaults.maxPositionEmbeddings);
  const rmsNormEps = fields.positiveNumber('rms_norm_eps', DEFAULT_RMS_NORM_EPS);
  if (rmsNormEps >= 1) throw fields.error('rms_norm_eps', `(${rmsNormEps}) must be a small positive number`);
  const { ropeTheta, ropeScaling } = readRope(fields, maxPositionEmbeddings);
  if (ropeTheta <= 1) throw fields.error('rope_theta', `(${ropeTheta}) must be greater than 1`);

  const attentionBias = fields.boolean('attention_bias', false);
  const mlpBias = fields.boolean('mlp_bias', false);
  // Mistral and Qwen2 fix their biases in code; a config asking for others is not theirs.
  if (modelType !== 'llama') {
    for (const [field, value] of [['attention_bias', attentionBias], ['mlp_bias', mlpBias]] as const) {
      if (value) throw fields.error(field, `(true) is not supported for ${architecture}, whose projections have fixed biases`);
    }
  }
  // Qwen2 always has q/k/v biases and never an o_proj bias; Mistral has none; Llama has
  // attention_bias on all four projections and mlp_bias on the MLP.
  const qkvBias = modelType === 'qwen2' ? true : modelType === 'llama' ? attentionBias : false;
  const outputBias = modelType === 'llama' ? attentionBias : false;

  const { slidingWindow, layerAttention } = readSlidingWindow(fields, modelType, defaults, numLayers);

  const bosTokenId = fields.tokenId('bos_token_id', defaults.bosTokenId, vocabSize);
  const eosTokenIds = readEosTokenIds(fields, defaults.eosTokenId, vocabSize);
  // Early Llama conversions wrote pad_token_id: -1 for "no padding"; nothing here pads, so any
  // negative id simply means none.
  const rawPad = json['pad_token_id'];
  const padTokenId = typeof rawPad === 'number' && rawPad < 0 ? null : fields.tokenId('pad_token_id', null, vocabSize);

  return {
    architecture,
    modelType,
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    ropeTheta,
    ropeScaling,
    rmsNormEps,
    maxPositionEmbeddings,
    tieWordEmbeddings: fields.boolean('tie_word_embeddings', false),
    qkvBias,
    outputBias,
    mlpBias: modelType === 'llama' ? mlpBias : false,
    slidingWindow,
    layerAttention,
    bosTokenId,
    eosTokenIds,
    padTokenId,
    torchDtype: readTorchDtype(fields),
  };
}

function readArchitecture(fields: ConfigFields): Architecture {
  const supported = SUPPORTED_ARCHITECTURES.join(', ');
  const architectures = fields.json['architectures'];
  const modelType = fields.json['model_type'];
  let architecture: Architecture | undefined;
  if (architectures !== undefined && architectures !== null) {
    if (!Array.isArray(architectures) || architectures.length === 0 || !architectures.every((a) => typeof a === 'string')) {
      throw fields.error('architectures', `must be a non-empty list of class names, got ${describeValue(architectures)}`);
    }
    architecture = SUPPORTED_ARCHITECTURES.find((a) => architectures.includes(a));
    if (architecture === undefined) {
      throw fields.error('architectures', `${describeValue(architectures)} is not supported; supported: ${supported}`);
    }
  } else if (typeof modelType === 'string') {
    architecture = SUPPORTED_ARCHITECTURES.find((a) => MODEL_TYPE[a] === modelType);
    if (architecture === undefined) {
      throw fields.error('model_type', `${describeValue(modelType)} is not supported; supported: ${supported}`);
    }
  } else {
    throw fields.error('architectures', `is missing; expected one of ${supported}`);
  }
  if (modelType !== undefined && modelType !== MODEL_TYPE[architecture]) {
    throw fields.error('model_type', `${describeValue(modelType)} does not match architectures (${architecture} has model_type "${MODEL_TYPE[architecture]}")`);
  }
  return architecture;
}

function readTorchDtype(fields: ConfigFields): TorchDtype | null {
  // transformers 5 writes "dtype"; earlier versions "torch_dtype".
  const field = fields.has('dtype') ? 'dtype' : 'torch_dtype';
  const value = fields.json[field];
  if (value === undefined || value === null) return null;
  if (value === 'float32' || value === 'float16' || value === 'bfloat16') return value;
  throw fields.error(field, `${describeValue(value)} is not supported; expected "float32", "float16" or "bfloat16"`);
}

function readEosTokenIds(fields: ConfigFields, fallback: number | null, vocabSize: number): number[] {
  const value = fields.json['eos_token_id'] === undefined ? fallback : fields.json['eos_token_id'];
  if (value === null) return [];
  if (Array.isArray(value)) {
    return value.map((id, i) => fields.checkTokenId(`eos_token_id[${i}]`, id, vocabSize));
  }
  return [fields.checkTokenId('eos_token_id', value, vocabSize)];
}

function readSlidingWindow(
  fields: ConfigFields,
  modelType: ModelType,
  defaults: FamilyDefaults,
  numLayers: number,
): { slidingWindow: number | null; layerAttention: LayerAttention[] } {
  const full = (): LayerAttention[] => Array.from({ length: numLayers }, () => 'full');
  if (modelType === 'llama') return { slidingWindow: null, layerAttention: full() };

  const rawWindow = fields.json['sliding_window'];
  const window = rawWindow === undefined ? defaults.slidingWindow : rawWindow === null ? null : fields.positiveInt('sliding_window');
  if (modelType === 'mistral') {
    // Mistral v0.1 slides every layer; v0.2+ sets sliding_window to null.
    return window === null ? { slidingWindow: null, layerAttention: full() } : { slidingWindow: window, layerAttention: Array.from({ length: numLayers }, () => 'sliding') };
  }

  // Qwen2: only with use_sliding_window, and only layers >= max_window_layers (or as layer_types says).
  if (!fields.boolean('use_sliding_window', false) || window === null) return { slidingWindow: null, layerAttention: full() };
  const layerTypes = fields.json['layer_types'];
  let layerAttention: LayerAttention[];
  if (layerTypes !== undefined && layerTypes !== null) {
    if (!Array.isArray(layerTypes) || layerTypes.length !== numLayers) {
      throw fields.error('layer_types', `must list one attention type per layer (${numLayers}), got ${describeValue(layerTypes)}`);
    }
    layerAttention = layerTypes.map((t, i) => {
      if (t === 'full_attention') return 'full';
      if (t === 'sliding_attention') return 'sliding';
      throw fields.error(`layer_types[${i}]`, `${describeValue(t)} is not "full_attention" or "sliding_attention"`);
    });
  } else {
    const maxWindowLayers = fields.json['max_window_layers'] === undefined ? 28 : fields.json['max_window_layers'];
    if (typeof maxWindowLayers !== 'number' || !Number.isSafeInteger(maxWindowLayers) || maxWindowLayers < 0) {
      throw fields.error('max_window_layers', `must be a non-negative integer, got ${describeValue(maxWindowLayers)}`);
    }
    layerAttention = Array.from({ length: numLayers }, (_, i) => (i >= maxWindowLayers ? 'sliding' : 'full'));
  }
  return layerAttention.includes('sliding') ? { slidingWindow: window, layerAttention } : { slidingWindow: null, layerAttention };
}

const ROPE_TYPES: readonly string[] = ['default', 'linear', 'dynamic', 'llama3', 'yarn'];

function readRope(fields: ConfigFields, maxPositionEmbeddings: number): { ropeTheta: number; ropeScaling: RopeScaling | null } {
  // transformers <= 4.x: rope_theta + rope_scaling; 5.x: rope_parameters holding both.
  const field = fields.has('rope_parameters') ? 'rope_parameters' : 'rope_scaling';
  const raw = fields.json[field];
  let ropeTheta = fields.positiveNumber('rope_theta', DEFAULT_ROPE_THETA);
  if (raw === undefined || raw === null) return { ropeTheta, ropeScaling: null };
  if (!isJsonObject(raw)) throw fields.error(field, `must be an object, got ${describeValue(raw)}`);

  const rope = new ConfigFields(raw, fields.file, `${field}.`);
  if (rope.has('rope_theta')) ropeTheta = rope.positiveNumber('rope_theta');
  const typeField = rope.has('rope_type') ? 'rope_type' : 'type';
  const type = raw[typeField] ?? 'default';
  if (typeof type !== 'string' || !ROPE_TYPES.includes(type)) {
    const hint = isJsonObject(Object.values(raw)[0]) ? ' (per-layer-type RoPE parameters are not supported)' : '';
    throw rope.error(typeField, `${describeValue(type)} is not supported${hint}; supported: ${ROPE_TYPES.join(', ')}`);
  }
  if (type === 'default') return { ropeTheta, ropeScaling: null };

  if (type === 'yarn') return { ropeTheta, ropeScaling: readYarn(rope, maxPositionEmbeddings) };
  const factor = rope.positiveNumber('factor');
  if (factor < 1) throw rope.error('factor', `(${factor}) must be >= 1`);
  switch (type) {
    case 'dynamic': {
      // transformers scales from max_position_embeddings; a different original length in the
      // scaling block has no single meaning across its versions.
      if (rope.has('original_max_position_embeddings') && raw['original_max_position_embeddings'] !== maxPositionEmbeddings) {
        throw rope.error('original_max_position_embeddings', `(${describeValue(raw['original_max_position_embeddings'])}) is not supported with dynamic scaling unless it equals max_position_embeddings (${maxPositionEmbeddings})`);
      }
      return { ropeTheta, ropeScaling: { type, factor } };
    }
    case 'linear':
      return { ropeTheta, ropeScaling: { type, factor } };
    default: {
      const lowFreqFactor = rope.positiveNumber('low_freq_factor');
      const highFreqFactor = rope.positiveNumber('high_freq_factor');
      if (highFreqFactor <= lowFreqFactor) {
        throw rope.error('high_freq_factor', `(${highFreqFactor}) must be greater than low_freq_factor (${lowFreqFactor})`);
      }
      const originalMaxPositionEmbeddings = rope.positiveInt('original_max_position_embeddings');
      return { ropeTheta, ropeScaling: { type: 'llama3', factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings } };
    }
  }
}

function readYarn(rope: ConfigFields, maxPositionEmbeddings: number): RopeScaling {
  const originalMaxPositionEmbeddings = rope.positiveInt('original_max_position_embeddings', maxPositionEmbeddings);
  // Current transformers (since the fix of issue #38224): an explicit factor wins; without one,
  // the ratio of the two context lengths. Older versions always took the ratio when
  // original_max_position_embeddings was present, which silently disabled Qwen2.5's YaRN.
  const factor = rope.has('factor') ? rope.positiveNumber('factor') : maxPositionEmbeddings / originalMaxPositionEmbeddings;
  if (factor < 1) throw rope.error('factor', `(${factor}) must be >= 1`);
  // transformers reads these with `x or default`, so 0 means the default too.
  const betaFast = rope.optionalNumber('beta_fast') || 32;
  const betaSlow = rope.optionalNumber('beta_slow') || 1;
  if (betaFast < betaSlow) throw rope.error('beta_fast', `(${betaFast}) must not be below beta_slow (${betaSlow})`);
  if (betaSlow <= 0) throw rope.error('beta_slow', `(${betaSlow}) must be positive`);
  const attentionFactor = rope.optionalNumber('attention_factor');
  if (attentionFactor !== null && attentionFactor <= 0) throw rope.error('attention_factor', `(${attentionFactor}) must be positive`);
  return {
    type: 'yarn',
    factor,
    originalMaxPositionEmbeddings,
    betaFast,
    betaSlow,
    attentionFactor,
    mscale: rope.optionalNumber('mscale'),
    mscaleAllDim: rope.optionalNumber('mscale_all_dim'),
    truncate: rope.boolean('truncate', true),
  };
}
