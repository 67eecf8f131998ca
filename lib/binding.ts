// The typed shape of the native module (native/napi). Only lib/ talks to it; everything here
// trusts lib/ to have validated arguments, but native code re-checks sizes anyway.

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u8';
export type DeviceName = 'cpu' | 'cuda' | `cuda:${number}`;

export interface NativeTensor {
  read(): Promise<ArrayBuffer>;
  copyTo(device: DeviceName): NativeTensor;
  view(shape: number[]): NativeTensor;
  release(): void;
  readonly byteLength: number;
  readonly released: boolean;
}

export interface NativeDeviceInfo {
  name: string;
  memoryBytes: number;
  computeCapability: string;
}

export interface NativeBuildInfo {
  version: string;
  cuda: boolean;
  devices: NativeDeviceInfo[];
  cudaUnavailableReason: string;
  cpuThreads: number;
}

type T = NativeTensor;
export interface NativeOps {
  matmul(a: T, b: T, out: T, p: { batch: number; m: number; n: number; k: number; transB: boolean; broadcastB: boolean }): void;
  rmsnorm(x: T, weight: T, out: T, p: { rows: number; dim: number; eps: number }): void;
  rope(x: T, positions: T, invFreq: T, out: T, p: { tokens: number; heads: number; headDim: number; layout: RopeLayout; attnFactor: number }): void;
  rerotate(keys: T, from: T, to: T, invFreq: T, out: T, p: { tokens: number; heads: number; headDim: number; rotaryDim: number; layout: RopeLayout }): void;
  /**
   * runs: i32 tensor of 8 per run (src page, src row, dst page, dst row, rows, from, to, 0), from/to
   * indexing the positions tensor. With perRunHost (the same runs on the host) one rerotate per run.
   */
  rerotatePages(
    srcPool: T, dstPool: T, invFreq: T, runs: T, positions: T,
    p: { numPages: number; pageSize: number; kvHeads: number; headDim: number; rotaryDim: number; layout: RopeLayout; numRuns: number },
    perRunHost: Int32Array | null,
  ): void;
  softmax(x: T, out: T, p: { rows: number; cols: number; scale: number }): void;
  siluMul(gate: T, up: T, out: T, p: { n: number }): void;
  embedding(table: T, ids: T, out: T, p: { tokens: number; vocab: number; dim: number }): void;
  topk(x: T, values: T, indices: T, p: { rows: number; cols: number; k: number }): void;
  /** The engine's sampling op (kernels/sample.h), bound for tests: params are rows x 32 bytes (u8). */
  sample(logits: T, params: T, penaltyStart: T, penaltyIds: T, out: T, p: { rows: number; vocab: number; penalties: number }): void;
  cast(x: T, out: T): void;
  add(a: T, b: T, out: T, p: { rows: number; cols: number; broadcastB: boolean }): void;
  kvWrite(k: T, v: T, kPool: T, vPool: T, slots: T, p: { tokens: number; kvHeads: number; headDim: number; pageSize: number; numPages: number }): void;
  pagedAttention(
    q: T, kPool: T, vPool: T, out: T, qStart: T, kvLen: T, tableStart: T, pageTable: T, visible: T, attnSum: T | null,
    p: {
      heads: number; kvHeads: number; headDim: number; pageSize: number; numPages: number; seqs: number; totalQ: number; maxKv: number; scale: number;
      /** Ranges per sequence of massRanges / rangeMass (needed with them). */
      numRanges?: number;
    },
    firstVisible?: T | null,
    vPageTable?: T | null,
    pageRows?: T | null,
    /** f32 [seqs, kvHeads, maxKv], added into: attnSum summed over each GQA group's heads. */
    kvAttnSum?: T | null,
    /** i32 [seqs, numRanges, 2]: [begin, end) slot ranges; with rangeMass. */
    massRanges?: T | null,
    /** f32 [totalQ, heads, numRanges], written: each row's probability mass over each range. */
    rangeMass?: T | null,
    /** f32 [seqs]: ln beta, the EMA weighting of attnSum / kvAttnSum by row age (0: none). */
    colLogDecay?: T | null,
    /** i32 [seqs]: only each sequence's last n query rows add into attnSum / kvAttnSum (0: all). */
    colLastRows?: T | null,
    /** i32 [seqs, 4]: two-part (APE) attention, per sequence [begin, end, f32 bits of temperature, of scale]. */
    ctxSplit?: T | null,
  ): void;
}

