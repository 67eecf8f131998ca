// A float64 reference forward pass for the Llama family (Llama 2/3, Mistral, Qwen2) as
// Hugging Face transformers defines it, reading an HF model directory (config.json +
// safetensors). It is the readable specification of what the engine computes: one token at a
// time, one head at a time, no caching, no batching, no cleverness. Slow on purpose.
//
// Per layer l, for the hidden states x (one row per token):
//   h  = RMSNorm(x) * input_layernorm
//   q  = h Wq^T + bq,  k = h Wk^T + bk,  v = h Wv^T + bv          (biases: Qwen2, Llama attention_bias)
//   q, k rotated by RoPE at each token's position (rotate_half convention)
//   a  = softmax(q k^T / sqrt(head_dim) + causal mask) v          (GQA: kv head = head / group)
//        on sliding layers, a query at position i sees keys at positions > i - sliding_window
//   x += a Wo^T + bo                                               (bo: Llama attention_bias)
//   h  = RMSNorm(x) * post_attention_layernorm
//   x += (silu(h Wgate^T + bg) * (h Wup^T + bu)) Wdown^T + bd      (biases: Llama mlp_bias)
// logits = (RMSNorm(x) * norm) Wlm^T, where Wlm is the embedding matrix if tied.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** A tensor with its PyTorch shape, widened to float64. */
export interface Tensor {
  shape: number[];
  data: Float64Array;
}

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/**
 * Reads a .safetensors file: u64 LE header length, JSON header, then raw little-endian data at
 * data_offsets relative to the end of the header. Supports F32, F16 and BF16.
 */
export function readSafetensors(path: string): Map<string, Tensor> {
  const file = readFileSync(path);
  const headerLength = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.toString('utf8', 8, 8 + headerLength)) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const dataStart = 8 + headerLength;
  const tensors = new Map<string, Tensor>();
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [begin, end] = info.data_offsets;
    const count = info.shape.reduce((a, b) => a * b, 1);
    const bytes = file.subarray(dataStart + begin, dataStart + end);
    const data = new Float64Array(count);
    switch (info.dtype) {
      case 'F32':
        for (let i = 0; i < count; i++) data[i] = bytes.readFloatLE(4 * i);
        break;
      case 'BF16': {
        // bfloat16 is the upper half of a float32.
        const word = Buffer.alloc(4);
        for (let i = 0; i < count; i++) {
          word.writeUInt32LE(bytes.readUInt16LE(2 * i) << 16 >>> 0);
          data[i] = word.readFloatLE(0);
        }
        break;
      }
      case 'F16':
        for (let i = 0; i < count; i++) data[i] = halfToFloat(bytes.readUInt16LE(2 * i));
        break;
      default:
        throw new Error(`${path}: tensor ${name} has unsupported dtype ${info.dtype}`);
    }
    if (bytes.length !== count * (info.dtype === 'F32' ? 4 : 2)) {
      throw new Error(`${path}: tensor ${name} has ${bytes.length} bytes for shape [${info.shape}]`);
    }
    tensors.set(name, { shape: info.shape, data });
  }
  return tensors;
}

/** All tensors of an HF checkpoint: model.safetensors, or the shards named by its index. */
export function readCheckpoint(dir: string): Map<string, Tensor> {
  const indexPath = join(dir, 'model.safetensors.index.json');
  if (!existsSync(indexPath)) return readSafetensors(join(dir, 'model.safetensors'));
  const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map: Record<string, string> };
  const tensors = new Map<string, Tensor>();
  for (const shard of new Set(Object.values(index.weight_map))) {
    for (const [name, tensor] of readSafetensors(join(dir, shard))) tensors.set(name, tensor);
  }
  return tensors;
}

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

