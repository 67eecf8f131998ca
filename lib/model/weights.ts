// The tensors a Llama/Mistral/Qwen2 checkpoint must hold, by their Hugging Face names, and a
// check of a checkpoint's tensor list against them. Shapes are PyTorch nn.Linear layout:
// [out_features, in_features].

import * as path from 'node:path';
import { ModelFormatError } from '../errors.js';
import type { ModelConfig } from './config.js';

export interface ExpectedTensor {
  readonly name: string;
  readonly shape: readonly number[];
}

/** Anything with a name, a shape and a dtype: a safetensors TensorInfo, for example. */
export interface TensorDescription {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: string;
}

export const WEIGHT_DTYPES: readonly string[] = ['F32', 'F16', 'BF16'];

/** Every tensor the forward pass reads, in load order. lm_head is left out when tied. */
export function expectedTensors(config: ModelConfig): ExpectedTensor[] {
  const { hiddenSize: hidden, intermediateSize: inter, vocabSize: vocab, headDim } = config;
  const qDim = config.numHeads * headDim;
  const kvDim = config.numKvHeads * headDim;
  const tensors: ExpectedTensor[] = [{ name: 'model.embed_tokens.weight', shape: [vocab, hidden] }];
  for (let layer = 0; layer < config.numLayers; layer++) {
    const p = `model.layers.${layer}`;
    tensors.push({ name: `${p}.input_layernorm.weight`, shape: [hidden] });
    tensors.push({ name: `${p}.self_attn.q_proj.weight`, shape: [qDim, hidden] });
    tensors.push({ name: `${p}.self_attn.k_proj.weight`, shape: [kvDim, hidden] });
    tensors.push({ name: `${p}.self_attn.v_proj.weight`, shape: [kvDim, hidden] });
    if (config.qkvBias) {
      tensors.push({ name: `${p}.self_attn.q_proj.bias`, shape: [qDim] });
      tensors.push({ name: `${p}.self_attn.k_proj.bias`, shape: [kvDim] });
      tensors.push({ name: `${p}.self_attn.v_proj.bias`, shape: [kvDim] });
    }
    tensors.push({ name: `${p}.self_attn.o_proj.weight`, shape: [hidden, qDim] });
    if (config.outputBias) tensors.push({ name: `${p}.self_attn.o_proj.bias`, shape: [hidden] });
    tensors.push({ name: `${p}.post_attention_layernorm.weight`, shape: [hidden] });
    tensors.push({ name: `${p}.mlp.gate_proj.weight`, shape: [inter, hidden] });
    tensors.push({ name: `${p}.mlp.up_proj.weight`, shape: [inter, hidden] });
    tensors.push({ name: `${p}.mlp.down_proj.weight`, shape: [hidden, inter] });
    if (config.mlpBias) {
      tensors.push({ name: `${p}.mlp.gate_proj.bias`, shape: [inter] });
      tensors.push({ name: `${p}.mlp.up_proj.bias`, shape: [inter] });
      tensors.push({ name: `${p}.mlp.down_proj.bias`, shape: [hidden] });
    }
  }
  tensors.push({ name: 'model.norm.weight', shape: [hidden] });
  if (!config.tieWordEmbeddings) tensors.push({ name: 'lm_head.weight', shape: [vocab, hidden] });
  return tensors;
}

export interface CheckpointCheck {
  /** Tensors the checkpoint holds that the model does not read, e.g. the rotary inv_freq
   * buffers old Llama checkpoints saved, or lm_head.weight next to tied embeddings. */
  readonly unexpected: readonly string[];
}

const MAX_LISTED_PROBLEMS = 5;
const MAX_ITEMISED_MISSING_LAYERS = 16;

/**
 * Checks that the checkpoint holds every tensor `config` needs, with the right shape and a float
 * dtype. Throws one ModelFormatError listing the first few problems by tensor name; `source`
 * names the checkpoint (a .safetensors file or the shard index) in the message.
 */
export function checkCheckpointTensors(
  config: ModelConfig,
  tensors: Iterable<TensorDescription>,
  source = 'model.safetensors',
): CheckpointCheck {
  const byName = new Map<string, TensorDescription>();
  for (const tensor of tensors) byName.set(tensor.name, tensor);

  // Layers are counted against the tensors present before the expected list is built: from
  // num_hidden_layers: 1e6 it would hold millions of names, allocated before the first mismatch.
  // A few layers short still get the itemised list below.
  const layers = new Set<string>();
  for (const name of byName.keys()) {
    const match = /^model\.layers\.(\d+)\./.exec(name);
    if (match) layers.add(match[1]!);
  }
  if (config.numLayers > layers.size + MAX_ITEMISED_MISSING_LAYERS) {
    throw new ModelFormatError(
      `${path.basename(source)}: does not match config.json (${config.architecture}, ${config.numLayers} layers): the checkpoint holds tensors of ${layers.size} layers`,
      source,
    );
  }

  const problems: string[] = [];
  const expected = expectedTensors(config);
  // A tied checkpoint may still carry lm_head.weight; it must then at least have the right shape.
  if (config.tieWordEmbeddings && byName.has('lm_head.weight')) {
    expected.push({ name: 'lm_head.weight', shape: [config.vocabSize, config.hiddenSize] });
  }
  const used = new Set<string>();
  for (const { name, shape } of expected) {
    const found = byName.get(name);
    const wanted = `[${shape.join(', ')}]`;
    if (found === undefined) {
      problems.push(`missing tensor ${name} (expected shape ${wanted})`);
      continue;
    }
    used.add(name);
    if (found.shape.length !== shape.length || found.shape.some((d, i) => d !== shape[i])) {
      problems.push(`tensor ${name} has shape [${found.shape.join(', ')}], expected ${wanted}`);
    } else if (!WEIGHT_DTYPES.includes(found.dtype)) {
      problems.push(`tensor ${name} has dtype ${found.dtype}; weights must be ${WEIGHT_DTYPES.join(', ')}`);
    }
  }
  if (problems.length > 0) {
    const listed = problems.slice(0, MAX_LISTED_PROBLEMS).join('; ');
    const more = problems.length > MAX_LISTED_PROBLEMS ? `; and ${problems.length - MAX_LISTED_PROBLEMS} more` : '';
    const what = `${config.architecture}, ${config.numLayers} layers`;
    throw new ModelFormatError(`${path.basename(source)}: does not match config.json (${what}): ${listed}${more}`, source);
  }
  const unexpected = [...byName.keys()].filter((name) => !used.has(name));
  return { unexpected };
}
