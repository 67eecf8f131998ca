// Tensor: a typed, shaped view of device memory. Work on tensors is queued on the device's
// native job queue, so creating a tensor or calling an op never blocks; reading values back
// (toArray) is the one asynchronous step and waits for every op queued before it.
import type { DeviceName, DType, NativeTensor } from './binding.js';
import { DisposedError, InvalidArgumentError, KvfocusError } from './errors.js';
import { native } from './loader.js';

export type { DeviceName, DType } from './binding.js';
export type FloatDType = 'f32' | 'f16' | 'bf16';
export type TensorData = Float32Array | Int32Array | Uint8Array | Uint16Array;
/** What toArray() resolves to: float dtypes widen exactly to Float32Array. */
export type TensorValues = Float32Array | Int32Array | Uint8Array;

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u8'];
const BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u8: 1 };

export function dtypeBytes(dtype: DType): number {
  return BYTES[dtype];
}

export function isFloat(dtype: DType): dtype is FloatDType {
  return dtype === 'f32' || dtype === 'f16' || dtype === 'bf16';
}

export function checkDType(value: unknown, what: string): DType {
  if (typeof value === 'string' && (DTYPES as readonly string[]).includes(value)) return value as DType;
  throw new InvalidArgumentError(`${what}: expected one of ${DTYPES.join(', ')} but received ${describe(value)}`, what);
}

export function checkDevice(value: unknown, what: string): DeviceName {
  if (value === 'cpu' || value === 'cuda' || (typeof value === 'string' && /^cuda:\d{1,3}$/.test(value))) {
    return value as DeviceName;
  }
  throw new InvalidArgumentError(`${what}: expected 'cpu', 'cuda' or 'cuda:N' but received ${describe(value)}`, what);
}