export type RopeLayout = 'half' | 'adjacent';

export interface NativeSequence {
  readonly length: number;
  layerLengths(): number[];
  /** RoPE position of every slot layer `layer` holds, in the order attention reads them. */
  positions(layer: number): Int32Array;
  /** Restarts the sampler's random stream from `seed` (as newSequence(seed)). */
  reseed(seed: number): void;
  truncate(n: number): void;
  clear(): void;
  release(): void;
  /** The pages of tokens [fromToken, length) as a block; fromToken must start a page. */
  exportBlock(fromToken: number): NativeKvBlock;
  /** [block, firstSlot, tokens, firstPosition] per attached block the layer holds, in slot order. */
  spans(layer: number): Int32Array;
  /** Layers fromLayer.. stop holding the attached blocks listed (numbered in attach order). */
  dropBlocks(fromLayer: number, blocks: Int32Array): void;
  /** Tokens appended to layers fromLayer.. from now on are placed `shift` further. */
  setLayerShift(fromLayer: number, shift: number): void;
}

/** KV pages of a run of tokens kept apart from any sequence (a stored document or prefix). */
export interface NativeKvBlock {
  readonly tokens: number;
  /** Pages of every layer together. */
  readonly pages: number;
  /** Another handle on the same pages; each handle holds them until its release(). */
  share(): NativeKvBlock;
  release(): void;
  /** The keys then the values, each (layers, tokens, kvHeads, headDim) in the KV dtype. */
  read(): Promise<ArrayBuffer>;
  /** RoPE position of each token at `layer`. */
  positions(layer: number): Int32Array;
}

export interface SamplingSpec {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  penaltyWindow: number;
}

export interface StepRequest {
  seq: NativeSequence;
  tokens: Int32Array;
  positions: Int32Array;
  logits: 'none' | 'last' | 'all';
  sample?: SamplingSpec;
  /** RoPE inverse frequencies (headDim / 2) for this request's tokens; default: the model's. */
  invFreq?: Float32Array;
  /**
   * Scores: [begin, end) slot-range pairs, for every layer or one Int32Array per layer (each in
   * that layer's slot order, this step's tokens included). The step then returns, for this
   * request, the attention probability mass of each of its rows and heads over each range,
   * from each layer's own softmax: rangeMass[i] (layers, rows, heads, ranges) f32.
   */
  rangeMass?: Int32Array | readonly Int32Array[];
  /**
   * Layers [begin, end) only, for a policy that decides between layers: the step holds this one
   * request; one from past layer 0 continues the hidden state the step before it left, one that
   * ends early returns no logits.
   */
  layers?: [number, number];
  /**
   * Column sums (H2O scores): the result's columnSums[i] holds, layer after layer, (kvHeads,
   * slots of that layer) f32: each cached slot's attention probability summed over this
   * request's rows and the query heads of each KV head's group.
   */
  columnSums?: boolean;
  /** With columnSums: per query head, (heads, slots) per layer, instead of per KV head. */
  columnSumsPerHead?: boolean;
  /**
   * With columnSums: beta in (0, 1] weighs each probability by row age, as EMA scores do (the
   * Cascading KV cache): a cached slot's by beta^(q-1-i) for query row i of q, the step's own
   * token k's by beta^(i-k). Default 1: plain sums.
   */
  scoreDecay?: number;
  /** With columnSums: only this request's last n rows count (SnapKV's observation window); default all. */
  scoreRows?: number;
  /**
   * Two-part attention (APE): per layer [begin, end) slots of the context (layers x 2, each in
   * that layer's slot order), attended with logits / temperature and merged with the rest by
   * softmax([scale * temperature * lse_context, lse_other]) (kernels/paged_attention.h).
   */
  context?: { ranges: Int32Array; temperature: number; scale: number };
}

