// safetensors headers, single-file and sharded, read without touching the tensor data.
//
// Layout of a .safetensors file (https://github.com/huggingface/safetensors):
//   [u64 little-endian N][N bytes of UTF-8 JSON header][data section]
// The header maps tensor names to { dtype, shape, data_offsets: [begin, end] }, offsets being
// relative to the start of the data section, plus an optional "__metadata__" string map.
//
// The native side memory-maps the files and trusts the ranges produced here, so everything that
// could put a read outside the file, or make two tensors alias, is rejected with a
// ModelFormatError naming the file and the tensor.

import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { ModelFormatError } from '../errors.js';
import { describeValue, fileExists, isJsonObject, parseJsonText, readJsonFile } from './json-file.js';
import { openModelFile } from './model-files.js';

/** Tensor element types kvfocus recognises. Weights are F32/F16/BF16; the integer types occur in
 * auxiliary tensors and are described so callers can say precisely what they cannot use. */
export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'I32' | 'U8' | 'I64';

export const SAFETENSORS_DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  I32: 4,
  U8: 1,
  I64: 8,
};

/** Same bound as the reference implementation (safetensors' MAX_HEADER_SIZE): a longer header is
 * a corrupt length field, not a real checkpoint, and must not make us allocate gigabytes. */
export const MAX_HEADER_BYTES = 100_000_000;

const HEADER_LENGTH_BYTES = 8;
const METADATA_KEY = '__metadata__';
const SHARD_INDEX_FILE = 'model.safetensors.index.json';
const SINGLE_FILE = 'model.safetensors';

/** Where one tensor's bytes live. Offsets are absolute within `file`. */
export interface TensorInfo {
  readonly name: string;
  /** Absolute path of the .safetensors file that holds the data. */
  readonly file: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** Absolute offset of the first byte in `file` (8 + header length + data_offsets[0]). */
  readonly byteOffset: number;
  /** Number of bytes: product(shape) * bytes per element. */
  readonly byteLength: number;
}

/** The validated header of one .safetensors file. */
export interface SafetensorsFile {
  readonly file: string;
  readonly fileSize: number;
  /** N, the length of the JSON header. */
  readonly headerLength: number;
  /** Absolute offset of the data section (8 + N). */
  readonly dataOffset: number;
  readonly metadata: Readonly<Record<string, string>>;
  /** In header order. */
  readonly tensors: readonly TensorInfo[];
}

function formatError(file: string, detail: string): ModelFormatError {
  return new ModelFormatError(`${path.basename(file)}: ${detail}`, file);
}

/**
 * Reads and validates the header of one .safetensors file. Only the 8-byte length and the JSON
 * header are read. Pass an open `handle` to reuse a descriptor the caller already holds; without
 * one, the file is opened as model-files.ts opens every model file (a regular file inside `dir`,
 * by default the file's folder, or inside its HF cache blobs).
 */
export async function readSafetensorsHeader(file: string, handle?: FileHandle, dir?: string): Promise<SafetensorsFile> {
  const absolute = path.resolve(file);
  let owned: FileHandle | undefined;
  try {
    // The data section is memory-mapped, not read: no size limit beyond the header's.
    if (handle === undefined) owned = (await openModelFile(absolute, { limit: Infinity, ...(dir === undefined ? {} : { dir }) })).handle;
    const fh = handle ?? owned!;
    const fileSize = (await fh.stat().catch((error: unknown) => {
      throw formatError(absolute, `cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
    })).size;
    if (fileSize < HEADER_LENGTH_BYTES) {
      throw formatError(absolute, `truncated: the file is ${fileSize} bytes, too short for the 8-byte header length`);
    }
    const lengthBytes = Buffer.alloc(HEADER_LENGTH_BYTES);
    await readExactly(fh, lengthBytes, 0, absolute);
    const headerLength = checkHeaderLength(lengthBytes.readBigUInt64LE(0), fileSize, absolute);
    const header = Buffer.alloc(headerLength);
    await readExactly(fh, header, HEADER_LENGTH_BYTES, absolute);
    return parseSafetensorsHeader(header, fileSize, absolute);
  } finally {
    await owned?.close();
  }
}

async function readExactly(fh: FileHandle, into: Buffer, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < into.length) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await fh.read(into, done, into.length - done, position + done));
    } catch (error) {
      throw formatError(file, `cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
    }
    if (bytesRead === 0) break; // the file shrank under us; the size checks will not see it
    done += bytesRead;
  }
  if (done < into.length) throw formatError(file, `truncated: unexpected end of file after ${position + done} bytes`);
}

function checkHeaderLength(length: bigint, fileSize: number, file: string): number {
  if (length > BigInt(MAX_HEADER_BYTES)) {
    throw formatError(file, `header length ${length} is absurd (limit ${MAX_HEADER_BYTES} bytes); the file is corrupt or not safetensors`);
  }
  const n = Number(length);
  if (HEADER_LENGTH_BYTES + n > fileSize) {
    throw formatError(file, `truncated: header length ${n} runs past the end of the file (${fileSize} bytes)`);
  }
  return n;
}

/**
 * Validates a header already in memory. `header` is the N JSON bytes (without the 8-byte length)
 * and `fileSize` the size of the whole file, which bounds the data section.
 */
export function parseSafetensorsHeader(header: Uint8Array, fileSize: number, file: string): SafetensorsFile {
  const headerLength = header.length;
  const dataOffset = HEADER_LENGTH_BYTES + headerLength;
  if (dataOffset > fileSize) {
    throw formatError(file, `truncated: header length ${headerLength} runs past the end of the file (${fileSize} bytes)`);
  }
  const dataSize = fileSize - dataOffset;

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(header);
  } catch {
    throw formatError(file, 'header is not valid UTF-8');
  }
  const json = parseJsonText(text, file, 'header');
  if (!isJsonObject(json)) {
    throw formatError(file, `header must be a JSON object, got ${describeValue(json)}`);
  }

  let metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === METADATA_KEY) {
      metadata = parseMetadata(entry, file);
      continue;
    }
    tensors.push(parseTensorEntry(name, entry, file, dataOffset, dataSize));
  }
  checkNoOverlap(tensors, file, dataOffset);
  return { file, fileSize, headerLength, dataOffset, metadata, tensors };
}