export function checkShape(value: unknown, what: string): number[] {
  if (!Array.isArray(value)) throw new InvalidArgumentError(`${what}: expected an array of dimensions but received ${describe(value)}`, what);
  value.forEach((d, i) => {
    if (!Number.isSafeInteger(d) || (d as number) < 0) {
      throw new InvalidArgumentError(`${what}[${i}]: expected a non-negative integer but received ${describe(d)}`, what);
    }
  });
  return [...(value as number[])];
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of length ${(v as unknown as { length?: number }).length ?? v.byteLength}`;
  if (typeof v === 'string') return `'${v}'`;
  if (typeof v === 'object') return `an object (${(v as object).constructor?.name ?? 'Object'})`;
  return `${typeof v} ${String(v)}`;
}

// Dropped-without-dispose tensors release their native memory when collected. Explicit
// dispose() (or `using`) is still the way to free device memory promptly.
const registry = new FinalizationRegistry<NativeTensor>((handle) => handle.release());

// Natural TypedArray for raw storage of each dtype (f16/bf16 bits as Uint16Array).
function storageMatches(data: TensorData, dtype: DType): boolean {
  switch (dtype) {
    case 'f32':
      return data instanceof Float32Array;
    case 'f16':
    case 'bf16':
      return data instanceof Uint16Array || data instanceof Float32Array;
    case 'i32':
      return data instanceof Int32Array;
    case 'u8':
      return data instanceof Uint8Array;
  }
}

function defaultDType(data: TensorData): DType {
  if (data instanceof Float32Array) return 'f32';
  if (data instanceof Int32Array) return 'i32';
  if (data instanceof Uint8Array) return 'u8';
  throw new InvalidArgumentError('data: a Uint16Array holds raw f16 or bf16 bits; pass dtype: "f16" or "bf16"', 'dtype');
}

// An ArrayBuffer is raw storage: it needs a dtype to say how to read it.
function viewOf(buffer: ArrayBuffer, dtype: DType | undefined): TensorData {
  if (dtype === undefined) throw new InvalidArgumentError('data: an ArrayBuffer holds raw bytes; pass its dtype', 'dtype');
  const d = checkDType(dtype, 'dtype');
  if (buffer.byteLength % BYTES[d] !== 0) {
    throw new InvalidArgumentError(`data: ${buffer.byteLength} bytes are not a whole number of ${d} elements (${BYTES[d]} bytes each)`, 'data');
  }
  switch (d) {
    case 'f32':
      return new Float32Array(buffer);
    case 'f16':
    case 'bf16':
      return new Uint16Array(buffer);
    case 'i32':
      return new Int32Array(buffer);
    case 'u8':
      return new Uint8Array(buffer);
  }
}

// Rejections from the native queue carry no JavaScript frames; give them the caller's.
async function withCallSite<R>(site: Error, p: Promise<R>): Promise<R> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof KvfocusError && site.stack) {
      e.stack = `${e.name}: ${e.message}\n${site.stack.split('\n').slice(1).join('\n')}`;
    }
    throw e;
  }
}

export interface TensorOptions {
  shape?: readonly number[];
  dtype?: DType;
  device?: DeviceName;
}

export class Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly device: DeviceName;
  #handle: NativeTensor | null;

  /** @internal Use the static factories. */
  constructor(handle: NativeTensor, dtype: DType, shape: readonly number[], device: DeviceName) {
    this.#handle = handle;
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.device = device;
    registry.register(this, handle, this);
  }

  /**
   * A tensor holding a copy of `data`. The dtype defaults to the array's (Float32Array: f32,
   * Int32Array: i32, Uint8Array: u8). A Float32Array with dtype f16/bf16 is rounded to nearest
   * even; a Uint16Array with dtype f16/bf16 is taken as raw bits; an ArrayBuffer is raw storage
   * of the given dtype. The shape defaults to 1-D.
   */
  static from(data: TensorData | ArrayBuffer, options: TensorOptions = {}): Tensor {
    if (data instanceof ArrayBuffer) return Tensor.from(viewOf(data, options.dtype), options);
    if (!(data instanceof Float32Array || data instanceof Int32Array || data instanceof Uint8Array || data instanceof Uint16Array)) {
      throw new InvalidArgumentError(`data: expected a Float32Array, Int32Array, Uint8Array or Uint16Array but received ${describe(data)}`, 'data');
    }
    const dtype = options.dtype === undefined ? defaultDType(data) : checkDType(options.dtype, 'dtype');
    const device = checkDevice(options.device ?? 'cpu', 'device');
    const shape = options.shape === undefined ? [data.length] : checkShape(options.shape, 'shape');
    if (numel(shape) !== data.length) {
      throw new InvalidArgumentError(`shape: [${shape.join(', ')}] has ${numel(shape)} elements but data has ${data.length}`, 'shape');
    }
    if (!storageMatches(data, dtype)) {
      throw new InvalidArgumentError(`data: a ${data.constructor.name} cannot hold dtype ${dtype}`, 'data');
    }
    const b = native();
    if (data instanceof Float32Array && dtype !== 'f32') {
      // Round once, natively, with the same conversion the kernels use.
      const f32 = b.fromBytes(device, 'f32', shape, data);
      try {
        const out = b.empty(device, dtype, shape, false);
        b.ops.cast(f32, out);
        return new Tensor(out, dtype, shape, device);
      } finally {
        f32.release();
      }
    }
    return new Tensor(b.fromBytes(device, dtype, shape, data), dtype, shape, device);
  }

  static zeros(shape: readonly number[], options: { dtype?: DType; device?: DeviceName } = {}): Tensor {
    const s = checkShape(shape, 'shape');
    const dtype = checkDType(options.dtype ?? 'f32', 'dtype');
    const device = checkDevice(options.device ?? 'cpu', 'device');
    return new Tensor(native().empty(device, dtype, s, true), dtype, s, device);
  }

  /** A tensor with unspecified contents, to be written by an op. */
  static empty(shape: readonly number[], options: { dtype?: DType; device?: DeviceName } = {}): Tensor {
    const s = checkShape(shape, 'shape');
    const dtype = checkDType(options.dtype ?? 'f32', 'dtype');
    const device = checkDevice(options.device ?? 'cpu', 'device');
    return new Tensor(native().empty(device, dtype, s, false), dtype, s, device);
  }

  get size(): number {
    return numel(this.shape);
  }

  get byteLength(): number {
    return this.size * BYTES[this.dtype];
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  /** @internal The native handle, for ops. */
  handle(what = 'tensor'): NativeTensor {
    if (this.#handle === null) throw new DisposedError(`${what}: the tensor has been disposed`);
    return this.#handle;
  }

  /** The values, after every op queued before this call. f16/bf16 widen exactly to f32. */
  async toArray(): Promise<TensorValues> {
    const site = new Error();
    if (this.dtype === 'f16' || this.dtype === 'bf16') {
      const wide = this.cast('f32');
      try {
        return (await withCallSite(site, wide.raw())) as Float32Array;
      } finally {
        wide.dispose();
      }
    }
    return (await withCallSite(site, this.raw())) as TensorValues;
  }

  /** The stored values without conversion: f16/bf16 as their raw bits in a Uint16Array. */
  async raw(): Promise<TensorData> {
    const site = new Error();
    const bytes = await withCallSite(site, this.handle('raw').read());
    switch (this.dtype) {
      case 'f32':
        return new Float32Array(bytes);
      case 'f16':
      case 'bf16':
        return new Uint16Array(bytes);
      case 'i32':
        return new Int32Array(bytes);
      case 'u8':
        return new Uint8Array(bytes);
    }
  }

  /** A copy on `device` (the same tensor's data, queued after its producers). */
  to(device: DeviceName): Tensor {
    const d = checkDevice(device, 'device');
    return new Tensor(this.handle('to').copyTo(d), this.dtype, this.shape, d);
  }

  /** A copy converted to `dtype` (round to nearest even between float types). */
  cast(dtype: DType): Tensor {
    const d = checkDType(dtype, 'dtype');
    if (!isFloat(d)) throw new InvalidArgumentError(`cast: dtype must be f32, f16 or bf16 but received '${d}'`, 'dtype');
    const b = native();
    const out = b.empty(this.device, d, [...this.shape], false);
    b.ops.cast(this.handle('cast'), out);
    return new Tensor(out, d, this.shape, this.device);
  }

  /** A view with another shape of the same size, sharing memory. */
  reshape(shape: readonly number[]): Tensor {
    const s = checkShape(shape, 'shape');
    if (numel(s) !== this.size) {
      throw new InvalidArgumentError(`reshape: [${s.join(', ')}] has ${numel(s)} elements, the tensor [${this.shape.join(', ')}] has ${this.size}`, 'shape');
    }
    return new Tensor(this.handle('reshape').view(s), this.dtype, s, this.device);
  }

  /** Frees this handle's reference to the memory now. Idempotent. */
  dispose(): void {
    if (this.#handle === null) return;
    registry.unregister(this);
    this.#handle.release();
    this.#handle = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}
