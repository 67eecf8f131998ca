// ops: the kernels as tensor functions, for tests, harnesses and the engine. Each validates its
// arguments (naming the argument and what was expected), allocates the output on the inputs'
// device, and queues the kernel; nothing here waits for the device.
import type { DeviceName, RopeLayout } from './binding.js';
import { InvalidArgumentError } from './errors.js';
import { native } from './loader.js';
import { checkDevice, describe, type DType, type FloatDType, isFloat, Tensor } from './tensor.js';
import { checkInt32Array, checkOptions } from './validate.js';

export type { RopeLayout } from './binding.js';

function requireTensor(v: unknown, what: string): Tensor {
  if (!(v instanceof Tensor)) throw new InvalidArgumentError(`${what}: expected a Tensor but received ${describe(v)}`, what);
  v.handle(what); // throws DisposedError when disposed
  return v;
}

function requireFloat(t: Tensor, what: string): FloatDType {
  if (!isFloat(t.dtype)) throw new InvalidArgumentError(`${what}: expected dtype f32, f16 or bf16 but received ${t.dtype}`, what);
  return t.dtype;
}

function requireRank(t: Tensor, ranks: number[], what: string): void {
  if (!ranks.includes(t.shape.length)) {
    throw new InvalidArgumentError(`${what}: expected rank ${ranks.join(' or ')} but received shape [${t.shape.join(', ')}]`, what);
  }
}

function requireSameDevice(op: string, ...ts: [string, Tensor][]): DeviceName {
  const first = ts[0]!;
  for (const [name, t] of ts) {
    if (t.device !== first[1].device) {
      throw new InvalidArgumentError(`${op}: ${name} is on ${t.device} but ${first[0]} is on ${first[1].device}`, name);
    }
  }
  return first[1].device;
}

function outDType(value: unknown, fallback: FloatDType, what: string): FloatDType {
  if (value === undefined) return fallback;
  if (value === 'f32' || value === 'f16' || value === 'bf16') return value;
  throw new InvalidArgumentError(`${what}: expected 'f32', 'f16' or 'bf16' but received ${describe(value)}`, what);
}

function optNumber(value: unknown, fallback: number, what: string, check: (x: number) => boolean, expect: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || !check(value)) {
    throw new InvalidArgumentError(`${what}: expected ${expect} but received ${describe(value)}`, what);
  }
  return value;
}

/** A range of slots [begin, end) in a sequence's slot order. */
export type SlotRange = readonly [begin: number, end: number];

function isSlotRange(v: unknown): v is SlotRange {
  return Array.isArray(v) && v.length === 2 && typeof v[0] === 'number' && typeof v[1] === 'number';
}

/**
 * pagedAttention's rangeMass: one list of ranges for every sequence, or one list per sequence,
 * as the kernel's table [seqs, R, 2] (R: the longest list; shorter lists padded with [0, 0)).
 */
function massRanges(v: unknown, seqs: number): Int32Array {
  const what = 'pagedAttention: rangeMass';
  if (!Array.isArray(v) || v.length === 0) {
    throw new InvalidArgumentError(`${what}: expected a non-empty array of [begin, end] slot ranges (or one per sequence) but received ${describe(v)}`, 'rangeMass');
  }
  const shared = v.every(isSlotRange);
  if (!shared && v.length !== seqs) {
    throw new InvalidArgumentError(`${what}: expected [begin, end] ranges, or one list of them per sequence (${seqs}), but received ${v.length} lists`, 'rangeMass');
  }
  const lists: unknown[][] = shared ? Array.from({ length: seqs }, () => v) : v.map((x) => (Array.isArray(x) ? x : [x]));
  const R = Math.max(...lists.map((l) => l.length));
  if (R === 0) throw new InvalidArgumentError(`${what}: expected at least one range`, 'rangeMass');
  const table = new Int32Array(seqs * R * 2);
  lists.forEach((list, s) => {
    list.forEach((r, i) => {
      const where = shared ? `${what}[${i}]` : `${what}[${s}][${i}]`;
      if (!isSlotRange(r)) throw new InvalidArgumentError(`${where}: expected a [begin, end] pair but received ${describe(r)}`, 'rangeMass');
      const [b, e] = r;
      if (!(Number.isInteger(b) && Number.isInteger(e) && b >= 0 && b <= e && e <= 0x7fffffff)) {
        throw new InvalidArgumentError(`${where}: [${b}, ${e}] is not a range of slots (integers, 0 <= begin <= end < 2^31)`, 'rangeMass');
      }
      table[(s * R + i) * 2] = b;
      table[(s * R + i) * 2 + 1] = e;
    });
  });
  return table;
}

/**
 * pagedAttention's per-sequence `context` as the kernel's ContextSplit table: 4 i32 per sequence
 * (begin, end, then the f32 bits of temperature and scale); sequences without one get an empty
 * range (plain attention). Undefined when no sequence has a context.
 */
function contextSplit(seqs: readonly { context?: { begin: number; end: number; temperature?: number; scale?: number } }[]): Int32Array | undefined {
  if (!seqs.some((s) => s.context !== undefined)) return undefined;
  const table = new Int32Array(seqs.length * 4);
  const floats = new Float32Array(table.buffer);
  seqs.forEach((s, i) => {
    const c = s.context;
    floats[i * 4 + 2] = 1;
    floats[i * 4 + 3] = 1;
    if (c === undefined) return;
    const where = `pagedAttention: sequences[${i}].context`;
    if (!(Number.isInteger(c.begin) && Number.isInteger(c.end) && c.begin >= 0 && c.begin <= c.end && c.end <= 0x7fffffff)) {
      throw new InvalidArgumentError(`${where}: [${c.begin}, ${c.end}] is not a range of slots (integers, 0 <= begin <= end < 2^31)`, 'sequences');
    }
    const temperature = c.temperature ?? 1;
    const scale = c.scale ?? 1;
    if (!(Number.isFinite(temperature) && temperature > 0)) throw new InvalidArgumentError(`${where}.temperature: expected a positive number but received ${describe(temperature)}`, 'sequences');
    if (!Number.isFinite(scale)) throw new InvalidArgumentError(`${where}.scale: expected a finite number but received ${describe(scale)}`, 'sequences');
    table[i * 4] = c.begin;
    table[i * 4 + 1] = c.end;
    floats[i * 4 + 2] = temperature;
    floats[i * 4 + 3] = scale;
  });
  return table;
}