/** HF rope_scaling of type "llama3" (Llama 3.1+). */
export interface Llama3RopeScaling {
  ropeType: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/**
 * HF rope_scaling of type "dynamic" (dynamic NTK): each forward pass recomputes the base from
 * its sequence length L = largest position id + 1, once L exceeds max_position_embeddings:
 *   base' = base * (factor * L / max_position_embeddings - (factor - 1)) ^ (dim / (dim - 2))
 * and rotates that pass's queries and keys with it; cached keys keep the base of their pass.
 */
export interface DynamicRopeScaling {
  ropeType: 'dynamic';
  factor: number;
}

export interface LlamaFamilyConfig {
  modelType: 'llama' | 'mistral' | 'qwen2';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: Llama3RopeScaling | DynamicRopeScaling | null;
  maxPositionEmbeddings: number;
  /** Keys further back than this are masked on the sliding layers; null for none. */
  slidingWindow: number | null;
  /** Per layer: whether it slides (Mistral: all; Qwen2: layers >= max_window_layers). */
  slidingLayers: boolean[];
  tieWordEmbeddings: boolean;
}

/** The fields of an HF config.json that define the forward pass, with HF's defaults. */
export function parseConfig(json: Record<string, unknown>): LlamaFamilyConfig {
  const modelType = json.model_type;
  if (modelType !== 'llama' && modelType !== 'mistral' && modelType !== 'qwen2') {
    throw new Error(`reference supports model_type llama, mistral, qwen2; got ${String(modelType)}`);
  }
  const int = (key: string, fallback?: number): number => {
    const value = json[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isInteger(value)) throw new Error(`config.${key} must be an integer`);
    return value;
  };
  const num = (key: string, fallback?: number): number => {
    const value = json[key] ?? fallback;
    if (typeof value !== 'number') throw new Error(`config.${key} must be a number`);
    return value;
  };
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');

  let ropeScaling: Llama3RopeScaling | DynamicRopeScaling | null = null;
  const scaling = json.rope_scaling as Record<string, number | string> | null | undefined;
  if (scaling) {
    const type = scaling.rope_type ?? scaling.type;
    if (type !== 'llama3' && type !== 'dynamic') throw new Error(`reference supports rope_scaling types llama3 and dynamic; got ${String(type)}`);
    if (type === 'dynamic') ropeScaling = { ropeType: 'dynamic', factor: Number(scaling.factor) };
    else ropeScaling = {
      ropeType: 'llama3',
      factor: Number(scaling.factor),
      lowFreqFactor: Number(scaling.low_freq_factor),
      highFreqFactor: Number(scaling.high_freq_factor),
      originalMaxPositionEmbeddings: Number(scaling.original_max_position_embeddings),
    };
  }

  const numLayers = int('num_hidden_layers');
  let slidingWindow: number | null = null;
  let slidingLayers = Array.from({ length: numLayers }, () => false);
  if (modelType === 'mistral' && typeof json.sliding_window === 'number') {
    slidingWindow = json.sliding_window;
    slidingLayers = slidingLayers.map(() => true);
  }
  // Qwen2 (transformers' Qwen2Config): with use_sliding_window, layers from max_window_layers on.
  if (modelType === 'qwen2' && json.use_sliding_window === true && typeof json.sliding_window === 'number') {
    if (json.layer_types !== undefined) throw new Error('reference does not implement Qwen2 layer_types');
    const maxWindowLayers = int('max_window_layers', 28);
    slidingWindow = json.sliding_window;
    slidingLayers = slidingLayers.map((_, l) => l >= maxWindowLayers);
  }

  return {
    modelType,
    vocabSize: int('vocab_size'),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers,
    numHeads,
    numKvHeads: int('num_key_value_heads', numHeads),
    // head_dim is explicit in newer Llama/Mistral configs; Qwen2 always derives it.
    headDim: typeof json.head_dim === 'number' ? json.head_dim : hiddenSize / numHeads,
    rmsNormEps: num('rms_norm_eps'),
    ropeTheta: num('rope_theta', 10000),
    ropeScaling,
    maxPositionEmbeddings: int('max_position_embeddings', 2048),
    slidingWindow,
    slidingLayers,
    tieWordEmbeddings: json.tie_word_embeddings === true,
  };
}

/**
 * RoPE inverse frequencies theta^(-2i/d), i < d/2, with Llama 3's scaling as transformers'
 * _compute_llama3_parameters applies it: wavelengths longer than the original context / low
 * factor are slowed down by `factor`, shorter than original / high factor kept, and the band
 * in between interpolated.
 */
export function ropeInverseFrequencies(config: LlamaFamilyConfig, seqLen?: number): Float64Array {
  const half = config.headDim / 2;
  const inverse = new Float64Array(half);
  const scaling = config.ropeScaling;
  let base = config.ropeTheta;
  if (scaling?.ropeType === 'dynamic') {
    // transformers' _compute_dynamic_ntk_parameters: seq_len = max(seq_len, max_position_embeddings).
    const dim = config.headDim;
    const length = Math.max(seqLen ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings);
    base *= (scaling.factor * length / config.maxPositionEmbeddings - (scaling.factor - 1)) ** (dim / (dim - 2));
  }
  for (let i = 0; i < half; i++) inverse[i] = 1 / base ** ((2 * i) / config.headDim);
  if (!scaling || scaling.ropeType === 'dynamic') return inverse;
  const lowFreqWavelength = scaling.originalMaxPositionEmbeddings / scaling.lowFreqFactor;
  const highFreqWavelength = scaling.originalMaxPositionEmbeddings / scaling.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const freq = inverse[i]!;
    const wavelength = (2 * Math.PI) / freq;
    if (wavelength > lowFreqWavelength) {
      inverse[i] = freq / scaling.factor;
    } else if (wavelength >= highFreqWavelength) {
      const smooth = (scaling.originalMaxPositionEmbeddings / wavelength - scaling.lowFreqFactor) /
        (scaling.highFreqFactor - scaling.lowFreqFactor);
      inverse[i] = (1 - smooth) * (freq / scaling.factor) + smooth * freq;
    }
  }
  return inverse;
}

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