function parseMetadata(entry: unknown, file: string): Record<string, string> {
  if (!isJsonObject(entry)) {
    throw formatError(file, `${METADATA_KEY} must be an object of strings, got ${describeValue(entry)}`);
  }
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== 'string') {
      throw formatError(file, `${METADATA_KEY}.${key} must be a string, got ${describeValue(value)}`);
    }
    metadata[key] = value;
  }
  return metadata;
}

function isSafetensorsDtype(value: string): value is SafetensorsDtype {
  return Object.prototype.hasOwnProperty.call(SAFETENSORS_DTYPE_BYTES, value);
}

function parseTensorEntry(name: string, entry: unknown, file: string, dataOffset: number, dataSize: number): TensorInfo {
  const where = `tensor '${name}'`;
  if (!isJsonObject(entry)) {
    throw formatError(file, `${where} must be an object with dtype, shape and data_offsets, got ${describeValue(entry)}`);
  }
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string') {
    throw formatError(file, `${where} has no dtype string (got ${describeValue(dtype)})`);
  }
  if (!isSafetensorsDtype(dtype)) {
    const known = Object.keys(SAFETENSORS_DTYPE_BYTES).join(', ');
    throw formatError(file, `${where} has unknown dtype ${describeValue(dtype)} (kvfocus reads ${known})`);
  }
  if (!Array.isArray(shape)) {
    throw formatError(file, `${where} has no shape array (got ${describeValue(shape)})`);
  }
  for (const dim of shape) {
    if (typeof dim !== 'number' || !Number.isSafeInteger(dim) || dim < 0) {
      throw formatError(file, `${where} has invalid dimension ${describeValue(dim)} in shape ${describeValue(shape)}; dims must be non-negative integers`);
    }
  }
  const dims = shape as number[];
  if (!Array.isArray(offsets) || offsets.length !== 2) {
    throw formatError(file, `${where} must have data_offsets [begin, end], got ${describeValue(offsets)}`);
  }
  const [begin, end] = offsets as unknown[];
  if (typeof begin !== 'number' || typeof end !== 'number' || !Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < begin) {
    throw formatError(file, `${where} has invalid data_offsets ${describeValue(offsets)}; need integers 0 <= begin <= end`);
  }
  if (end > dataSize) {
    throw formatError(file, `${where} data_offsets [${begin}, ${end}] lie outside the data section (${dataSize} bytes)`);
  }
  // BigInt: a hostile shape can overflow 2^53 long before it is obviously wrong.
  const elements = dims.reduce((product, dim) => product * BigInt(dim), 1n);
  const expectedBytes = elements * BigInt(SAFETENSORS_DTYPE_BYTES[dtype]);
  const spanned = end - begin;
  if (expectedBytes !== BigInt(spanned)) {
    throw formatError(file, `${where} has shape [${dims.join(', ')}] and dtype ${dtype} (${expectedBytes} bytes) but data_offsets span ${spanned} bytes`);
  }
  return { name, file, dtype, shape: dims, byteOffset: dataOffset + begin, byteLength: spanned };
}

function checkNoOverlap(tensors: readonly TensorInfo[], file: string, dataOffset: number): void {
  // Empty tensors occupy no bytes and cannot alias anything.
  const sorted = tensors.filter((t) => t.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset);
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1]!;
    const current = sorted[i]!;
    if (current.byteOffset < previous.byteOffset + previous.byteLength) {
      const range = (t: TensorInfo): string => `[${t.byteOffset - dataOffset}, ${t.byteOffset - dataOffset + t.byteLength}]`;
      throw formatError(file, `tensors '${previous.name}' ${range(previous)} and '${current.name}' ${range(current)} overlap`);
    }
  }
}