/** An i32 tensor on `device` from a Tensor or an Int32Array/number[] (a temporary, disposed by the caller). */
function indexTensor(v: unknown, device: DeviceName, what: string): { t: Tensor; temporary: boolean } {
  if (v instanceof Tensor) {
    requireTensor(v, what);
    if (v.dtype !== 'i32') throw new InvalidArgumentError(`${what}: expected dtype i32 but received ${v.dtype}`, what);
    if (v.device !== device) throw new InvalidArgumentError(`${what}: is on ${v.device}, expected ${device}`, what);
    return { t: v, temporary: false };
  }
  if (v instanceof Int32Array) return { t: Tensor.from(v, { device }), temporary: true };
  if (Array.isArray(v)) return { t: Tensor.from(checkInt32Array(v, what), { device }), temporary: true };
  throw new InvalidArgumentError(`${what}: expected an i32 Tensor, an Int32Array or an array of 32-bit integers but received ${describe(v)}`, what);
}

// Temporaries may be disposed right after queueing: queued jobs hold their own references.
function disposeTemps(...xs: { t: Tensor; temporary: boolean }[]): void {
  for (const x of xs) if (x.temporary) x.t.dispose();
}

/**
 * RoPE inverse frequencies without scaling: inv_freq[i] = base^(-2i/d), computed in float64
 * and rounded once to f32.
 */
export function ropeInvFreq(headDim: number, base: number): Float32Array {
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < out.length; i++) out[i] = 1 / Math.pow(base, (2 * i) / headDim);
  return out;
}

interface RopeFrequencies {
  /** Inverse frequencies, length headDim/2 (rotaryDim/2 where given; rope scaling folded in). Default: from `base`. */
  invFreq?: Float32Array | Tensor;
  /** RoPE base (theta) used when invFreq is not given. Default 10000. */
  base?: number;
  /** Pair layout: 'half' (HF rotate_half, default) or 'adjacent' (GPT-J / llama.cpp NORM). */
  layout?: RopeLayout;
}

const ROPE_FREQUENCY_OPTIONS = ['invFreq', 'base', 'layout'] as const satisfies readonly (keyof RopeFrequencies)[];

function ropeSetup(op: string, x: Tensor, opts: RopeFrequencies & { rotaryDim?: number }) {
  requireRank(x, [3], `${op}: x`);
  const [tokens, heads, headDim] = x.shape as [number, number, number];
  if (headDim % 2 !== 0) throw new InvalidArgumentError(`${op}: head size (x.shape[2] = ${headDim}) must be even`, 'x');
  const layout = ropeLayout(op, opts.layout);
  const rotaryDim = rotaryWidth(op, headDim, opts.rotaryDim);
  const freq = frequencyTensor(op, rotaryDim, x.device, opts);
  return { tokens, heads, headDim, rotaryDim, layout, freq };
}

function ropeLayout(op: string, layout: unknown): RopeLayout {
  if (layout === undefined) return 'half';
  if (layout !== 'half' && layout !== 'adjacent') {
    throw new InvalidArgumentError(`${op}: layout: expected 'half' or 'adjacent' but received ${describe(layout)}`, 'layout');
  }
  return layout;
}

/** The rotary width: the whole head by default, else an even number of leading dimensions. */
function rotaryWidth(op: string, headDim: number, rotaryDim: unknown): number {
  if (rotaryDim === undefined) return headDim;
  if (!(Number.isInteger(rotaryDim) && (rotaryDim as number) >= 2 && (rotaryDim as number) <= headDim && (rotaryDim as number) % 2 === 0)) {
    throw new InvalidArgumentError(`${op}: rotaryDim: expected an even integer in [2, ${headDim}] (the head size) but received ${describe(rotaryDim)}`, 'rotaryDim');
  }
  return rotaryDim as number;
}

/** invFreq as an f32 tensor of rotaryDim / 2 values on `device` (from `base` when not given). */
function frequencyTensor(op: string, rotaryDim: number, device: DeviceName, opts: RopeFrequencies): { t: Tensor; temporary: boolean } {
  const pairs = rotaryDim / 2;
  if (opts.invFreq instanceof Tensor) {
    requireTensor(opts.invFreq, `${op}: invFreq`);
    if (opts.invFreq.dtype !== 'f32' || opts.invFreq.size !== pairs || opts.invFreq.device !== device) {
      throw new InvalidArgumentError(`${op}: invFreq: expected an f32 tensor of ${pairs} values on ${device}`, 'invFreq');
    }
    return { t: opts.invFreq, temporary: false };
  }
  if (opts.invFreq instanceof Float32Array) {
    if (opts.invFreq.length !== pairs) {
      throw new InvalidArgumentError(`${op}: invFreq: expected ${pairs} values (rotary size / 2) but received ${opts.invFreq.length}`, 'invFreq');
    }
    return { t: Tensor.from(opts.invFreq, { device }), temporary: true };
  }
  if (opts.invFreq === undefined) {
    const base = optNumber(opts.base, 10000, `${op}: base`, (b) => b > 1, 'a number > 1');
    return { t: Tensor.from(ropeInvFreq(rotaryDim, base), { device }), temporary: true };
  }
  throw new InvalidArgumentError(`${op}: invFreq: expected a Float32Array or Tensor but received ${describe(opts.invFreq)}`, 'invFreq');
}

/**
 * One run of keys moved by ops.rerotatePages: `from.length` consecutive rows of one page, read
 * from rows srcRow.. of srcPage and written to rows dstRow.. of dstPage.
 */
export interface KeyMove {
  srcPage: number;
  /** First row read (default 0). */
  srcRow?: number;
  dstPage: number;
  /** First row written (default 0). */
  dstRow?: number;
  /** The position each row's key was rotated at. */
  from: Int32Array | readonly number[];
  /** The position to move each row's key to (one per row, as many as `from`). */
  to: Int32Array | readonly number[];
  /**
   * Only this KV head of the rows (per-head cache policies keep different tokens per head);
   * default: every head. Moves of different heads may share rows.
   */
  head?: number;
}

export interface RerotatePagesOptions extends RopeFrequencies {
  /** Pool written (same shape and dtype as the source pool); default: the source pool itself. */
  out?: Tensor;
  /** Leading dimensions of each head that carry RoPE (partial rotary); the rest are copied. Default: the head size. */
  rotaryDim?: number;
  /**
   * Launch one rerotate per run instead of one fused launch: the engine's former path, kept for
   * equivalence tests and benchmarks. Same results, bit for bit on the CPU.
   */
  perRun?: boolean;
}