/** y = W x + b for W of shape [out, in] (PyTorch's Linear layout). */
function linear(x: Float64Array, weight: Tensor, bias?: Tensor): Float64Array {
  const [outFeatures, inFeatures] = weight.shape as [number, number];
  const y = new Float64Array(outFeatures);
  for (let o = 0; o < outFeatures; o++) {
    let sum = bias ? bias.data[o]! : 0;
    const row = o * inFeatures;
    for (let i = 0; i < inFeatures; i++) sum += weight.data[row + i]! * x[i]!;
    y[o] = sum;
  }
  return y;
}

/** x / sqrt(mean(x^2) + eps) * weight. */
function rmsNorm(x: Float64Array, weight: Tensor, eps: number): Float64Array {
  let sumSquares = 0;
  for (const value of x) sumSquares += value * value;
  const scale = 1 / Math.sqrt(sumSquares / x.length + eps);
  return x.map((value, i) => value * scale * weight.data[i]!);
}

const silu = (x: number): number => x / (1 + Math.exp(-x));

/**
 * Rotates each head of `x` (numHeads * headDim values) in place to `position`, the HF way:
 * element i of a head pairs with element i + headDim/2 ("rotate_half"), both at frequency i:
 *   x'[i]        = x[i] cos - x[i + d/2] sin
 *   x'[i + d/2]  = x[i + d/2] cos + x[i] sin
 */
function applyRope(x: Float64Array, numHeads: number, headDim: number, position: number, inverseFrequencies: Float64Array): void {
  const half = headDim / 2;
  for (let h = 0; h < numHeads; h++) {
    const base = h * headDim;
    for (let i = 0; i < half; i++) {
      const angle = position * inverseFrequencies[i]!;
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      const first = x[base + i]!;
      const second = x[base + i + half]!;
      x[base + i] = first * cos - second * sin;
      x[base + i + half] = second * cos + first * sin;
    }
  }
}

