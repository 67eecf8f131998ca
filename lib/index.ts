// kvfocus: long-context LLM inference for Node.js over a C++/CUDA core.
import type { DeviceName, NativeDeviceInfo } from './binding.js';
import { addon } from './loader.js';

export * from './errors.js';
export {
  contextLength,
  defaultKvCacheTokens,
  defaultModelDir,
  loadDefaultModel,
  loadModel,
  Model,
  type DefaultModelVariant,
  type LoadModelOptions,
  type ModelStats,
  type Prompt,
  type SequenceOptions,
} from './llm/model.js';
export { ContextStore, StoreWarning, type OpenStoreOptions, type PutManyOptions, type RemoteStoreOptions, type StoreContent, type StoreDocument, type StoreRemoteStats, type StoreStats, type StoreTierStats } from './store/context-store.js';
export { STORE_ENTRY_VERSION, entryKey, type StoreEntryHeader } from './store/entry.js';
export { Sequence, type AppendOptions, type LayerLayout, type SequenceInput, type SequenceLayout } from './llm/sequence.js';
export { policies, policyNames, type ApePolicy, type CachePolicy, type CacheFocusPolicy, type CascadingPolicy, type ConcatPolicy, type FullAttentionPolicy, type H2OPolicy, type HeadReduction, type KeepRule, type LaCachePolicy, type ParallelWindowsPolicy, type SnapKVPolicy, type StreamingPolicy } from './policies/index.js';
export type { GenerateOptions, SamplingOptions } from './llm/options.js';
export type { GenerationStream, GeneratedToken, GenerationResult, FinishReason, LogitsRows } from './llm/scheduler.js';
export * from './model/index.js';
/** The multi-document question-answering task the embedded model is trained and measured on. */
export * as multidocQa from './task/multidoc-qa.js';
export { type KeyMove, KeyMoves, ops, type RerotatePagesOptions, ropeInvFreq, type RopeLayout, type SlotRange } from './ops.js';
export { Tensor, type DType, type DeviceName, type FloatDType, type TensorData, type TensorValues, dtypeBytes } from './tensor.js';

export interface BuildInfo {
  /** Package version the binary was built from. */
  version: string;
  /** Whether the loaded binary has the CUDA backend compiled in. */
  cuda: boolean;
  /** CUDA devices this process can use (empty without a GPU or driver). */
  devices: { name: string; memoryBytes: number; computeCapability: string }[];
  /** The backend new work goes to by default: 'cuda' when a device is usable. */
  backend: 'cpu' | 'cuda';
  /** Path of the loaded .node binary. */
  binary: string;
  /** Why CUDA is not in use, when it is not. */
  cudaUnavailableReason: string | undefined;
  /** Threads of the CPU backend (KVFOCUS_THREADS). */
  cpuThreads: number;
}

/** What was built and loaded, and which devices this process can use. */
export function buildInfo(): BuildInfo {
  const { binding, path, fallbackReason } = addon();
  const info = binding.buildInfo();
  const devices = info.devices.map((d: NativeDeviceInfo) => ({ ...d }));
  return {
    version: info.version,
    cuda: info.cuda,
    devices,
    backend: devices.length > 0 ? 'cuda' : 'cpu',
    binary: path,
    cudaUnavailableReason: devices.length > 0 ? undefined : (fallbackReason ?? info.cudaUnavailableReason),
    cpuThreads: info.cpuThreads,
  };
}

/** The default device: 'cuda' when a GPU is usable, else 'cpu'. */
export function defaultDevice(): DeviceName {
  return buildInfo().backend;
}
