import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelFormatError } from '../../lib/errors.js';
import { parseModelConfig, readModelConfig, SUPPORTED_ARCHITECTURES } from '../../lib/model/config.js';
import { expectModelFormatError, llama2Config, llama31Config, makeTempDir, mistralConfig, qwen25Config, writeFile, writeJson } from './helpers.js';

const temp = makeTempDir();
afterAll(temp.cleanup);

/** parseModelConfig's error message for `json`, which must be rejected. */
function rejection(json: unknown): string {
  try {
    parseModelConfig(json);
  } catch (error) {
    expect(error).toBeInstanceOf(ModelFormatError);
    expect((error as ModelFormatError).file).toBe('config.json');
    return (error as Error).message;
  }
  throw new Error('config was accepted');
}

describe('parseModelConfig: published checkpoints', () => {
  it('normalises Llama 2 7B', () => {
    expect(parseModelConfig(llama2Config())).toEqual({
      architecture: 'LlamaForCausalLM',
      modelType: 'llama',
      vocabSize: 32000,
      hiddenSize: 4096,
      intermediateSize: 11008,
      numLayers: 32,
      numHeads: 32,
      numKvHeads: 32,
      headDim: 128,
      ropeTheta: 10000,
      ropeScaling: null,
      rmsNormEps: 1e-5,
      maxPositionEmbeddings: 4096,
      tieWordEmbeddings: false,
      qkvBias: false,
      outputBias: false,
      mlpBias: false,
      slidingWindow: null,
      layerAttention: Array(32).fill('full'),
      bosTokenId: 1,
      eosTokenIds: [2],
      padTokenId: null,
      torchDtype: 'float16',
    });
  });

  it('normalises Llama 3.1 8B Instruct: GQA, llama3 rope scaling, three eos ids', () => {
    const config = parseModelConfig(llama31Config());
    expect(config).toMatchObject({ numHeads: 32, numKvHeads: 8, headDim: 128, ropeTheta: 500000, maxPositionEmbeddings: 131072, torchDtype: 'bfloat16' });
    expect(config.ropeScaling).toEqual({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    expect(config.eosTokenIds).toEqual([128001, 128008, 128009]);
    expect(config.bosTokenId).toBe(128000);
  });

  it('normalises Mistral 7B v0.1: every layer slides over 4096 tokens', () => {
    const config = parseModelConfig(mistralConfig());
    expect(config).toMatchObject({ architecture: 'MistralForCausalLM', modelType: 'mistral', numKvHeads: 8, slidingWindow: 4096, qkvBias: false });
    expect(config.layerAttention).toEqual(Array(32).fill('sliding'));
  });

  it('treats Mistral v0.2+ (sliding_window null) as full attention', () => {
    const config = parseModelConfig({ ...mistralConfig(), sliding_window: null });
    expect(config.slidingWindow).toBeNull();
    expect(config.layerAttention.every((a) => a === 'full')).toBe(true);
  });

  it('normalises Qwen2.5 0.5B: q/k/v biases, tied embeddings, no sliding window unless enabled', () => {
    const config = parseModelConfig(qwen25Config());
    expect(config).toMatchObject({
      architecture: 'Qwen2ForCausalLM',
      modelType: 'qwen2',
      headDim: 64,
      numKvHeads: 2,
      qkvBias: true,
      outputBias: false,
      tieWordEmbeddings: true,
      slidingWindow: null,
      ropeTheta: 1e6,
      eosTokenIds: [151645],
    });
  });

  it('applies Qwen2 sliding windows to layers from max_window_layers on, or as layer_types says', () => {
    const small = { ...qwen25Config(), num_hidden_layers: 4, use_sliding_window: true, sliding_window: 1024, max_window_layers: 2 };
    const config = parseModelConfig(small);
    expect(config.slidingWindow).toBe(1024);
    expect(config.layerAttention).toEqual(['full', 'full', 'sliding', 'sliding']);

    const typed = parseModelConfig({ ...small, layer_types: ['sliding_attention', 'full_attention', 'full_attention', 'sliding_attention'] });
    expect(typed.layerAttention).toEqual(['sliding', 'full', 'full', 'sliding']);
  });

  it('reads Qwen2.5 YaRN with an explicit factor (current transformers semantics)', () => {
    const config = parseModelConfig({ ...qwen25Config(), rope_scaling: { factor: 4.0, original_max_position_embeddings: 32768, type: 'yarn' } });
    expect(config.ropeScaling).toEqual({
      type: 'yarn',
      factor: 4,
      originalMaxPositionEmbeddings: 32768,
      betaFast: 32,
      betaSlow: 1,
      attentionFactor: null,
      mscale: null,
      mscaleAllDim: null,
      truncate: true,
    });
  });

  it('derives the YaRN factor from the context lengths when none is given', () => {
    const config = parseModelConfig({ ...qwen25Config(), max_position_embeddings: 131072, rope_scaling: { rope_type: 'yarn', original_max_position_embeddings: 32768 } });
    expect(config.ropeScaling).toMatchObject({ type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768 });
  });

  it('reads linear and dynamic scaling, and treats rope_type "default" as none', () => {
    expect(parseModelConfig({ ...llama2Config(), rope_scaling: { type: 'linear', factor: 2.0 } }).ropeScaling).toEqual({ type: 'linear', factor: 2 });
    expect(parseModelConfig({ ...llama2Config(), rope_scaling: { rope_type: 'dynamic', factor: 4 } }).ropeScaling).toEqual({ type: 'dynamic', factor: 4 });
    expect(parseModelConfig({ ...llama2Config(), rope_scaling: { rope_type: 'default' } }).ropeScaling).toBeNull();
  });

  it('reads the transformers 5 layout: rope_parameters holding rope_theta, and "dtype"', () => {
    const json: Record<string, unknown> = { ...llama31Config(), dtype: 'bfloat16' };
    delete json['rope_theta'];
    delete json['rope_scaling'];
    delete json['torch_dtype'];
    json['rope_parameters'] = { rope_type: 'llama3', rope_theta: 500000.0, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
    const config = parseModelConfig(json);
    expect(config.ropeTheta).toBe(500000);
    expect(config.ropeScaling?.type).toBe('llama3');
    expect(config.torchDtype).toBe('bfloat16');
  });

  it('uses an explicit head_dim even when hidden_size is not heads * head_dim (Mistral Nemo)', () => {
    const config = parseModelConfig({ ...mistralConfig(), hidden_size: 5120, num_attention_heads: 32, head_dim: 128, sliding_window: null });
    expect(config.headDim).toBe(128);
  });

  it('fills omitted optional fields with the transformers defaults of the family', () => {
    const minimal = { architectures: ['LlamaForCausalLM'], vocab_size: 100, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4 };
    expect(parseModelConfig(minimal)).toMatchObject({
      numKvHeads: 4,
      ropeTheta: 10000,
      rmsNormEps: 1e-6,
      maxPositionEmbeddings: 2048,
      tieWordEmbeddings: false,
      bosTokenId: 1,
      eosTokenIds: [2],
      torchDtype: null,
    });
    const qwen = parseModelConfig({ ...minimal, architectures: ['Qwen2ForCausalLM'], num_attention_heads: 32, hidden_size: 256 });
    expect(qwen).toMatchObject({ numKvHeads: 32, maxPositionEmbeddings: 32768, bosTokenId: null, eosTokenIds: [] });
  });

  it('sets attention and MLP biases from Llama\'s attention_bias and mlp_bias', () => {
    const config = parseModelConfig({ ...llama31Config(), attention_bias: true, mlp_bias: true });
    expect(config).toMatchObject({ qkvBias: true, outputBias: true, mlpBias: true });
  });

  it('reads pad_token_id, and takes the -1 of early Llama conversions as none', () => {
    expect(parseModelConfig({ ...llama2Config(), pad_token_id: 0 }).padTokenId).toBe(0);
    expect(parseModelConfig({ ...llama2Config(), pad_token_id: -1 }).padTokenId).toBeNull();
  });

  it('takes hidden_act "swish" as SiLU, as transformers does', () => {
    expect(parseModelConfig({ ...llama2Config(), hidden_act: 'swish' }).hiddenSize).toBe(4096);
  });

  it('accepts attention_bias and mlp_bias false on Mistral and Qwen2, and a dynamic original length equal to max_position_embeddings', () => {
    expect(parseModelConfig({ ...mistralConfig(), attention_bias: false, mlp_bias: false }).qkvBias).toBe(false);
    expect(parseModelConfig({ ...qwen25Config(), attention_bias: false }).qkvBias).toBe(true);
    const rope = { type: 'dynamic', factor: 2, original_max_position_embeddings: 4096 };
    expect(parseModelConfig({ ...llama2Config(), rope_scaling: rope }).ropeScaling).toEqual({ type: 'dynamic', factor: 2 });
  });

  it('finds the architecture from model_type when architectures is absent', () => {
    const json: Record<string, unknown> = { ...mistralConfig() };
    delete json['architectures'];
    expect(parseModelConfig(json).architecture).toBe('MistralForCausalLM');
  });
});

describe('parseModelConfig: rejected configs', () => {
  const supported = SUPPORTED_ARCHITECTURES.join(', ');
  const without = (field: string): Record<string, unknown> => {
    const json = llama2Config();
    delete json[field];
    return json;
  };
  const cases: Array<[string, unknown, string]> = [
    ['a missing hidden_size', without('hidden_size'), 'config.json: hidden_size is missing'],
    ['a missing vocab_size', without('vocab_size'), 'config.json: vocab_size is missing'],
    ['a string where a size belongs', { ...llama2Config(), num_hidden_layers: '32' }, 'config.json: num_hidden_layers must be a positive integer, got "32"'],
    ['a zero size', { ...llama2Config(), intermediate_size: 0 }, 'config.json: intermediate_size must be a positive integer, got 0'],
    ['a negative size', { ...llama2Config(), vocab_size: -5 }, 'config.json: vocab_size must be a positive integer, got -5'],
    ['a fractional head count', { ...llama2Config(), num_attention_heads: 2.5 }, 'config.json: num_attention_heads must be a positive integer, got 2.5'],
    ['kv heads that do not divide the heads', { ...llama2Config(), hidden_size: 512, num_attention_heads: 8, num_key_value_heads: 3 },
      'config.json: num_key_value_heads (3) must divide num_attention_heads (8)'],
    ['hidden_size not divisible by the heads', { ...llama2Config(), hidden_size: 4100 },
      'config.json: hidden_size (4100) must be divisible by num_attention_heads (32) when head_dim is not given'],
    ['an odd head dimension', { ...llama2Config(), head_dim: 63 }, 'config.json: head_dim gives head dimension 63, which must be even for rotary embeddings'],
    ['an unsupported architecture', { ...llama2Config(), architectures: ['MixtralForCausalLM'], model_type: 'mixtral' },
      `config.json: architectures ["MixtralForCausalLM"] is not supported; supported: ${supported}`],
    ['an unsupported model_type without architectures', { ...without('architectures'), model_type: 'gpt2' }, `config.json: model_type "gpt2" is not supported; supported: ${supported}`],
    ['neither architectures nor model_type', (() => {
      const json = without('architectures');
      delete json['model_type'];
      return json;
    })(), `config.json: architectures is missing; expected one of ${supported}`],
    ['a model_type that contradicts architectures', { ...llama2Config(), model_type: 'qwen2' },
      'config.json: model_type "qwen2" does not match architectures (LlamaForCausalLM has model_type "llama")'],
    ['an architectures field that is not a list', { ...llama2Config(), architectures: 'LlamaForCausalLM' }, 'config.json: architectures must be a non-empty list of class names, got "LlamaForCausalLM"'],
    ['another activation', { ...llama2Config(), hidden_act: 'gelu' }, 'config.json: hidden_act "gelu" is not supported; LlamaForCausalLM uses "silu"'],
    ['a quantized checkpoint', { ...llama2Config(), quantization_config: { quant_method: 'bitsandbytes' } },
      'config.json: quantization_config ("bitsandbytes") is not supported; kvfocus loads unquantized F32/F16/BF16 weights'],
    ['a negative rms_norm_eps', { ...llama2Config(), rms_norm_eps: -1e-5 }, 'config.json: rms_norm_eps must be a positive number, got -0.00001'],
    ['an rms_norm_eps of 1 or more', { ...llama2Config(), rms_norm_eps: 2 }, 'config.json: rms_norm_eps (2) must be a small positive number'],
    ['a rope_theta of 1 or less', { ...llama2Config(), rope_theta: 1 }, 'config.json: rope_theta (1) must be greater than 1'],
    ['an unsupported rope type', { ...llama2Config(), rope_scaling: { type: 'longrope', long_factor: [], short_factor: [] } },
      'config.json: rope_scaling.type "longrope" is not supported; supported: default, linear, dynamic, llama3, yarn'],
    ['llama3 scaling without low_freq_factor', { ...llama31Config(), rope_scaling: { rope_type: 'llama3', factor: 8, high_freq_factor: 4, original_max_position_embeddings: 8192 } },
      'config.json: rope_scaling.low_freq_factor is missing'],
    ['llama3 scaling with high_freq_factor <= low_freq_factor', { ...llama31Config(), rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 4, original_max_position_embeddings: 8192 } },
      'config.json: rope_scaling.high_freq_factor (4) must be greater than low_freq_factor (4)'],
    ['a scaling factor below 1', { ...llama2Config(), rope_scaling: { type: 'linear', factor: 0.5 } }, 'config.json: rope_scaling.factor (0.5) must be >= 1'],
    ['a scaling factor that is not a number', { ...llama2Config(), rope_scaling: { type: 'dynamic', factor: 'big' } }, 'config.json: rope_scaling.factor must be a positive number, got "big"'],
    ['yarn with beta_fast below beta_slow', { ...qwen25Config(), rope_scaling: { type: 'yarn', factor: 4, beta_fast: 1, beta_slow: 2 } },
      'config.json: rope_scaling.beta_fast (1) must not be below beta_slow (2)'],
    ['rope_scaling that is not an object', { ...llama2Config(), rope_scaling: 'linear' }, 'config.json: rope_scaling must be an object, got "linear"'],
    ['partial rotary embeddings', { ...llama2Config(), partial_rotary_factor: 0.5 }, 'config.json: partial_rotary_factor (0.5) is not supported; kvfocus rotates the whole head'],
    ['an eos id outside the vocabulary', { ...llama2Config(), eos_token_id: 32000 }, 'config.json: eos_token_id (32000) must be below vocab_size (32000)'],
    ['a bad id in an eos list', { ...llama31Config(), eos_token_id: [128001, 'x'] }, 'config.json: eos_token_id[1] must be a token id (a non-negative integer), got "x"'],
    ['an unsupported torch_dtype', { ...llama2Config(), torch_dtype: 'float64' }, 'config.json: torch_dtype "float64" is not supported; expected "float32", "float16" or "bfloat16"'],
    ['a non-boolean tie_word_embeddings', { ...llama2Config(), tie_word_embeddings: 'yes' }, 'config.json: tie_word_embeddings must be true or false, got "yes"'],
    ['a negative sliding window', { ...mistralConfig(), sliding_window: -1 }, 'config.json: sliding_window must be a positive integer, got -1'],
    ['layer_types of the wrong length', { ...qwen25Config(), use_sliding_window: true, layer_types: ['full_attention'] },
      'config.json: layer_types must list one attention type per layer (24), got ["full_attention"]'],
    ['a config that is not an object', [1, 2], 'config.json: must be a JSON object, got [1,2]'],
    ['attention_bias on Mistral', { ...mistralConfig(), attention_bias: true },
      'config.json: attention_bias (true) is not supported for MistralForCausalLM, whose projections have fixed biases'],
    ['mlp_bias on Qwen2', { ...qwen25Config(), mlp_bias: true },
      'config.json: mlp_bias (true) is not supported for Qwen2ForCausalLM, whose projections have fixed biases'],
    ['dynamic scaling from another original length', { ...llama2Config(), rope_scaling: { type: 'dynamic', factor: 2, original_max_position_embeddings: 2048 } },
      'config.json: rope_scaling.original_max_position_embeddings (2048) is not supported with dynamic scaling unless it equals max_position_embeddings (4096)'],
  ];

  it.each(cases)('rejects %s', (_what, json, message) => {
    expect(rejection(json)).toBe(message);
  });
});

describe('readModelConfig', () => {
  it('reads config.json from a model folder', async () => {
    const dir = path.join(temp.dir, 'ok');
    mkdirSync(dir);
    writeJson(dir, 'config.json', llama31Config());
    expect((await readModelConfig(dir)).numKvHeads).toBe(8);
  });

  it('names the file in errors about its content', async () => {
    const dir = path.join(temp.dir, 'bad');
    mkdirSync(dir);
    const file = writeJson(dir, 'config.json', { ...llama2Config(), num_key_value_heads: 5 });
    await expectModelFormatError(() => readModelConfig(dir), file, 'config.json: num_key_value_heads (5) must divide num_attention_heads (32)');
  });

  it('rejects invalid JSON and a missing file', async () => {
    const dir = path.join(temp.dir, 'broken');
    mkdirSync(dir);
    const file = path.join(dir, 'config.json');
    await expectModelFormatError(() => readModelConfig(dir), file, `config.json: file not found at ${file}`);
    writeFile(dir, 'config.json', '{"vocab_size": 32000,,}');
    await expectModelFormatError(() => readModelConfig(dir), file, /^config\.json: invalid JSON \(/);
  });
});