function addInPlace(target: Float64Array, delta: Float64Array): void {
  for (let i = 0; i < target.length; i++) target[i] = target[i]! + delta[i]!;
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

interface LayerWeights {
  inputNorm: Tensor;
  qProj: Tensor;
  kProj: Tensor;
  vProj: Tensor;
  qBias?: Tensor;
  kBias?: Tensor;
  vBias?: Tensor;
  oProj: Tensor;
  oBias?: Tensor;
  postAttentionNorm: Tensor;
  gateProj: Tensor;
  upProj: Tensor;
  downProj: Tensor;
  gateBias?: Tensor;
  upBias?: Tensor;
  downBias?: Tensor;
}

export class ReferenceLlama {
  readonly config: LlamaFamilyConfig;
  private readonly embedTokens: Tensor; // (vocab, hidden)
  private readonly layers: LayerWeights[];
  private readonly finalNorm: Tensor; // (hidden)
  private readonly lmHead: Tensor; // (vocab, hidden); the embedding when tied
  private readonly inverseFrequencies: Float64Array; // (head_dim / 2)

  constructor(config: LlamaFamilyConfig, tensors: Map<string, Tensor>) {
    this.config = config;
    const { hiddenSize: H, intermediateSize: I, numHeads, numKvHeads, headDim, vocabSize } = config;
    const get = (name: string, shape: number[]): Tensor => {
      const tensor = tensors.get(name);
      if (!tensor) throw new Error(`checkpoint has no tensor ${name}`);
      if (tensor.shape.join() !== shape.join()) {
        throw new Error(`${name} has shape [${tensor.shape}], expected [${shape}]`);
      }
      return tensor;
    };
    const optional = (name: string, shape: number[]): Tensor | undefined =>
      (tensors.has(name) ? get(name, shape) : undefined);

    this.embedTokens = get('model.embed_tokens.weight', [vocabSize, H]);
    this.layers = [];
    for (let l = 0; l < config.numLayers; l++) {
      const p = `model.layers.${l}`;
      const layer: LayerWeights = {
        inputNorm: get(`${p}.input_layernorm.weight`, [H]),
        qProj: get(`${p}.self_attn.q_proj.weight`, [numHeads * headDim, H]),
        kProj: get(`${p}.self_attn.k_proj.weight`, [numKvHeads * headDim, H]),
        vProj: get(`${p}.self_attn.v_proj.weight`, [numKvHeads * headDim, H]),
        oProj: get(`${p}.self_attn.o_proj.weight`, [H, numHeads * headDim]),
        postAttentionNorm: get(`${p}.post_attention_layernorm.weight`, [H]),
        gateProj: get(`${p}.mlp.gate_proj.weight`, [I, H]),
        upProj: get(`${p}.mlp.up_proj.weight`, [I, H]),
        downProj: get(`${p}.mlp.down_proj.weight`, [H, I]),
      };
      // Qwen2 always has q/k/v biases; Llama and Mistral have them only with attention_bias.
      const qBias = optional(`${p}.self_attn.q_proj.bias`, [numHeads * headDim]);
      const kBias = optional(`${p}.self_attn.k_proj.bias`, [numKvHeads * headDim]);
      const vBias = optional(`${p}.self_attn.v_proj.bias`, [numKvHeads * headDim]);
      if (config.modelType === 'qwen2' && !(qBias && kBias && vBias)) {
        throw new Error(`Qwen2 checkpoint lacks the q/k/v biases of layer ${l}`);
      }
      if (qBias) layer.qBias = qBias;
      if (kBias) layer.kBias = kBias;
      if (vBias) layer.vBias = vBias;
      // Llama's attention_bias also biases o_proj; mlp_bias biases the three MLP projections.
      const oBias = optional(`${p}.self_attn.o_proj.bias`, [H]);
      if (oBias) layer.oBias = oBias;
      const gateBias = optional(`${p}.mlp.gate_proj.bias`, [I]);
      const upBias = optional(`${p}.mlp.up_proj.bias`, [I]);
      const downBias = optional(`${p}.mlp.down_proj.bias`, [H]);
      if (gateBias) layer.gateBias = gateBias;
      if (upBias) layer.upBias = upBias;
      if (downBias) layer.downBias = downBias;
      this.layers.push(layer);
    }
    this.finalNorm = get('model.norm.weight', [H]);
    this.lmHead = config.tieWordEmbeddings ? this.embedTokens : get('lm_head.weight', [vocabSize, H]);
    this.inverseFrequencies = ropeInverseFrequencies(config);
  }

  /** Loads config.json and the safetensors weights of an HF model directory. */
  // A chunk's queries at one layer (unrotated), its raw keys and values recorded by stream index.
  #project(layer: LayerWeights, xs: Float64Array[], start: number, raw: { k: Map<number, Float64Array>; v: Map<number, Float64Array> }): Float64Array[] {
    const hs = xs.map((x) => rmsNorm(x, layer.inputNorm, this.config.rmsNormEps));
    hs.forEach((h, j) => {
      raw.k.set(start + j, linear(h, layer.kProj, layer.kBias));
      raw.v.set(start + j, linear(h, layer.vProj, layer.vBias));
    });
    return hs.map((h) => linear(h, layer.qProj, layer.qBias));
  }

  // The rest of a decoder layer after attention: the output projection into the residual
  // stream, then the MLP block (in place on x).
  #residual(x: Float64Array, attended: Float64Array, layer: LayerWeights): void {
    const eps = this.config.rmsNormEps;
    addInPlace(x, linear(attended, layer.oProj, layer.oBias));
    const normed = rmsNorm(x, layer.postAttentionNorm, eps);
    const gate = linear(normed, layer.gateProj, layer.gateBias);
    const up = linear(normed, layer.upProj, layer.upBias);
    addInPlace(x, linear(gate.map((g, i) => silu(g) * up[i]!), layer.downProj, layer.downBias));
  }

  static load(dir: string): ReferenceLlama {
    const config = parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
    return new ReferenceLlama(config, readCheckpoint(dir));
  }

  /**
   * Next-token logits at every position of `tokens` (positions 0, 1, ...):
   * result[i] are the logits after reading tokens[0..i].
   *
   * `prefill` only matters for dynamic RoPE scaling, whose frequencies depend on the forward
   * pass: tokens[0..prefill) are read in one pass (HF's prompt), every later token in a pass of
   * its own (HF's decode steps with a KV cache). Default: the whole sequence in one pass.
   *
   * `blocks` computes stored documents as a document cache store does: lengths [prefix, doc 1,
   * doc 2, ...] of the first tokens. Each document is encoded as [prefix; doc]: its tokens sit
   * at positions |prefix|, |prefix|+1, ... and attend (causally) only to the prefix and to
   * their own document. Tokens after the last block attend to everything, with every key moved
   * to its position in the stream (0, 1, ...: documents follow the prefix consecutively).
   *
   * `attention`, when given, sees every layer's softmax probabilities: for token t and query
   * head `head`, p[s] for the keys s = 0..t (0 where masked).
   *
   * `ape` (APE's two-part attention, with `blocks`): a token after the blocks attends to the
   * documents' keys (blocks 1..) and to the rest (prefix, itself and the tokens before it after
   * the blocks) as two softmaxes, the documents' logits divided by T = `temperature`, and mixes
   * the two outputs with weights softmax([S T lse_documents, lse_rest]) (S = `scale`).
   * `attention` then sees the mixture's weights (w_part * p within its part).
   */
  forward(
    tokens: readonly number[],
    options: {
      prefill?: number;
      blocks?: readonly number[];
      attention?: (layer: number, t: number, head: number, p: Float64Array) => void;
      /**
       * Per-layer frames for the tokens after the blocks (CacheFocus after pruning): at layer l
       * such a token attends only to the keys `held` says, every key and the token itself
       * rotated at `position` (the layer's coordinate frame).
       */
      frames?: (layer: number) => { held: (s: number) => boolean; position: (s: number) => number } | undefined;
      ape?: { temperature: number; scale: number };
    } = {},
  ): Float64Array[] {
    const { hiddenSize: H, numHeads, numKvHeads, headDim, rmsNormEps: eps, vocabSize } = this.config;
    const groupSize = numHeads / numKvHeads; // query heads per key/value head
    const scale = 1 / Math.sqrt(headDim);
    const prefill = options.prefill ?? tokens.length;
    // Block of each token (-1 after the blocks) and the position it is encoded at.
    const blockOf = new Int32Array(tokens.length).fill(-1);
    const encodedAt = Int32Array.from(tokens, (_, i) => i);
    let at = 0;
    const prefixLength = options.blocks?.[0] ?? 0;
    for (const [b, length] of (options.blocks ?? []).entries()) {
      for (let i = 0; i < length && at < tokens.length; i++) {
        blockOf[at] = b;
        if (b > 0) encodedAt[at] = prefixLength + i;
        at++;
      }
    }
    const sees = (t: number, s: number): boolean => {
      const b = blockOf[t]!;
      if (b <= 0) return true;
      const o = blockOf[s]!;
      return o === 0 || o === b;
    };
    // Frequencies per position: those of the pass that reads it (sequence length = its end).
    const frequencies = tokens.map((_, position) =>
      this.config.ropeScaling?.ropeType === 'dynamic'
        ? ropeInverseFrequencies(this.config, Math.max(prefill, position + 1))
        : this.inverseFrequencies);

    // Residual stream, one row per token.
    const x = tokens.map((token) => {
      if (!Number.isInteger(token) || token < 0 || token >= vocabSize) throw new RangeError(`token ${token} out of range`);
      return this.embedTokens.data.slice(token * H, (token + 1) * H);
    });

    for (const [l, layer] of this.layers.entries()) {
      const window = this.config.slidingLayers[l] ? this.config.slidingWindow ?? Infinity : Infinity;
      const h = x.map((row) => rmsNorm(row, layer.inputNorm, eps));
      const q = h.map((row) => linear(row, layer.qProj, layer.qBias)); // (T, numHeads * headDim)
      const k = h.map((row) => linear(row, layer.kProj, layer.kBias)); // (T, numKvHeads * headDim)
      const v = h.map((row) => linear(row, layer.vProj, layer.vBias)); // (T, numKvHeads * headDim)
      // Documents' own tokens read with their encoding positions; everything else in the stream's.
      const qEnc = q.map((row) => row.slice());
      const kEnc = k.map((row) => row.slice());
      q.forEach((row, position) => applyRope(row, numHeads, headDim, position, frequencies[position]!));
      k.forEach((row, position) => applyRope(row, numKvHeads, headDim, position, frequencies[position]!));
      qEnc.forEach((row, t) => applyRope(row, numHeads, headDim, encodedAt[t]!, frequencies[t]!));
      kEnc.forEach((row, t) => applyRope(row, numKvHeads, headDim, encodedAt[t]!, frequencies[t]!));
      const frame = options.frames?.(l);
      const qFrame = frame ? q.map((_, t) => q[t]!.slice()) : q;
      const kFrame = frame ? k.map((_, t) => k[t]!.slice()) : k;
      if (frame) {
        // Undo the stream rotation, then rotate at the frame's positions: rotation by a - b.
        qFrame.forEach((row, t) => applyRope(row, numHeads, headDim, frame.position(t) - t, frequencies[t]!));
        kFrame.forEach((row, t) => applyRope(row, numKvHeads, headDim, frame.position(t) - t, frequencies[t]!));
      }

      for (let t = 0; t < tokens.length; t++) {
        const attended = new Float64Array(numHeads * headDim);
        const first = Math.max(0, t - window + 1); // causal, and within the sliding window
        for (let head = 0; head < numHeads; head++) {
          const kvHead = Math.floor(head / groupSize);
          const qOffset = head * headDim;
          const kvOffset = kvHead * headDim;
          const scores: number[] = [];
          for (let s = first; s <= t; s++) {
            if (!sees(t, s) || (frame && blockOf[t] === -1 && !frame.held(s))) {
              scores.push(-Infinity);
              continue;
            }
            const [qt, ks] = blockOf[t]! > 0 ? [qEnc[t]!, kEnc[s]!] : frame && blockOf[t] === -1 ? [qFrame[t]!, kFrame[s]!] : [q[t]!, k[s]!];
            let dot = 0;
            for (let d = 0; d < headDim; d++) dot += qt[qOffset + d]! * ks[kvOffset + d]!;
            scores.push(dot * scale);
          }
          let weights: number[];
          let total = 1;
          if (options.ape && blockOf[t] === -1) {
            // Two softmaxes: the documents' (logits / T) and the rest's, mixed by their lse.
            const { temperature: T, scale: S } = options.ape;
            const isDoc = (s: number) => blockOf[s]! > 0;
            const part = (doc: boolean) => {
              const xs = scores.map((x, i) => (isDoc(first + i) === doc ? (doc ? x / T : x) : -Infinity));
              const m = Math.max(...xs);
              const e = xs.map((x) => (m === -Infinity ? 0 : Math.exp(x - m)));
              const sum = e.reduce((a, b) => a + b, 0);
              return { e, sum, lse: m === -Infinity ? -Infinity : m + Math.log(sum) };
            };
            const doc = part(true);
            const rest = part(false);
            const xd = S * T * doc.lse;
            const top = Math.max(xd, rest.lse);
            const wd = xd === -Infinity ? 0 : Math.exp(xd - top);
            const wr = rest.lse === -Infinity ? 0 : Math.exp(rest.lse - top);
            weights = scores.map((_, i) =>
              isDoc(first + i) ? (doc.sum > 0 ? (wd / (wd + wr)) * (doc.e[i]! / doc.sum) : 0) : rest.sum > 0 ? (wr / (wd + wr)) * (rest.e[i]! / rest.sum) : 0);
          } else {
            const max = Math.max(...scores);
            weights = scores.map((score) => Math.exp(score - max));
            total = weights.reduce((a, b) => a + b, 0);
          }
          const probabilities = options.attention ? new Float64Array(t + 1) : undefined;
          for (let s = first; s <= t; s++) {
            const p = weights[s - first]! / total;
            if (probabilities) probabilities[s] = p;
            for (let d = 0; d < headDim; d++) attended[qOffset + d] = attended[qOffset + d]! + p * v[s]![kvOffset + d]!;
          }
          if (probabilities) options.attention!(l, t, head, probabilities);
        }
        this.#residual(x[t]!, attended, layer);
      }
    }
    return x.map((row) => linear(rmsNorm(row, this.finalNorm, eps), this.lmHead));
  }
  /**
   * A bounded cache read token by token (StreamingLLM, LaCache, H2O): token t attends to what
   * each layer kept after token t-1 plus itself, every key rotated at its rank in stream order
   * (positions by slot), t at the next rank. After token t, `keep(layer, held, scores)` says
   * which stream indices the layer keeps (held: the stream indices it holds, t included, in
   * stream order; scores: the attention each has received so far, summed over the query heads).
   * Returns the logits after each token.
   */
  boundedDecode(tokens: readonly number[], keep: (layer: number, held: number[], scores: Map<number, number>, t: number) => number[]): Float64Array[] {
    const { hiddenSize: H, numHeads, numKvHeads, headDim, rmsNormEps: eps } = this.config;
    const group = numHeads / numKvHeads;
    const scale = 1 / Math.sqrt(headDim);
    // Per layer: raw (unrotated) keys and values by stream index, the held set, the scores.
    const cache = this.layers.map(() => ({ k: new Map<number, Float64Array>(), v: new Map<number, Float64Array>(), held: [] as number[], score: new Map<number, number>() }));
    const out: Float64Array[] = [];
    tokens.forEach((token, t) => {
      const x = this.embedTokens.data.slice(token * H, (token + 1) * H);
      for (const [l, layer] of this.layers.entries()) {
        const c = cache[l]!;
        const h = rmsNorm(x, layer.inputNorm, eps);
        const q = linear(h, layer.qProj, layer.qBias);
        c.k.set(t, linear(h, layer.kProj, layer.kBias));
        c.v.set(t, linear(h, layer.vProj, layer.vBias));
        c.held.push(t);
        c.score.set(t, 0);
        const ordered = [...c.held].sort((a, b) => a - b);
        const rotated = ordered.map((s, rank) => {
          const k = c.k.get(s)!.slice();
          applyRope(k, numKvHeads, headDim, rank, this.inverseFrequencies);
          return k;
        });
        applyRope(q, numHeads, headDim, ordered.length - 1, this.inverseFrequencies);
        const attended = new Float64Array(numHeads * headDim);
        for (let head = 0; head < numHeads; head++) {
          const g = Math.floor(head / group);
          const scores = rotated.map((k) => {
            let dot = 0;
            for (let d = 0; d < headDim; d++) dot += q[head * headDim + d]! * k[g * headDim + d]!;
            return dot * scale;
          });
          const max = Math.max(...scores);
          const w = scores.map((z) => Math.exp(z - max));
          const total = w.reduce((a, b) => a + b, 0);
          ordered.forEach((s, j) => {
            const p = w[j]! / total;
            c.score.set(s, c.score.get(s)! + p);
            const v = c.v.get(s)!;
            for (let d = 0; d < headDim; d++) attended[head * headDim + d] = attended[head * headDim + d]! + p * v[g * headDim + d]!;
          });
        }
        this.#residual(x, attended, layer);
        c.held = [...keep(l, ordered, c.score, t)].sort((a, b) => a - b);
      }
      out.push(linear(rmsNorm(x, this.finalNorm, eps), this.lmHead));
    });
    return out;
  }

  /**
   * Per-head eviction with positions by slot (SnapKV here), in float64: `tokens` fed in chunks
   * of the given sizes; each layer and KV head holds a list of stream indices, the i-th one's
   * key at position i; a chunk's row j, at position (held + j), attends to the held tokens and
   * chunk tokens 0..j (every head of a layer holds as many).
   * After each chunk, for every layer and head, `evict(layer, head, held, scores, count)` gets
   * the held list (the chunk appended) and, per held token, the attention its last `rows` query
   * rows put on it summed over the KV head's query heads, and returns the new held list.
   * Returns each chunk's last-row logits.
   */
  headSetDecode(
    tokens: readonly number[],
    chunks: readonly number[],
    rows: number,
    evict: (layer: number, head: number, held: number[], scores: Float64Array, count: number) => number[],
  ): Float64Array[] {
    const { hiddenSize: H, numHeads, numKvHeads, headDim, rmsNormEps: eps } = this.config;
    const group = numHeads / numKvHeads;
    const scale = 1 / Math.sqrt(headDim);
    const raw = this.layers.map(() => ({ k: new Map<number, Float64Array>(), v: new Map<number, Float64Array>() }));
    const held = this.layers.map(() => Array.from({ length: numKvHeads }, () => [] as number[]));
    const out: Float64Array[] = [];
    let start = 0;
    for (const size of chunks) {
      const ids = tokens.slice(start, start + size);
      const q = ids.length;
      const xs = ids.map((token) => this.embedTokens.data.slice(token * H, (token + 1) * H));
      for (const [l, layer] of this.layers.entries()) {
        const qs = this.#project(layer, xs, start, raw[l]!);
        const attended = ids.map(() => new Float64Array(numHeads * headDim));
        for (let g = 0; g < numKvHeads; g++) {
          const list = [...held[l]![g]!, ...ids.map((_, k) => start + k)];
          const keys = list.map((t, rank) => {
            const k = raw[l]!.k.get(t)!.slice(g * headDim, (g + 1) * headDim);
            applyRope(k, 1, headDim, rank, this.inverseFrequencies);
            return k;
          });
          const scores = new Float64Array(list.length);
          const cached = held[l]![g]!.length;
          for (let hh = 0; hh < group; hh++) {
            const head = g * group + hh;
            for (let j = 0; j < q; j++) {
              const qh = qs[j]!.slice(head * headDim, (head + 1) * headDim);
              applyRope(qh, 1, headDim, cached + j, this.inverseFrequencies);
              const n = cached + j + 1;
              const z = keys.slice(0, n).map((k) => {
                let dot = 0;
                for (let d = 0; d < headDim; d++) dot += qh[d]! * k[d]!;
                return dot * scale;
              });
              const max = Math.max(...z);
              const w = z.map((v) => Math.exp(v - max));
              const total = w.reduce((a, b) => a + b, 0);
              w.forEach((wi, c) => {
                const p = wi / total;
                const v = raw[l]!.v.get(list[c]!)!;
                for (let d = 0; d < headDim; d++) attended[j]![head * headDim + d] = attended[j]![head * headDim + d]! + p * v[g * headDim + d]!;
                if (j >= q - rows) scores[c] = scores[c]! + p;
              });
            }
          }
          held[l]![g] = evict(l, g, list, scores, q);
        }
        xs.forEach((x, j) => {
          this.#residual(x, attended[j]!, layer);
        });
      }
      out.push(linear(rmsNorm(xs[q - 1]!, this.finalNorm, eps), this.lmHead));
      start += q;
    }
    return out;
  }

  /**
   * The Cascading KV cache in float64: `tokens` fed in chunks of `chunk`; each layer and KV head
   * holds what its cache (caches[layer][head]) says, keys at the slots' positions; a chunk's row j
   * attends to every held slot and to chunk tokens 0..j at positions length + k; then each cache
   * inserts the chunk with the EMA scores (1 - beta) * beta^(q-1-j) * p (held slots) and
   * (1 - beta) * beta^(j-k) * p (chunk token k), per query head of the group. Returns each
   * chunk's last-row logits; afterChunk(end) runs once the chunk ending at `end` is inserted.
   */
  cascadingDecode(
    tokens: readonly number[],
    chunk: number,
    beta: number,
    caches: CascadeCache[][],
    capacity: number,
    afterChunk?: (end: number) => void,
  ): Float64Array[] {
    const { hiddenSize: H, numHeads, numKvHeads, headDim, rmsNormEps: eps } = this.config;
    const group = numHeads / numKvHeads;
    const scale = 1 / Math.sqrt(headDim);
    // Raw keys and values per layer by stream index.
    const raw = this.layers.map(() => ({ k: new Map<number, Float64Array>(), v: new Map<number, Float64Array>() }));
    const out: Float64Array[] = [];
    for (let start = 0; start < tokens.length; start += chunk) {
      const ids = tokens.slice(start, start + chunk);
      const q = ids.length;
      const xs = ids.map((token) => this.embedTokens.data.slice(token * H, (token + 1) * H));
      for (const [l, layer] of this.layers.entries()) {
        const qs = this.#project(layer, xs, start, raw[l]!);
        const attended = ids.map(() => new Float64Array(numHeads * headDim));
        for (let g = 0; g < numKvHeads; g++) {
          const cache = caches[l]![g]!;
          const st = cache.state();
          const slots: { token: number; pos: number; slot: number }[] = [];
          for (let s = 0; s < st.tokens.length; s++) if (st.tokens[s]! >= 0) slots.push({ token: st.tokens[s]!, pos: st.positions[s]!, slot: s });
          const held = st.length;
          const keyOf = (token: number, pos: number): Float64Array => {
            const k = raw[l]!.k.get(token)!.slice(g * headDim, (g + 1) * headDim);
            applyRope(k, 1, headDim, pos, this.inverseFrequencies);
            return k;
          };
          const cachedKeys = slots.map((e) => keyOf(e.token, e.pos));
          const chunkKeys = ids.map((_, k) => keyOf(start + k, held + k));
          const slotScores = Array.from({ length: group }, () => new Float64Array(capacity));
          const chunkScores = Array.from({ length: group }, () => new Float64Array(q));
          for (let hh = 0; hh < group; hh++) {
            const head = g * group + hh;
            for (let j = 0; j < q; j++) {
              const qh = qs[j]!.slice(head * headDim, (head + 1) * headDim);
              applyRope(qh, 1, headDim, held + j, this.inverseFrequencies);
              const keys = [...cachedKeys, ...chunkKeys.slice(0, j + 1)];
              const values = [...slots.map((e) => raw[l]!.v.get(e.token)!), ...ids.slice(0, j + 1).map((_, k) => raw[l]!.v.get(start + k)!)];
              const z = keys.map((k) => {
                let dot = 0;
                for (let d = 0; d < headDim; d++) dot += qh[d]! * k[d]!;
                return dot * scale;
              });
              const max = Math.max(...z);
              const w = z.map((v) => Math.exp(v - max));
              const total = w.reduce((a, b) => a + b, 0);
              w.forEach((wi, c) => {
                const p = wi / total;
                const v = values[c]!;
                for (let d = 0; d < headDim; d++) attended[j]![head * headDim + d] = attended[j]![head * headDim + d]! + p * v[g * headDim + d]!;
                if (c < slots.length) slotScores[hh]![slots[c]!.slot] = slotScores[hh]![slots[c]!.slot]! + (1 - beta) * beta ** (q - 1 - j) * p;
                else chunkScores[hh]![c - slots.length] = chunkScores[hh]![c - slots.length]! + (1 - beta) * beta ** (j - (c - slots.length)) * p;
              });
            }
          }
          cache.insert({ tokens: ids.map((_, k) => start + k), slotScores, chunkScores });
        }
        xs.forEach((x, j) => {
          this.#residual(x, attended[j]!, layer);
        });
      }
      out.push(linear(rmsNorm(xs[q - 1]!, this.finalNorm, eps), this.lmHead));
      afterChunk?.(start + q);
    }
    return out;
  }
}

/** What cascadingDecode needs of one layer and KV head's cache (CascadeModel's interface). */
export interface CascadeCache {
  state(): { tokens: Int32Array; positions: Int32Array; length: number };
  insert(chunk: { tokens: ArrayLike<number>; slotScores: readonly ArrayLike<number>[]; chunkScores: readonly ArrayLike<number>[] }): unknown;
}


/** Index of the largest value; ties go to the lowest index. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}