const REROTATE_PAGES_OPTIONS = [...ROPE_FREQUENCY_OPTIONS, 'out', 'rotaryDim', 'perRun'] as const;

function checkIndex(v: unknown, lo: number, hi: number, what: string): number {
  if (!(typeof v === 'number' && Number.isInteger(v) && v >= lo && v < hi)) {
    throw new InvalidArgumentError(`${what} must be an integer in [${lo}, ${hi}) but is ${describe(v)}`, 'moves');
  }
  return v;
}

/**
 * Moves for ops.rerotatePages, checked, packed and uploaded once (ops.keyMoves): a caller that
 * moves the same rows again (a benchmark, a harness) pays for none of that per call. Holds two
 * small i32 tensors on its device until dispose().
 */
export class KeyMoves {
  readonly device: DeviceName;
  /** The pool geometry the moves were checked against. */
  readonly numPages: number;
  readonly pageSize: number;
  /** Runs, and rows moved in all. */
  readonly count: number;
  readonly rows: number;
  /** Whether some row is written where another row is read (then the moves need an `out` pool). */
  readonly overlapsReads: boolean;
  /** The highest KV head a move names alone, -1 when every move covers all heads. */
  readonly maxHead: number;
  /** @internal 8 i32 per run (native RerotateRun), and the packed positions. */
  readonly packed: Int32Array;
  /** @internal */
  readonly runsTensor: Tensor;
  /** @internal */
  readonly positionsTensor: Tensor;

  /** @internal Use ops.keyMoves. */
  constructor(moves: readonly KeyMove[], numPages: number, pageSize: number, device: DeviceName) {
    const { runs, positions, rows, overlapsReads, maxHead } = packMoves(moves, numPages, pageSize);
    this.maxHead = maxHead;
    this.device = device;
    this.numPages = numPages;
    this.pageSize = pageSize;
    this.count = moves.length;
    this.rows = rows;
    this.overlapsReads = overlapsReads;
    this.packed = runs;
    this.runsTensor = Tensor.from(runs.length ? runs : new Int32Array(8), { device });
    this.positionsTensor = Tensor.from(positions.length ? positions : new Int32Array(1), { device });
  }

