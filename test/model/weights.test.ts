import { afterAll, describe, expect, it } from 'vitest';
import { parseModelConfig } from '../../lib/model/config.js';
import { openSafetensors } from '../../lib/model/safetensors.js';
import { checkCheckpointTensors, expectedTensors, type ExpectedTensor } from '../../lib/model/weights.js';
import { expectModelFormatError, makeTempDir, qwen25Config, safetensorsBytes, tinyLlamaConfig, writeFile, type TensorSpec } from './helpers.js';

const temp = makeTempDir();
afterAll(temp.cleanup);

const tiny = parseModelConfig(tinyLlamaConfig()); // vocab 16, hidden 8, inter 12, 2 layers, 2 heads of 4, 1 kv head

function specs(tensors: readonly ExpectedTensor[], dtype = 'BF16'): TensorSpec[] {
  return tensors.map((t) => ({ name: t.name, dtype, shape: t.shape }));
}

describe('expectedTensors', () => {
  it('lists a Llama layer with HF names and [out, in] shapes', () => {
    const tensors = expectedTensors(tiny);
    expect(tensors.length).toBe(1 + 2 * 9 + 2);
    expect(tensors.slice(0, 10)).toEqual([
      { name: 'model.embed_tokens.weight', shape: [16, 8] },
      { name: 'model.layers.0.input_layernorm.weight', shape: [8] },
      { name: 'model.layers.0.self_attn.q_proj.weight', shape: [8, 8] },
      { name: 'model.layers.0.self_attn.k_proj.weight', shape: [4, 8] },
      { name: 'model.layers.0.self_attn.v_proj.weight', shape: [4, 8] },
      { name: 'model.layers.0.self_attn.o_proj.weight', shape: [8, 8] },
      { name: 'model.layers.0.post_attention_layernorm.weight', shape: [8] },
      { name: 'model.layers.0.mlp.gate_proj.weight', shape: [12, 8] },
      { name: 'model.layers.0.mlp.up_proj.weight', shape: [12, 8] },
      { name: 'model.layers.0.mlp.down_proj.weight', shape: [8, 12] },
    ]);
    expect(tensors.slice(-2)).toEqual([
      { name: 'model.norm.weight', shape: [8] },
      { name: 'lm_head.weight', shape: [16, 8] },
    ]);
  });

  it('adds Qwen2\'s q/k/v biases and leaves out lm_head when embeddings are tied', () => {
    const qwen = parseModelConfig({ ...qwen25Config(), num_hidden_layers: 1 });
    const names = expectedTensors(qwen).map((t) => t.name);
    expect(names).toContain('model.layers.0.self_attn.q_proj.bias');
    expect(expectedTensors(qwen).find((t) => t.name === 'model.layers.0.self_attn.k_proj.bias')?.shape).toEqual([128]);
    expect(names).not.toContain('model.layers.0.self_attn.o_proj.bias');
    expect(names).not.toContain('lm_head.weight');
  });

  it('adds o_proj and MLP biases for Llama with attention_bias and mlp_bias', () => {
    const names = expectedTensors(parseModelConfig(tinyLlamaConfig({ attention_bias: true, mlp_bias: true }))).map((t) => t.name);
    expect(names).toEqual(expect.arrayContaining([
      'model.layers.1.self_attn.o_proj.bias',
      'model.layers.1.mlp.gate_proj.bias',
      'model.layers.1.mlp.down_proj.bias',
    ]));
  });
});

describe('checkCheckpointTensors', () => {
  it('accepts a checkpoint written with the expected tensors and reports extra ones', async () => {
    const extra = { name: 'model.layers.0.self_attn.rotary_emb.inv_freq', dtype: 'F32', shape: [2] };
    const file = writeFile(temp.dir, 'ok.safetensors', safetensorsBytes([...specs(expectedTensors(tiny)), extra]));
    const result = checkCheckpointTensors(tiny, await openSafetensors(file), file);
    expect(result.unexpected).toEqual([extra.name]);
  });

  it('names a missing tensor and its expected shape', async () => {
    const tensors = specs(expectedTensors(tiny)).filter((t) => t.name !== 'model.layers.1.mlp.up_proj.weight');
    const file = writeFile(temp.dir, 'missing.safetensors', safetensorsBytes(tensors));
    const index = await openSafetensors(file);
    await expectModelFormatError(() => checkCheckpointTensors(tiny, index, file), file,
      'missing.safetensors: does not match config.json (LlamaForCausalLM, 2 layers): missing tensor model.layers.1.mlp.up_proj.weight (expected shape [12, 8])');
  });

  it('names a tensor with the wrong shape', async () => {
    const tensors = specs(expectedTensors(tiny)).map((t) => (t.name === 'model.layers.0.self_attn.k_proj.weight' ? { ...t, shape: [8, 8] } : t));
    const file = writeFile(temp.dir, 'shape.safetensors', safetensorsBytes(tensors));
    await expectModelFormatError(() => openSafetensors(file).then((index) => checkCheckpointTensors(tiny, index, file)), file,
      /tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape \[8, 8\], expected \[4, 8\]$/);
  });

  it('rejects weights stored as integers', () => {
    const tensors = expectedTensors(tiny).map((t) => ({ ...t, dtype: t.name === 'model.norm.weight' ? 'I32' : 'F16' }));
    expect(() => checkCheckpointTensors(tiny, tensors)).toThrow(/tensor model\.norm\.weight has dtype I32; weights must be F32, F16, BF16/);
  });

  it('lists the first five problems and counts the rest', () => {
    expect(() => checkCheckpointTensors(tiny, [])).toThrow(
      /^model\.safetensors: does not match config\.json \(LlamaForCausalLM, 2 layers\): missing tensor model\.embed_tokens\.weight \(expected shape \[16, 8\]\);( [^;]+;){4} and 16 more$/,
    );
  });

  it('requires lm_head.weight unless embeddings are tied, and checks it when a tied checkpoint has one', () => {
    const untied = expectedTensors(tiny).map((t) => ({ ...t, dtype: 'F32' }));
    expect(() => checkCheckpointTensors(tiny, untied.filter((t) => t.name !== 'lm_head.weight'))).toThrow(/missing tensor lm_head\.weight \(expected shape \[16, 8\]\)/);

    const tied = parseModelConfig(tinyLlamaConfig({ tie_word_embeddings: true }));
    const withoutHead = untied.filter((t) => t.name !== 'lm_head.weight');
    expect(checkCheckpointTensors(tied, withoutHead).unexpected).toEqual([]);
    expect(checkCheckpointTensors(tied, untied).unexpected).toEqual([]);
    const badHead = [...withoutHead, { name: 'lm_head.weight', dtype: 'F32', shape: [8, 16] }];
    expect(() => checkCheckpointTensors(tied, badHead)).toThrow(/tensor lm_head\.weight has shape \[8, 16\], expected \[16, 8\]/);
  });
});