/** All tensors of a checkpoint by name, each with the file and byte range that holds it. */
export class SafetensorsIndex implements Iterable<TensorInfo> {
  readonly #tensors: ReadonlyMap<string, TensorInfo>;

  constructor(
    /** The file that describes the checkpoint: the index JSON when sharded, else the one file. */
    readonly source: string,
    /** Every file read, in the order read. */
    readonly files: readonly SafetensorsFile[],
    tensors: Iterable<TensorInfo>,
  ) {
    this.#tensors = new Map([...tensors].map((t) => [t.name, t]));
  }

  get size(): number {
    return this.#tensors.size;
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  get(name: string): TensorInfo | undefined {
    return this.#tensors.get(name);
  }

  /** The tensor, or a ModelFormatError naming it and the checkpoint. */
  tensor(name: string): TensorInfo {
    const info = this.#tensors.get(name);
    if (info === undefined) throw formatError(this.source, `no tensor named '${name}'`);
    return info;
  }

  names(): string[] {
    return [...this.#tensors.keys()];
  }

  [Symbol.iterator](): Iterator<TensorInfo> {
    return this.#tensors.values();
  }
}

/** Reads one .safetensors file into an index. */
export async function openSafetensorsFile(file: string): Promise<SafetensorsIndex> {
  const header = await readSafetensorsHeader(file);
  return new SafetensorsIndex(header.file, [header], header.tensors);
}

/**
 * Reads a sharded checkpoint from its model.safetensors.index.json: every shard named in
 * weight_map must exist inside the index's folder and hold the tensors mapped to it. Tensors a
 * shard holds but weight_map does not list are left out, as transformers does.
 */
export async function openShardedSafetensors(indexFile: string): Promise<SafetensorsIndex> {
  const source = path.resolve(indexFile);
  const dir = path.dirname(source);
  const json = await readJsonFile(source, { dir });
  if (!isJsonObject(json)) throw formatError(source, `must be a JSON object, got ${describeValue(json)}`);
  const weightMap = json['weight_map'];
  if (!isJsonObject(weightMap)) throw formatError(source, `weight_map must be an object of tensor name -> shard file, got ${describeValue(weightMap)}`);

  const namesByShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard.length === 0) {
      throw formatError(source, `weight_map['${name}'] must be a shard file name, got ${describeValue(shard)}`);
    }
    const shardPath = path.resolve(dir, shard);
    // A shard outside the model folder would let a downloaded index read arbitrary files.
    const relative = path.relative(dir, shardPath);
    if (path.isAbsolute(shard) || relative === '..' || relative.startsWith(`..${path.sep}`)) {
      throw formatError(source, `weight_map['${name}'] points outside the model folder: ${shard}`);
    }
    const names = namesByShard.get(shardPath) ?? [];
    names.push(name);
    namesByShard.set(shardPath, names);
  }
  if (namesByShard.size === 0) throw formatError(source, 'weight_map is empty');

  const files: SafetensorsFile[] = [];
  const tensors: TensorInfo[] = [];
  for (const [shardPath, names] of namesByShard) {
    if (!(await fileExists(shardPath))) {
      throw formatError(source, `shard ${path.basename(shardPath)} (holding '${names[0]}') does not exist in ${dir}`);
    }
    const header = await readSafetensorsHeader(shardPath, undefined, dir);
    files.push(header);
    const byName = new Map(header.tensors.map((t) => [t.name, t]));
    for (const name of names) {
      const info = byName.get(name);
      if (info === undefined) {
        throw formatError(source, `weight_map puts tensor '${name}' in ${path.basename(shardPath)}, which does not contain it`);
      }
      tensors.push(info);
    }
  }
  return new SafetensorsIndex(source, files, tensors);
}

/**
 * Opens a checkpoint: a .safetensors file, a model.safetensors.index.json, or a model folder
 * holding one of model.safetensors.index.json (preferred) or model.safetensors.
 */
export async function openSafetensors(pathOrDir: string): Promise<SafetensorsIndex> {
  const target = path.resolve(pathOrDir);
  if (target.endsWith('.json')) return openShardedSafetensors(target);
  if (target.endsWith('.safetensors')) return openSafetensorsFile(target);
  const indexFile = path.join(target, SHARD_INDEX_FILE);
  if (await fileExists(indexFile)) return openShardedSafetensors(indexFile);
  const single = path.join(target, SINGLE_FILE);
  if (await fileExists(single)) return openSafetensorsFile(single);
  throw new ModelFormatError(`${SINGLE_FILE}: no weights in ${target} (looked for ${SHARD_INDEX_FILE} and ${SINGLE_FILE})`, single);
}
