// Builders for the model files the tests write: temporary folders, safetensors files (well formed
// or deliberately broken), and config.json contents of real checkpoints.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { expect } from 'vitest';
import { ModelFormatError } from '../../lib/errors.js';

/** A fresh temporary folder; call the returned cleanup in afterAll/afterEach. */
export function makeTempDir(prefix = 'kvfocus-model-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, U8: 1, I64: 8 };

export interface TensorSpec {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Raw bytes; default: a counting pattern of the right length. */
  readonly data?: Uint8Array;
}

/** The bytes of a safetensors file holding `tensors` back to back, in order. */
export function safetensorsBytes(
  tensors: readonly TensorSpec[],
  options: { metadata?: Record<string, string>; align?: number } = {},
): Buffer {
  const header: Record<string, unknown> = {};
  if (options.metadata) header['__metadata__'] = options.metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1) * (DTYPE_BYTES[t.dtype] ?? 1);
    const data = t.data ?? Uint8Array.from({ length: size }, (_, i) => (i * 7 + t.name.length) & 0xff);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + data.length] };
    chunks.push(data);
    offset += data.length;
  }
  return assembleSafetensors(JSON.stringify(header), Buffer.concat(chunks), options.align ?? 8);
}

/** [u64 length][header padded with spaces to `align`][data]: any header text, valid or not. */
export function assembleSafetensors(headerText: string | Uint8Array, data: Uint8Array, align = 1): Buffer {
  let header = typeof headerText === 'string' ? Buffer.from(headerText, 'utf8') : Buffer.from(headerText);
  const pad = (align - ((8 + header.length) % align)) % align;
  header = Buffer.concat([header, Buffer.alloc(pad, 0x20)]);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([length, header, data]);
}

export function writeFile(dir: string, name: string, contents: string | Uint8Array): string {
  const file = path.join(dir, name);
  writeFileSync(file, contents);
  return file;
}

export function writeJson(dir: string, name: string, value: unknown): string {
  return writeFile(dir, name, JSON.stringify(value, null, 2));
}

/** Runs `action` and checks it throws a ModelFormatError naming `file` whose message matches. */
export async function expectModelFormatError(action: () => unknown, file: string, message: RegExp | string): Promise<ModelFormatError> {
  let caught: unknown;
  try {
    await action();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(ModelFormatError);
  const error = caught as ModelFormatError;
  expect(error.code).toBe('KVFOCUS_MODEL_FORMAT');
  expect(error.file).toBe(file);
  if (typeof message === 'string') expect(error.message).toBe(message);
  else expect(error.message).toMatch(message);
  return error;
}

/** config.json of meta-llama/Llama-2-7b-hf (as published). */
export function llama2Config(): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: 4096,
    initializer_range: 0.02,
    intermediate_size: 11008,
    max_position_embeddings: 4096,
    model_type: 'llama',
    num_attention_heads: 32,
    num_hidden_layers: 32,
    num_key_value_heads: 32,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    tie_word_embeddings: false,
    torch_dtype: 'float16',
    transformers_version: '4.31.0.dev0',
    use_cache: true,
    vocab_size: 32000,
  };
}

/** config.json of meta-llama/Llama-3.1-8B-Instruct (as published). */
export function llama31Config(): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 128000,
    eos_token_id: [128001, 128008, 128009],
    hidden_act: 'silu',
    hidden_size: 4096,
    initializer_range: 0.02,
    intermediate_size: 14336,
    max_position_embeddings: 131072,
    mlp_bias: false,
    model_type: 'llama',
    num_attention_heads: 32,
    num_hidden_layers: 32,
    num_key_value_heads: 8,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
    rope_theta: 500000.0,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.42.3',
    use_cache: true,
    vocab_size: 128256,
  };
}

/** config.json of mistralai/Mistral-7B-v0.1 (as published). */
export function mistralConfig(): Record<string, unknown> {
  return {
    architectures: ['MistralForCausalLM'],
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: 4096,
    initializer_range: 0.02,
    intermediate_size: 14336,
    max_position_embeddings: 32768,
    model_type: 'mistral',
    num_attention_heads: 32,
    num_hidden_layers: 32,
    num_key_value_heads: 8,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    sliding_window: 4096,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.34.0.dev0',
    use_cache: true,
    vocab_size: 32000,
  };
}

/** config.json of Qwen/Qwen2.5-0.5B-Instruct (as published). */
export function qwen25Config(): Record<string, unknown> {
  return {
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: 'silu',
    hidden_size: 896,
    initializer_range: 0.02,
    intermediate_size: 4864,
    max_position_embeddings: 32768,
    max_window_layers: 21,
    model_type: 'qwen2',
    num_attention_heads: 14,
    num_hidden_layers: 24,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    sliding_window: 32768,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    transformers_version: '4.43.1',
    use_cache: true,
    use_sliding_window: false,
    vocab_size: 151936,
  };
}

/** A tiny Llama-architecture config for checkpoint tests. */
export function tinyLlamaConfig(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: 16,
    hidden_size: 8,
    intermediate_size: 12,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    ...overrides,
  };
}
