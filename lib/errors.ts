// Typed errors. Every error kvfocus throws or rejects with is a KvfocusError with a stable
// `code`; native failures arrive here as a (code, message) pair and are rebuilt as the matching
// subclass with the JavaScript call site's stack.

export type ErrorCode =
  | 'KVFOCUS_ERROR'
  | 'KVFOCUS_INVALID_ARGUMENT'
  | 'KVFOCUS_DEVICE_ERROR'
  | 'KVFOCUS_OUT_OF_MEMORY'
  | 'KVFOCUS_DISPOSED'
  | 'KVFOCUS_UNSUPPORTED'
  | 'KVFOCUS_MODEL_FORMAT'
  | 'KVFOCUS_ABORTED'
  | 'KVFOCUS_QUEUE_FULL'
  | 'KVFOCUS_LOAD_ERROR'
  | 'KVFOCUS_DISK_FULL'
  | 'KVFOCUS_STORE_IO';

export class KvfocusError extends Error {
  readonly code: ErrorCode;
  constructor(message: string, code: ErrorCode = 'KVFOCUS_ERROR', options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
  override get name(): string {
    return this.constructor.name;
  }
}

/** An argument has the wrong type, shape, dtype, device or value. `argument` names it. */
export class InvalidArgumentError extends KvfocusError {
  readonly argument: string | undefined;
  constructor(message: string, argument?: string) {
    super(message, 'KVFOCUS_INVALID_ARGUMENT');
    this.argument = argument;
  }
}

/** A GPU/driver failure, or a device that is not available. */
export class DeviceError extends KvfocusError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'KVFOCUS_DEVICE_ERROR', options);
  }
}

/** Host or device memory (or the KV page pool) is exhausted. */
export class OutOfMemoryError extends KvfocusError {
  constructor(message: string) {
    super(message, 'KVFOCUS_OUT_OF_MEMORY');
  }
}

/** A tensor, model or other resource was used after dispose(). */
export class DisposedError extends KvfocusError {
  constructor(message: string) {
    super(message, 'KVFOCUS_DISPOSED');
  }
}

/** The operation is not implemented for this backend, dtype or configuration. */
export class UnsupportedError extends KvfocusError {
  constructor(message: string) {
    super(message, 'KVFOCUS_UNSUPPORTED');
  }
}

/** A model file (config.json, safetensors, tokenizer.json, GGUF...) is malformed. `file` names it. */
export class ModelFormatError extends KvfocusError {
  readonly file: string | undefined;
  constructor(message: string, file?: string) {
    super(message, 'KVFOCUS_MODEL_FORMAT');
    this.file = file;
  }
}

/** The operation was cancelled through an AbortSignal; `cause` is the signal's reason. */
export class AbortError extends KvfocusError {
  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super(message, 'KVFOCUS_ABORTED', options);
  }
}

/**
 * A model's request queue already holds `maxQueuedRequests` requests waiting for KV pages: the
 * request is refused at once instead of waiting (back-pressure for the caller).
 */
export class QueueFullError extends KvfocusError {
  constructor(message: string) {
    super(message, 'KVFOCUS_QUEUE_FULL');
  }
}

/** The native addon could not be loaded. */
export class LoadError extends KvfocusError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'KVFOCUS_LOAD_ERROR', options);
  }
}

/** The store's disk is full (ENOSPC, EDQUOT, EFBIG): the entry was not written and the store is unchanged. `file` names it. */
export class DiskFullError extends KvfocusError {
  readonly file: string;
  constructor(message: string, file: string, options?: { cause?: unknown }) {
    super(message, 'KVFOCUS_DISK_FULL', options);
    this.file = file;
  }
}

/** Reading or writing a store's folder failed for a reason other than a full disk. `file` names it. */
export class StoreIOError extends KvfocusError {
  readonly file: string;
  constructor(message: string, file: string, options?: { cause?: unknown }) {
    super(message, 'KVFOCUS_STORE_IO', options);
    this.file = file;
  }
}

/** Status codes shared with native/kernels/common.h (StatusCode). */
export const enum NativeStatus {
  Ok = 0,
  InvalidArgument = 1,
  OutOfMemory = 2,
  DeviceError = 3,
  Unsupported = 4,
  Internal = 5,
  Disposed = 6,
}

/** Rebuilds a native (code, message) failure as the matching typed error. */
export function errorFromNative(code: number, message: string): KvfocusError {
  switch (code) {
    case NativeStatus.InvalidArgument:
      return new InvalidArgumentError(message);
    case NativeStatus.OutOfMemory:
      return new OutOfMemoryError(message);
    case NativeStatus.DeviceError:
      return new DeviceError(message);
    case NativeStatus.Unsupported:
      return new UnsupportedError(message);
    case NativeStatus.Disposed:
      return new DisposedError(message);
    default:
      return new KvfocusError(message);
  }
}