export interface NativeModel {
  newSequence(seed?: number): NativeSequence;
  step(requests: StepRequest[]): Promise<{ logits: (Float32Array | null)[]; tokens: Int32Array; rangeMass: (Float32Array | null)[]; columnSums: (Float32Array | null)[] }>;
  freePages(): number;
  /**
   * Attaches blocks, in order, to an empty sequence, each from a fresh page with its first token
   * at `start` (keys re-rotated into the sequence's own pages where that moves them; values
   * stay in the stored pages). All or nothing.
   */
  attach(seq: NativeSequence, blocks: { block: NativeKvBlock; start: number }[]): void;
  /** A block at positions start.. on fresh pages, filled from `data` (the layout read() returns). */
  importBlock(start: number, tokens: number, data: Uint8Array): Promise<NativeKvBlock>;
  /** Layers fromLayer.. hold block blocks[i]'s first token at starts[i] (keys re-rotated). */
  moveBlocks(seq: NativeSequence, fromLayer: number, blocks: Int32Array, starts: Int32Array): void;
  /**
   * Each listed layer keeps only the slots `keep` at `positions` (keys re-rotated, rows moved into
   * freed slots so pages stay dense, the tail released); returns each kept slot's new slot.
   */
  compact(seq: NativeSequence, layers: { layer: number; keep: Int32Array; positions: Int32Array }[]): Int32Array[];
  /**
   * Per-head eviction: each listed layer then holds n = positions.length slots; slot s of KV
   * head h takes what slot sources[h * n + s] of head h holds (each slot a source at most once
   * per head), its key re-rotated to positions[s]. Moves are staged through scratch pages.
   */
  gatherHeads(seq: NativeSequence, layers: { layer: number; sources: Int32Array; positions: Int32Array }[]): void;
  release(): void;
}

export interface ModelSpecNative {
  vocab: number;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  rmsEps: number;
  ropeLayout: RopeLayout;
  ropeAttnFactor: number;
  /** Sliding-window size of the layers marked in slidingLayers; 0 or absent: none. */
  slidingWindow?: number;
  slidingLayers?: boolean[];
}

type W = NativeTensor;
export interface LayerWeightsNative {
  attnNorm: W; wq: W; wk: W; wv: W; wo: W; bq?: W; bk?: W; bv?: W; bo?: W; ffnNorm: W; gate: W; up: W; down: W;
  bGate?: W; bUp?: W; bDown?: W;
}

export interface ModelWeightsNative {
  embed: W;
  finalNorm: W;
  lmHead: W;
  invFreq: W;
  layers: LayerWeightsNative[];
}

export interface BindingModule {
  createModel(spec: ModelSpecNative, weights: ModelWeightsNative, kv: { numPages: number; pageSize: number; dtype: DType }): NativeModel;
  mapTensors(path: string, entries: { offset: number; bytes: number; dtype: DType; shape: number[] }[], device: DeviceName): NativeTensor[];
  buildInfo(): NativeBuildInfo;
  /** Times the host has waited for a device, over all devices (a debug counter for tests). */
  hostSyncs(): number;
  setErrorFactory(factory: (code: number, message: string) => Error): void;
  empty(device: DeviceName, dtype: DType, shape: number[], zero: boolean): NativeTensor;
  fromBytes(device: DeviceName, dtype: DType, shape: number[], data: ArrayBufferView | ArrayBuffer): NativeTensor;
  ops: NativeOps;
}
