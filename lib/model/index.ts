// The model-format layer: everything kvfocus reads from a Hugging Face model folder, validated
// before any of it reaches native code.

export {
  MAX_HEADER_BYTES,
  SAFETENSORS_DTYPE_BYTES,
  SafetensorsIndex,
  openSafetensors,
  openSafetensorsFile,
  openShardedSafetensors,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  type SafetensorsDtype,
  type SafetensorsFile,
  type TensorInfo,
} from './safetensors.js';
export {
  SUPPORTED_ARCHITECTURES,
  parseModelConfig,
  readModelConfig,
  type Architecture,
  type LayerAttention,
  type ModelConfig,
  type ModelType,
  type RopeScaling,
  type RopeScalingType,
  type TorchDtype,
} from './config.js';
export {
  WEIGHT_DTYPES,
  checkCheckpointTensors,
  expectedTensors,
  type CheckpointCheck,
  type ExpectedTensor,
  type TensorDescription,
} from './weights.js';
export { attentionScaling, invFreq, ropeParameters, type RopeConfig, type RopeParameters } from './rope.js';
export {
  StreamDecoder,
  Tokenizer,
  type ChatMessage,
  type ChatTemplateOptions,
  type DecodeOptions,
  type EncodeOptions,
  type TokenizerSource,
} from './tokenizer.js';