  dispose(): void {
    this.runsTensor.dispose();
    this.positionsTensor.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Packs and checks rerotatePages moves: pages inside the pool, rows inside their pages, one
 * position per row, no row written twice; notes whether a row is written where another is read.
 */
function packMoves(
  moves: readonly KeyMove[],
  numPages: number,
  pageSize: number,
): { runs: Int32Array; positions: Int32Array; rows: number; overlapsReads: boolean; maxHead: number } {
  if (!Array.isArray(moves)) throw new InvalidArgumentError(`rerotatePages: moves: expected an array but received ${describe(moves)}`, 'moves');
  const runs = new Int32Array(moves.length * 8);
  let total = 0;
  moves.forEach((m, r) => {
    const what = `rerotatePages: moves[${r}]`;
    if (typeof m !== 'object' || m === null) throw new InvalidArgumentError(`${what}: expected an object but received ${describe(m)}`, 'moves');
    if (!(m.from instanceof Int32Array || Array.isArray(m.from)) || !(m.to instanceof Int32Array || Array.isArray(m.to))) {
      throw new InvalidArgumentError(`${what}: from and to must be Int32Arrays or arrays of positions`, 'moves');
    }
    const rows = m.from.length;
    if (m.to.length !== rows) throw new InvalidArgumentError(`${what}: from has ${rows} positions but to has ${m.to.length}`, 'moves');
    runs.set([
      checkIndex(m.srcPage, 0, numPages, `${what}.srcPage`),
      checkIndex(m.srcRow ?? 0, 0, pageSize - rows + 1, `${what}.srcRow (with ${rows} rows in pages of ${pageSize})`),
      checkIndex(m.dstPage, 0, numPages, `${what}.dstPage`),
      checkIndex(m.dstRow ?? 0, 0, pageSize - rows + 1, `${what}.dstRow (with ${rows} rows in pages of ${pageSize})`),
      rows, total, total + rows, m.head === undefined ? 0 : checkIndex(m.head, 0, 2 ** 30, `${what}.head`) + 1,
    ], r * 8);
    total += 2 * rows;
  });
  const positions = new Int32Array(total);
  // Rows are tracked per (slot, head): head 0 stands for every head (a run's 8th integer).
  const reads = new Map<number, { reader: number; head: number }[]>(); // source slot -> the reading rows
  const overlap = (a: number, b: number): boolean => a === 0 || b === 0 || a === b;
  let maxHead = -1;
  moves.forEach((m, r) => {
    const [, srcRow, , , rows, from, , head] = runs.subarray(r * 8, r * 8 + 8) as unknown as number[];
    maxHead = Math.max(maxHead, head! - 1);
    positions.set(Array.isArray(m.from) ? checkInt32Array(m.from, `rerotatePages: moves[${r}].from`) : m.from, from!);
    positions.set(Array.isArray(m.to) ? checkInt32Array(m.to, `rerotatePages: moves[${r}].to`) : m.to, from! + rows!);
    for (let k = 0; k < rows!; k++) {
      const slot = m.srcPage * pageSize + srcRow! + k;
      const list = reads.get(slot) ?? [];
      list.push({ reader: r * pageSize + k, head: head! });
      reads.set(slot, list);
    }
  });
  const written = new Map<number, number[]>();
  let overlapsReads = false;
  moves.forEach((m, r) => {
    const head = runs[r * 8 + 7]!;
    for (let k = 0; k < runs[r * 8 + 4]!; k++) {
      const slot = m.dstPage * pageSize + runs[r * 8 + 3]! + k;
      const heads = written.get(slot) ?? [];
      if (heads.some((h) => overlap(h, head))) {
        throw new InvalidArgumentError(`rerotatePages: moves[${r}] writes page ${m.dstPage} row ${slot % pageSize}, which another row of the moves writes too`, 'moves');
      }
      heads.push(head);
      written.set(slot, heads);
      for (const read of reads.get(slot) ?? []) if (read.reader !== r * pageSize + k && overlap(read.head, head)) overlapsReads = true;
    }
  });
  return { runs, positions, rows: total / 2, overlapsReads, maxHead };
}

export const ops = {
  /**
   * C = A @ B (or A @ Bᵀ with transposeB, for [out, in] weights), f32 accumulation.
   * a: [m, k] or [batch, m, k]; b: [k, n] / [n, k], or batched with the same batch.
   * The output dtype defaults to a's.
   */
  matmul(a: Tensor, b: Tensor, matmulOptions?: { transposeB?: boolean; dtype?: FloatDType } | null): Tensor {
    const options = checkOptions(matmulOptions, ['transposeB', 'dtype'], 'matmul');
    requireTensor(a, 'matmul: a');
    requireTensor(b, 'matmul: b');
    requireFloat(a, 'matmul: a');
    requireFloat(b, 'matmul: b');
    requireRank(a, [2, 3], 'matmul: a');
    requireRank(b, [2, 3], 'matmul: b');
    const device = requireSameDevice('matmul', ['a', a], ['b', b]);
    const transB = options.transposeB ?? false;
    const batch = a.shape.length === 3 ? a.shape[0]! : 1;
    const [m, k] = a.shape.slice(-2) as [number, number];
    if (b.shape.length === 3 && (a.shape.length !== 3 || b.shape[0] !== batch)) {
      throw new InvalidArgumentError(
        `matmul: a batched b [${b.shape.join(', ')}] needs a of shape [${b.shape[0]}, m, k] but a is [${a.shape.join(', ')}]`,
        'b',
      );
    }
    const [b0, b1] = b.shape.slice(-2) as [number, number];
    const bk = transB ? b1 : b0;
    const n = transB ? b0 : b1;
    if (bk !== k) {
      const dim = transB ? 'b.shape[-1]' : 'b.shape[-2]';
      throw new InvalidArgumentError(`matmul: ${dim} (${bk}) must equal a.shape[-1] (${k})${transB ? ' (transposeB)' : ''}`, 'b');
    }
    const dtype = outDType(options.dtype, a.dtype as FloatDType, 'matmul: dtype');
    const shape = a.shape.length === 3 ? [batch, m, n] : [m, n];
    const out = Tensor.empty(shape, { dtype, device });
    native().ops.matmul(a.handle(), b.handle(), out.handle(), { batch, m, n, k, transB, broadcastB: b.shape.length === 2 });
    return out;
  },

  /** y = x / sqrt(mean(x²) + eps) · weight over the last axis. */
  rmsnorm(x: Tensor, weight: Tensor, rmsnormOptions?: { eps?: number } | null): Tensor {
    const options = checkOptions(rmsnormOptions, ['eps'], 'rmsnorm');
    requireTensor(x, 'rmsnorm: x');
    requireTensor(weight, 'rmsnorm: weight');
    requireFloat(x, 'rmsnorm: x');
    requireFloat(weight, 'rmsnorm: weight');
    const device = requireSameDevice('rmsnorm', ['x', x], ['weight', weight]);
    if (x.shape.length < 1) throw new InvalidArgumentError('rmsnorm: x must have at least one dimension', 'x');
    const dim = x.shape[x.shape.length - 1]!;
    if (weight.shape.length !== 1 || weight.shape[0] !== dim) {
      throw new InvalidArgumentError(`rmsnorm: weight must have shape [${dim}] but has [${weight.shape.join(', ')}]`, 'weight');
    }
    const eps = optNumber(options.eps, 1e-6, 'rmsnorm: eps', (e) => e >= 0, 'a non-negative number');
    const out = Tensor.empty(x.shape, { dtype: x.dtype, device });
    native().ops.rmsnorm(x.handle(), weight.handle(), out.handle(), { rows: dim === 0 ? 0 : x.size / dim, dim, eps });
    return out;
  },

  /** Rotary embedding of x [tokens, heads, headDim] at positions [tokens]. */
  rope(x: Tensor, positions: Tensor | Int32Array | number[], ropeOptions?: (RopeFrequencies & { attnFactor?: number }) | null): Tensor {
    const options = checkOptions(ropeOptions, [...ROPE_FREQUENCY_OPTIONS, 'attnFactor'], 'rope');
    requireTensor(x, 'rope: x');
    requireFloat(x, 'rope: x');
    const { tokens, heads, headDim, layout, freq } = ropeSetup('rope', x, options);
    const pos = indexTensor(positions, x.device, 'rope: positions');
    try {
      if (pos.t.size !== tokens) {
        throw new InvalidArgumentError(`rope: positions has ${pos.t.size} entries but x has ${tokens} tokens`, 'positions');
      }
      const attnFactor = optNumber(options.attnFactor, 1, 'rope: attnFactor', (f) => f > 0, 'a positive number');
      const out = Tensor.empty(x.shape, { dtype: x.dtype, device: x.device });
      native().ops.rope(x.handle(), pos.t.handle(), freq.t.handle(), out.handle(), { tokens, heads, headDim, layout, attnFactor });
      return out;
    } finally {
      disposeTemps(pos, freq);
    }
  },

  /**
   * Moves cached keys [tokens, heads, headDim], rotated at positions `from`, to positions `to`
   * (one rotation by the difference; values never need this). With `inPlace` the keys tensor
   * itself is rewritten and returned. `rotaryDim` (partial rotary): only that many leading
   * dimensions of each head rotate (invFreq has rotaryDim / 2 values); the rest are copied.
   */
  rerotate(
    keys: Tensor,
    from: Tensor | Int32Array | number[],
    to: Tensor | Int32Array | number[],
    rerotateOptions?: (RopeFrequencies & { inPlace?: boolean; rotaryDim?: number }) | null,
  ): Tensor {
    const options = checkOptions(rerotateOptions, [...ROPE_FREQUENCY_OPTIONS, 'inPlace', 'rotaryDim'], 'rerotate');
    requireTensor(keys, 'rerotate: keys');
    requireFloat(keys, 'rerotate: keys');
    const { tokens, heads, headDim, rotaryDim, layout, freq } = ropeSetup('rerotate', keys, options);
    const f = indexTensor(from, keys.device, 'rerotate: from');
    const t = indexTensor(to, keys.device, 'rerotate: to');
    try {
      for (const [name, p] of [['from', f], ['to', t]] as const) {
        if (p.t.size !== tokens) {
          throw new InvalidArgumentError(`rerotate: ${name} has ${p.t.size} entries but keys has ${tokens} tokens`, name);
        }
      }
      const out = options.inPlace ? keys : Tensor.empty(keys.shape, { dtype: keys.dtype, device: keys.device });
      native().ops.rerotate(keys.handle(), f.t.handle(), t.t.handle(), freq.t.handle(), out.handle(), { tokens, heads, headDim, rotaryDim, layout });
      return out;
    } finally {
      disposeTemps(f, t, freq);
    }
  },

  /**
   * Checks, packs and uploads moves for rerotatePages on `device`, for pools of `numPages` pages
   * of `pageSize` rows. Pass the result to rerotatePages as often as needed; dispose() it after.
   */
  keyMoves(moves: readonly KeyMove[], pool: { numPages: number; pageSize: number; device?: DeviceName }): KeyMoves {
    const { numPages, pageSize } = pool;
    if (!(Number.isInteger(numPages) && numPages >= 0 && Number.isInteger(pageSize) && pageSize >= 1)) {
      throw new InvalidArgumentError(`keyMoves: pool: expected numPages >= 0 and pageSize >= 1 but received ${describe(numPages)} and ${describe(pageSize)}`, 'pool');
    }
    return new KeyMoves(moves, numPages, pageSize, checkDevice(pool.device ?? 'cpu', 'device'));
  },

  /**
   * The fused re-rotation of paged keys (CacheFocus): moves the keys of the given runs of rows,
   * in pages of every layer at once, from the positions they were rotated at to new ones, in one
   * launch. pool: [numPages, pageSize, kvHeads, headDim] keys; the moved keys are written into
   * `out` (default: the same pool, as the engine does: stored pages are read, the sequence's
   * own pages written). Only the rows named are touched. Returns the pool written.
   * Same arithmetic as rerotate: one rotation by (to - from) * invFreq, one rounding.
   * `moves` is a list of KeyMove, or ops.keyMoves() of one (checked and uploaded once).
   */
  rerotatePages(pool: Tensor, moves: readonly KeyMove[] | KeyMoves, rerotateOptions?: RerotatePagesOptions | null): Tensor {
    const options = checkOptions(rerotateOptions, REROTATE_PAGES_OPTIONS, 'rerotatePages');
    requireTensor(pool, 'rerotatePages: pool');
    requireFloat(pool, 'rerotatePages: pool');
    requireRank(pool, [4], 'rerotatePages: pool');
    const [numPages, pageSize, kvHeads, headDim] = pool.shape as [number, number, number, number];
    if (headDim % 2 !== 0) throw new InvalidArgumentError(`rerotatePages: head size (pool.shape[3] = ${headDim}) must be even`, 'pool');
    const out = options.out ?? pool;
    if (options.out !== undefined) {
      requireTensor(out, 'rerotatePages: out');
      requireSameDevice('rerotatePages', ['pool', pool], ['out', out]);
      if (out.shape.join() !== pool.shape.join() || out.dtype !== pool.dtype) {
        throw new InvalidArgumentError(`rerotatePages: out must have the pool's shape [${pool.shape.join(', ')}] and dtype ${pool.dtype}`, 'out');
      }
    }
    const layout = ropeLayout('rerotatePages', options.layout);
    const rotaryDim = rotaryWidth('rerotatePages', headDim, options.rotaryDim);
    const plan = moves instanceof KeyMoves ? moves : new KeyMoves(moves, numPages, pageSize, pool.device);
    try {
      if (plan.numPages !== numPages || plan.pageSize !== pageSize || plan.device !== pool.device) {
        throw new InvalidArgumentError(
          `rerotatePages: moves were made for ${plan.numPages} pages of ${plan.pageSize} rows on ${plan.device}, the pool has ${numPages} of ${pageSize} on ${pool.device}`,
          'moves',
        );
      }
      if (plan.maxHead >= kvHeads) {
        throw new InvalidArgumentError(`rerotatePages: a move names KV head ${plan.maxHead} but the pool has ${kvHeads}`, 'moves');
      }
      if (out === pool && plan.overlapsReads) {
        throw new InvalidArgumentError('rerotatePages: the moves write rows that other rows of the moves read: give an out pool', 'moves');
      }
      const freq = frequencyTensor('rerotatePages', rotaryDim, pool.device, options);
      try {
        native().ops.rerotatePages(pool.handle(), out.handle(), freq.t.handle(), plan.runsTensor.handle(), plan.positionsTensor.handle(), {
          numPages, pageSize, kvHeads, headDim, rotaryDim, layout, numRuns: plan.count,
        }, options.perRun === true ? plan.packed : null);
        return out;
      } finally {
        disposeTemps(freq);
      }
    } finally {
      if (plan !== moves) plan.dispose();
    }
  },

  /** softmax(scale · x) over the last axis; fully masked (-inf) rows give zeros. */
  softmax(x: Tensor, softmaxOptions?: { scale?: number } | null): Tensor {
    const options = checkOptions(softmaxOptions, ['scale'], 'softmax');
    requireTensor(x, 'softmax: x');
    requireFloat(x, 'softmax: x');
    if (x.shape.length < 1) throw new InvalidArgumentError('softmax: x must have at least one dimension', 'x');
    const cols = x.shape[x.shape.length - 1]!;
    const scale = optNumber(options.scale, 1, 'softmax: scale', () => true, 'a finite number');
    const out = Tensor.empty(x.shape, { dtype: x.dtype, device: x.device });
    native().ops.softmax(x.handle(), out.handle(), { rows: cols === 0 ? 0 : x.size / cols, cols, scale });
    return out;
  },

  /** silu(gate) · up, elementwise (the SwiGLU gate). */
  siluMul(gate: Tensor, up: Tensor): Tensor {
    requireTensor(gate, 'siluMul: gate');
    requireTensor(up, 'siluMul: up');
    requireFloat(gate, 'siluMul: gate');
    const device = requireSameDevice('siluMul', ['gate', gate], ['up', up]);
    if (up.dtype !== gate.dtype) throw new InvalidArgumentError(`siluMul: up is ${up.dtype} but gate is ${gate.dtype}`, 'up');
    if (up.shape.join() !== gate.shape.join()) {
      throw new InvalidArgumentError(`siluMul: up [${up.shape.join(', ')}] must have gate's shape [${gate.shape.join(', ')}]`, 'up');
    }
    const out = Tensor.empty(gate.shape, { dtype: gate.dtype, device });
    native().ops.siluMul(gate.handle(), up.handle(), out.handle(), { n: gate.size });
    return out;
  },

  /** Rows of table [vocab, dim] for ids [tokens] → [tokens, dim]. An id out of range rejects at read. */
  embedding(table: Tensor, ids: Tensor | Int32Array | number[], embeddingOptions?: { dtype?: FloatDType } | null): Tensor {
    const options = checkOptions(embeddingOptions, ['dtype'], 'embedding');
    requireTensor(table, 'embedding: table');
    requireFloat(table, 'embedding: table');
    requireRank(table, [2], 'embedding: table');
    const [vocab, dim] = table.shape as [number, number];
    if (Array.isArray(ids) || ids instanceof Int32Array) {
      const checked = Array.isArray(ids) ? checkInt32Array(ids, 'embedding: ids') : ids;
      const bad = checked.findIndex((id) => !(id >= 0 && id < vocab));
      if (bad >= 0) throw new InvalidArgumentError(`embedding: ids[${bad}] = ${ids[bad]} is outside the vocabulary [0, ${vocab})`, 'ids');
    }
    const idt = indexTensor(ids, table.device, 'embedding: ids');
    try {
      const tokens = idt.t.size;
      const dtype = outDType(options.dtype, table.dtype as FloatDType, 'embedding: dtype');
      const out = Tensor.empty([tokens, dim], { dtype, device: table.device });
      native().ops.embedding(table.handle(), idt.t.handle(), out.handle(), { tokens, vocab, dim });
      return out;
    } finally {
      disposeTemps(idt);
    }
  },

  /** The k largest values per row (last axis), descending, with their indices (ties: lower index first). */
  topk(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
    requireTensor(x, 'topk: x');
    requireFloat(x, 'topk: x');
    if (x.shape.length < 1) throw new InvalidArgumentError('topk: x must have at least one dimension', 'x');
    const cols = x.shape[x.shape.length - 1]!;
    if (!Number.isInteger(k) || k < 1 || k > cols) {
      throw new InvalidArgumentError(`topk: k must be an integer in [1, ${cols}] but received ${describe(k)}`, 'k');
    }
    const rows = x.size / cols;
    const shape = [...x.shape.slice(0, -1), k];
    const values = Tensor.empty(shape, { dtype: 'f32', device: x.device });
    const indices = Tensor.empty(shape, { dtype: 'i32', device: x.device });
    native().ops.topk(x.handle(), values.handle(), indices.handle(), { rows, cols, k });
    return { values, indices };
  },

  /** a + b elementwise; b may also be one row ([cols]) added to every row of a (a bias). */
  add(a: Tensor, b: Tensor): Tensor {
    requireTensor(a, 'add: a');
    requireTensor(b, 'add: b');
    requireFloat(a, 'add: a');
    requireFloat(b, 'add: b');
    const device = requireSameDevice('add', ['a', a], ['b', b]);
    const cols = a.shape.length === 0 ? 1 : a.shape[a.shape.length - 1]!;
    const broadcastB = b.shape.length === 1 && a.shape.length > 1 && b.shape[0] === cols;
    if (!broadcastB && b.shape.join() !== a.shape.join()) {
      throw new InvalidArgumentError(`add: b [${b.shape.join(', ')}] must have a's shape [${a.shape.join(', ')}] or be one row [${cols}]`, 'b');
    }
    const out = Tensor.empty(a.shape, { dtype: a.dtype, device });
    native().ops.add(a.handle(), b.handle(), out.handle(), { rows: cols === 0 ? 0 : a.size / cols, cols, broadcastB });
    return out;
  },

  /**
   * Writes keys and values [tokens, kvHeads, headDim] into paged pools
   * [numPages, pageSize, kvHeads, headDim] at flat slots (page * pageSize + row), in place.
   */
  kvWrite(k: Tensor, v: Tensor, kPool: Tensor, vPool: Tensor, slots: Tensor | Int32Array | number[]): void {
    for (const [name, t] of [['k', k], ['v', v], ['kPool', kPool], ['vPool', vPool]] as const) {
      requireTensor(t, `kvWrite: ${name}`);
      requireFloat(t, `kvWrite: ${name}`);
    }
    requireRank(k, [3], 'kvWrite: k');
    requireRank(kPool, [4], 'kvWrite: kPool');
    const device = requireSameDevice('kvWrite', ['k', k], ['v', v], ['kPool', kPool], ['vPool', vPool]);
    const [tokens, kvHeads, headDim] = k.shape as [number, number, number];
    const [numPages, pageSize] = kPool.shape as [number, number, number, number];
    if (v.shape.join() !== k.shape.join() || v.dtype !== k.dtype) throw new InvalidArgumentError('kvWrite: v must match k in shape and dtype', 'v');
    if (vPool.shape.join() !== kPool.shape.join() || vPool.dtype !== kPool.dtype) {
      throw new InvalidArgumentError('kvWrite: vPool must match kPool in shape and dtype', 'vPool');
    }
    if (kPool.shape[2] !== kvHeads || kPool.shape[3] !== headDim) {
      throw new InvalidArgumentError(`kvWrite: kPool [${kPool.shape.join(', ')}] must be [pages, pageSize, ${kvHeads}, ${headDim}]`, 'kPool');
    }
    if (Array.isArray(slots) || slots instanceof Int32Array) {
      const seen = new Set<number>();
      Array.from(slots).forEach((s, i) => {
        if (!(Number.isInteger(s) && s >= 0 && s < numPages * pageSize)) {
          throw new InvalidArgumentError(`kvWrite: slots[${i}] = ${s} is outside the pool [0, ${numPages * pageSize})`, 'slots');
        }
        if (seen.has(s)) throw new InvalidArgumentError(`kvWrite: slot ${s} appears twice`, 'slots');
        seen.add(s);
      });
    }
    const st = indexTensor(slots, device, 'kvWrite: slots');
    try {
      if (st.t.size !== tokens) throw new InvalidArgumentError(`kvWrite: slots has ${st.t.size} entries but k has ${tokens} tokens`, 'slots');
      native().ops.kvWrite(k.handle(), v.handle(), kPool.handle(), vPool.handle(), st.t.handle(), { tokens, kvHeads, headDim, pageSize, numPages });
    } finally {
      disposeTemps(st);
    }
  },

  /**
   * Attention of query rows q [totalQ, heads, headDim] (already rotated) over paged KV pools
   * [numPages, pageSize, kvHeads, headDim], for a batch of sequences whose query rows follow each
   * other in q. Each query row sees the slots before `visible[row]` of its sequence's cache;
   * by default the queries are the newest `queries` slots of the cache (causal prefill/decode).
   * `window` (sliding-window attention, as HF masks it) also hides the slots before
   * visible[row] - window, so a row sees at most `window` slots, its own included.
   * Scores, from the same softmax probabilities as `out` (nothing is computed for those not
   * asked for):
   * - `attnSum`: the probabilities summed over each sequence's query rows, f32
   *   [seqs, heads, maxKv] (the per-token scores of score-based cache policies: H2O, SnapKV).
   * - `kvAttnSum`: the same summed also over the query heads of each KV head's group, f32
   *   [seqs, kvHeads, maxKv] (per-KV-head scores, as the Cascading KV cache keeps them).
   * - `scoreDecay` (beta in (0, 1], one for all sequences or one each; default 1): weighs the
   *   column sums by row age, as the Cascading KV cache's EMA scores: with the sequence's q query
   *   rows i and their own slots c0 + i, a cached slot's probability counts beta^(q-1-i), the
   *   query token k's own slot beta^(i-k).
   * - `scoreRows` (one for all sequences or one each; default all): only each sequence's last n
   *   query rows add into attnSum / kvAttnSum (SnapKV's observation window).
   * - `rangeMass`: slot ranges [begin, end) (in the sequence's slot order, the order of its
   *   pages), one list for every sequence or one list per sequence; returns f32
   *   [totalQ, heads, R] with each row's probability mass over each range (R: the longest
   *   list; a shorter list's missing ranges get 0). Slots a row does not see (causal mask,
   *   window, holes, past kvLength) weigh 0, so ranges covering every slot sum to 1 per row.
   *   CacheFocus scores documents by it.
   * A sequence may give `valuePages` (values read from other pages than the keys, one per page)
   * and `pageRows` (rows of each page that hold tokens; later rows are holes, masked), as
   * sequences over stored documents do.
   * A sequence's `context` turns on two-part attention (APE, `policies.ape()`): its slots
   * [begin, end) are the context; each row attends to them with logits divided by
   * `temperature` (T, default 1) and to its other visible slots separately, and the two outputs
   * are mixed with weights softmax([scale * T * lse_context, lse_other]) (`scale`: S, default 1).
   * Not combined with the scores (attnSum, kvAttnSum, rangeMass).
   */
  pagedAttention(
    q: Tensor,
    kPool: Tensor,
    vPool: Tensor,
    options: {
      sequences: {
        queries: number;
        kvLength: number;
        pages: readonly number[];
        valuePages?: readonly number[];
        pageRows?: readonly number[];
        context?: { begin: number; end: number; temperature?: number; scale?: number };
      }[];
      visible?: Int32Array | readonly number[];
      window?: number;
      scale?: number;
      attnSum?: boolean;
      kvAttnSum?: boolean;
      rangeMass?: readonly SlotRange[] | readonly (readonly SlotRange[])[];
      scoreDecay?: number | readonly number[];
      scoreRows?: number | readonly number[];
    },
  ): { out: Tensor; attnSum: Tensor | undefined; kvAttnSum: Tensor | undefined; rangeMass: Tensor | undefined } {
    for (const [name, t] of [['q', q], ['kPool', kPool], ['vPool', vPool]] as const) {
      requireTensor(t, `pagedAttention: ${name}`);
      requireFloat(t, `pagedAttention: ${name}`);
    }
    requireRank(q, [3], 'pagedAttention: q');
    requireRank(kPool, [4], 'pagedAttention: kPool');
    const device = requireSameDevice('pagedAttention', ['q', q], ['kPool', kPool], ['vPool', vPool]);
    const [totalQ, heads, headDim] = q.shape as [number, number, number];
    const [numPages, pageSize, kvHeads, poolDim] = kPool.shape as [number, number, number, number];
    if (poolDim !== headDim) throw new InvalidArgumentError(`pagedAttention: kPool head size ${poolDim} differs from q's ${headDim}`, 'kPool');
    if (kvHeads === 0 || heads % kvHeads !== 0) {
      throw new InvalidArgumentError(`pagedAttention: kv heads (${kvHeads}) must divide query heads (${heads})`, 'kPool');
    }
    if (vPool.shape.join() !== kPool.shape.join() || vPool.dtype !== kPool.dtype) {
      throw new InvalidArgumentError('pagedAttention: vPool must match kPool in shape and dtype', 'vPool');
    }
    const seqs = options.sequences;
    if (!Array.isArray(seqs) || seqs.length === 0) throw new InvalidArgumentError('pagedAttention: sequences must be a non-empty array', 'sequences');
    const qStart = new Int32Array(seqs.length + 1);
    const tableStart = new Int32Array(seqs.length + 1);
    const kvLen = new Int32Array(seqs.length);
    const table: number[] = [];
    const valueTable: number[] = [];
    const rowsTable: number[] = [];
    const paged = { values: seqs.some((s) => s.valuePages !== undefined), rows: seqs.some((s) => s.pageRows !== undefined) };
    const visible = new Int32Array(totalQ);
    seqs.forEach((s, i) => {
      const where = `pagedAttention: sequences[${i}]`;
      if (!Number.isInteger(s.queries) || s.queries < 0) throw new InvalidArgumentError(`${where}.queries must be a non-negative integer`, 'sequences');
      if (!Number.isInteger(s.kvLength) || s.kvLength < 0) throw new InvalidArgumentError(`${where}.kvLength must be a non-negative integer`, 'sequences');
      if (options.visible === undefined && s.queries > s.kvLength) {
        throw new InvalidArgumentError(`${where}: ${s.queries} queries cannot be the newest slots of a ${s.kvLength}-slot cache (pass visible)`, 'sequences');
      }
      if (s.kvLength > s.pages.length * pageSize) {
        throw new InvalidArgumentError(`${where}: kvLength ${s.kvLength} needs ${Math.ceil(s.kvLength / pageSize)} pages but has ${s.pages.length}`, 'sequences');
      }
      s.pages.forEach((pg, j) => {
        if (!(Number.isInteger(pg) && pg >= 0 && pg < numPages)) throw new InvalidArgumentError(`${where}.pages[${j}] = ${pg} is not a page of the pool [0, ${numPages})`, 'sequences');
      });
      for (const [name, list, ok] of [
        ['valuePages', s.valuePages, (x: number) => x >= 0 && x < numPages],
        ['pageRows', s.pageRows, (x: number) => x >= 0 && x <= pageSize],
      ] as const) {
        if (list === undefined) continue;
        if (list.length !== s.pages.length) throw new InvalidArgumentError(`${where}.${name} needs one entry per page (${s.pages.length})`, 'sequences');
        list.forEach((x, j) => {
          if (!(Number.isInteger(x) && ok(x))) throw new InvalidArgumentError(`${where}.${name}[${j}] = ${x} is out of range`, 'sequences');
        });
      }
      if (paged.values) valueTable.push(...(s.valuePages ?? s.pages));
      if (paged.rows) rowsTable.push(...(s.pageRows ?? s.pages.map(() => pageSize)));
      qStart[i + 1] = qStart[i]! + s.queries;
      tableStart[i + 1] = tableStart[i]! + s.pages.length;
      kvLen[i] = s.kvLength;
      table.push(...s.pages);
      for (let r = 0; r < s.queries; r++) visible[qStart[i]! + r] = s.kvLength - s.queries + r + 1;
    });
    if (qStart[seqs.length] !== totalQ) {
      throw new InvalidArgumentError(`pagedAttention: the sequences have ${qStart[seqs.length]} queries but q has ${totalQ} rows`, 'sequences');
    }
    if (options.visible !== undefined) {
      if (options.visible.length !== totalQ) throw new InvalidArgumentError(`pagedAttention: visible needs ${totalQ} entries`, 'visible');
      seqs.forEach((s, i) => {
        for (let r = qStart[i]!; r < qStart[i + 1]!; r++) {
          const v = options.visible![r]!;
          if (!(Number.isInteger(v) && v >= 0 && v <= s.kvLength)) {
            throw new InvalidArgumentError(`pagedAttention: visible[${r}] = ${v} is outside [0, ${s.kvLength}]`, 'visible');
          }
          visible[r] = v;
        }
      });
    }
    const scale = optNumber(options.scale, 1 / Math.sqrt(headDim), 'pagedAttention: scale', () => true, 'a finite number');
    const window = options.window;
    if (window !== undefined && !(Number.isSafeInteger(window) && window >= 1)) {
      throw new InvalidArgumentError(`pagedAttention: window: expected a positive integer but received ${describe(window)}`, 'window');
    }
    const ranges = options.rangeMass === undefined ? undefined : massRanges(options.rangeMass, seqs.length);
    let logDecay: Float32Array | undefined;
    if (options.scoreDecay !== undefined) {
      const betas = typeof options.scoreDecay === 'number' ? seqs.map(() => options.scoreDecay as number) : options.scoreDecay;
      if (!Array.isArray(betas) || betas.length !== seqs.length || !betas.every((b) => typeof b === 'number' && b > 0 && b <= 1)) {
        throw new InvalidArgumentError(`pagedAttention: scoreDecay: expected a number in (0, 1] or one per sequence but received ${describe(options.scoreDecay)}`, 'scoreDecay');
      }
      logDecay = Float32Array.from(betas, (b) => Math.log(b));
    }
    let lastRows: Int32Array | undefined;
    if (options.scoreRows !== undefined) {
      const rows = typeof options.scoreRows === 'number' ? seqs.map(() => options.scoreRows as number) : options.scoreRows;
      if (!Array.isArray(rows) || rows.length !== seqs.length || !rows.every((n) => Number.isInteger(n) && n >= 1 && n < 2 ** 31)) {
        throw new InvalidArgumentError(`pagedAttention: scoreRows: expected a positive integer or one per sequence but received ${describe(options.scoreRows)}`, 'scoreRows');
      }
      lastRows = Int32Array.from(rows);
    }
    const split = contextSplit(seqs);
    if (split && (options.attnSum || options.kvAttnSum || ranges)) {
      throw new InvalidArgumentError('pagedAttention: scores (attnSum, kvAttnSum, rangeMass) are not defined with a sequence context (two-part attention)', 'sequences');
    }
    const maxKv = Math.max(0, ...kvLen);
    const idx = [qStart, kvLen, tableStart, Int32Array.from(table.length ? table : [0]), visible].map((a) => Tensor.from(a, { device }));
    if (window !== undefined) idx.push(Tensor.from(visible.map((v) => Math.max(0, v - window)), { device }));
    const out = Tensor.empty(q.shape, { dtype: q.dtype, device });
    const attnSum = options.attnSum ? Tensor.zeros([seqs.length, heads, maxKv], { dtype: 'f32', device }) : undefined;
    const kvAttnSum = options.kvAttnSum ? Tensor.zeros([seqs.length, kvHeads, maxKv], { dtype: 'f32', device }) : undefined;
    const numRanges = ranges ? ranges.length / (2 * seqs.length) : 0;
    const rangeTable = ranges ? Tensor.from(ranges, { device }) : undefined;
    const rangeMass = ranges ? Tensor.zeros([totalQ, heads, numRanges], { dtype: 'f32', device }) : undefined;
    const decayTensor = logDecay ? Tensor.from(logDecay, { device }) : undefined;
    const rowsTensor = lastRows ? Tensor.from(lastRows, { device }) : undefined;
    const pagedTables = [paged.values ? valueTable : null, paged.rows ? rowsTable : null].map((t) =>
      t === null ? null : Tensor.from(Int32Array.from(t.length ? t : [0]), { device }),
    );
    const splitTable = split ? Tensor.from(split, { device }) : undefined;
    try {
      const [qs, kl, ts, pt, vis, first] = idx.map((t) => t.handle()) as [ReturnType<Tensor['handle']>, ...ReturnType<Tensor['handle']>[]];
      native().ops.pagedAttention(q.handle(), kPool.handle(), vPool.handle(), out.handle(), qs, kl!, ts!, pt!, vis!, attnSum ? attnSum.handle() : null, {
        heads, kvHeads, headDim, pageSize, numPages, seqs: seqs.length, totalQ, maxKv, scale, numRanges,
      }, first ?? null, pagedTables[0]?.handle() ?? null, pagedTables[1]?.handle() ?? null,
      kvAttnSum?.handle() ?? null, rangeTable?.handle() ?? null, rangeMass?.handle() ?? null, decayTensor?.handle() ?? null, rowsTensor?.handle() ?? null, splitTable?.handle() ?? null);
    } finally {
      decayTensor?.dispose();
      rowsTensor?.dispose();
      for (const t of idx) t.dispose();
      for (const t of pagedTables) t?.dispose();
      rangeTable?.dispose();
      splitTable?.dispose();
    }
    return { out, attnSum, kvAttnSum, rangeMass };
  },

  /** Index of the largest value per row (last axis); ties pick the lower index. */
  argmax(x: Tensor): Tensor {
    const { values, indices } = ops.topk(x, 1);
    values.dispose();
    const shape = x.shape.slice(0, -1);
    const out = indices.reshape(shape.length === 0 ? [1] : shape);
    indices.dispose();
    return out;
  },
};

export type Ops = typeof ops;
export type { DType };
