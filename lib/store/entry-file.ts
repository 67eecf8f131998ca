// The bytes of one stored entry, as the host tier keeps them and the disk tier writes them: a
// safetensors file (any safetensors reader opens it) holding three tensors,
//   tokens: I32 [n]                      the document's token ids
//   k, v:   <kv dtype> [layers, n, kv_heads, head_dim]   its keys and values, keys rotated to
//                                        positions prefix_tokens .. prefix_tokens + n - 1
// and the entry header (StoreEntryHeader) in __metadata__ as strings, with a CRC-32 of the
// tokens and one of the KV bytes. Tokens come first in the data section, so a reader can check
// an entry's identity (header + tokens: a few KB) without reading its KV.
import zlib from 'node:zlib';
import { ModelFormatError } from '../errors.js';
import { parseSafetensorsHeader, type SafetensorsDtype, type TensorInfo } from '../model/safetensors.js';
import { STORE_ENTRY_VERSION, tokensHash, type StoreEntryHeader } from './entry.js';

/** `__metadata__.format` of every entry file. */
export const ENTRY_FORMAT = 'kvfocus.store-entry';
/** Largest JSON header an entry file may have (ids are bounded, tokens live in the data). */
export const MAX_ENTRY_HEADER_BYTES = 1 << 20;

const KV_DTYPE: Record<string, SafetensorsDtype> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

/** An entry ready to write or keep: the 8-byte length plus JSON header, then the data section (tokens, then k and v). */
export interface EntryBytes {
  head: Buffer;
  tokens: Buffer;
  /** k then v, as NativeKvBlock.read() returns them. */
  kv: Buffer;
}

/** Bytes of the whole entry file. */
export function entrySize(e: EntryBytes): number {
  return e.head.length + e.tokens.length + e.kv.length;
}

/** What the header and tokens of an entry file say (its KV not yet read or checked). */
export interface EntryIdentity {
  id: string;
  header: StoreEntryHeader;
  tokens: Int32Array;
  /** Offset of the data section and of k and v (absolute in the file), and their CRC. */
  dataOffset: number;
  kvOffset: number;
  kvBytes: number;
  kvCrc32: number;
  fileBytes: number;
}

/**
 * Why an entry's bytes cannot be served: damaged (checksum, format), written for another store,
 * or (remote tier, with a secret) without a valid HMAC.
 */
export class EntryDefect extends Error {
  constructor(
    message: string,
    readonly kind: 'corrupt' | 'foreign' | 'untrusted',
  ) {
    super(message);
  }
}

export const crc32: (data: Uint8Array, value?: number) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function' ? (zlib as unknown as { crc32: (d: Uint8Array, v?: number) => number }).crc32 : crc32Table;

// Node < 20.15 has no zlib.crc32: the same CRC (IEEE 802.3), a byte at a time.
let table: Uint32Array | undefined;
function crc32Table(data: Uint8Array, value = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[i] = c >>> 0;
    }
  }
  let c = ~value >>> 0;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** The entry's file bytes from its header, tokens and the KV as NativeKvBlock.read() returns it (not copied). */
export function encodeEntry(id: string, header: StoreEntryHeader, tokens: Int32Array, kv: ArrayBuffer | Uint8Array): EntryBytes {
  const half = kv.byteLength / 2;
  const tokenBytes = Buffer.from(tokens.buffer, tokens.byteOffset, tokens.byteLength);
  const kvBytes = kv instanceof Uint8Array ? Buffer.from(kv.buffer, kv.byteOffset, kv.byteLength) : Buffer.from(kv);
  const shape = [header.layers, header.tokens, header.kvHeads, header.headDim];
  const dtype = KV_DTYPE[header.kvDtype];
  if (!dtype) throw new Error(`encodeEntry: no safetensors dtype for ${header.kvDtype}`);
  const t = tokenBytes.length;
  const json = {
    __metadata__: {
      format: ENTRY_FORMAT,
      version: String(header.version),
      id,
      fingerprint: header.fingerprint,
      prefix_hash: header.prefixHash,
      document_hash: header.documentHash,
      prefix_tokens: String(header.prefixTokens),
      tokens: String(header.tokens),
      layers: String(header.layers),
      kv_heads: String(header.kvHeads),
      head_dim: String(header.headDim),
      page_size: String(header.pageSize),
      kv_dtype: header.kvDtype,
      tokens_crc32: String(crc32(tokenBytes)),
      kv_crc32: String(crc32(kvBytes)),
    },
    tokens: { dtype: 'I32', shape: [header.tokens], data_offsets: [0, t] },
    k: { dtype, shape, data_offsets: [t, t + half] },
    v: { dtype, shape, data_offsets: [t + half, t + 2 * half] },
  };
  let text = JSON.stringify(json);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8); // the data section starts 8-aligned
  const jsonBytes = Buffer.from(text);
  const head = Buffer.alloc(8 + jsonBytes.length);
  head.writeBigUInt64LE(BigInt(jsonBytes.length), 0);
  jsonBytes.copy(head, 8);
  return { head, tokens: Buffer.from(tokenBytes), kv: kvBytes };
}

/**
 * Checks the header of an entry file (`head`: its first bytes, at least the 8-byte length and
 * JSON header; `tokenBytes`: the tokens tensor once its place is known, or undefined to learn the
 * place) and returns what it says. Throws EntryDefect('corrupt') for anything malformed.
 */
export function parseEntryHead(head: Uint8Array, fileBytes: number, file: string): { jsonEnd: number; tokensAt: number; tokensBytes: number; meta: Record<string, string>; tensors: Map<string, TensorInfo> } {
  if (head.length < 8 || fileBytes < 8) throw new EntryDefect(`${file}: truncated (no header length)`, 'corrupt');
  const n = Buffer.from(head.buffer, head.byteOffset, 8).readBigUInt64LE(0);
  if (n > BigInt(MAX_ENTRY_HEADER_BYTES)) throw new EntryDefect(`${file}: header length ${n} is larger than an entry header can be`, 'corrupt');
  const jsonEnd = 8 + Number(n);
  if (head.length < jsonEnd) throw new EntryDefect(`${file}: truncated header`, 'corrupt');
  let parsed;
  try {
    parsed = parseSafetensorsHeader(head.subarray(8, jsonEnd), fileBytes, file);
  } catch (e) {
    throw new EntryDefect(e instanceof ModelFormatError ? e.message : String(e), 'corrupt');
  }
  const tensors = new Map(parsed.tensors.map((t) => [t.name, t]));
  const tok = tensors.get('tokens');
  if (!tok || tok.dtype !== 'I32') throw new EntryDefect(`${file}: no I32 'tokens' tensor`, 'corrupt');
  return { jsonEnd, tokensAt: tok.byteOffset, tokensBytes: tok.byteLength, meta: { ...parsed.metadata }, tensors };
}

/** The identity of an entry from its parsed head and its tokens' bytes: checks everything but the KV's CRC. */
export function entryIdentity(p: ReturnType<typeof parseEntryHead>, tokenBytes: Uint8Array, fileBytes: number, file: string): EntryIdentity {
  const m = p.meta;
  if (m.format !== ENTRY_FORMAT) throw new EntryDefect(`${file}: not a kvfocus store entry (format ${JSON.stringify(m.format)})`, 'foreign');
  if (m.version !== String(STORE_ENTRY_VERSION)) throw new EntryDefect(`${file}: entry format version ${m.version}, this kvfocus reads ${STORE_ENTRY_VERSION}`, 'foreign');
  const int = (key: string): number => {
    const v = m[key];
    if (v === undefined || !/^\d{1,15}$/.test(v)) throw new EntryDefect(`${file}: metadata ${key} is ${JSON.stringify(v)}, expected an integer`, 'corrupt');
    return Number(v);
  };
  const header: StoreEntryHeader = {
    version: STORE_ENTRY_VERSION,
    fingerprint: m.fingerprint ?? '',
    prefixHash: m.prefix_hash ?? '',
    documentHash: m.document_hash ?? '',
    prefixTokens: int('prefix_tokens'),
    tokens: int('tokens'),
    layers: int('layers'),
    kvHeads: int('kv_heads'),
    headDim: int('head_dim'),
    pageSize: int('page_size'),
    kvDtype: m.kv_dtype ?? '',
  };
  const id = m.id;
  if (typeof id !== 'string') throw new EntryDefect(`${file}: metadata has no id`, 'corrupt');
  if (crc32(tokenBytes) !== int('tokens_crc32')) throw new EntryDefect(`${file}: the tokens' checksum does not match`, 'corrupt');
  const tokens = new Int32Array(tokenBytes.byteLength / 4);
  Buffer.from(tokens.buffer).set(tokenBytes);
  if (tokens.length !== header.tokens || tokensHash(tokens) !== header.documentHash) throw new EntryDefect(`${file}: the tokens do not match the header`, 'corrupt');
  const k = p.tensors.get('k');
  const v = p.tensors.get('v');
  const dtype = KV_DTYPE[header.kvDtype];
  const shape = [header.layers, header.tokens, header.kvHeads, header.headDim].join();
  if (!k || !v || !dtype || k.dtype !== dtype || v.dtype !== dtype || k.shape.join() !== shape || v.shape.join() !== shape || v.byteOffset !== k.byteOffset + k.byteLength) {
    throw new EntryDefect(`${file}: k and v tensors do not match the header`, 'corrupt');
  }
  if (v.byteOffset + v.byteLength !== fileBytes || p.tokensAt + p.tokensBytes !== k.byteOffset) throw new EntryDefect(`${file}: unexpected data layout (or trailing bytes)`, 'corrupt');
  return { id, header, tokens, dataOffset: p.tokensAt, kvOffset: k.byteOffset, kvBytes: k.byteLength + v.byteLength, kvCrc32: int('kv_crc32'), fileBytes };
}

/** Decodes a whole entry held in memory (host tier, or a file read at once). */
export function decodeEntry(bytes: Uint8Array, file: string): { identity: EntryIdentity; kv: Uint8Array } {
  const p = parseEntryHead(bytes, bytes.length, file);
  const identity = entryIdentity(p, bytes.subarray(p.tokensAt, p.tokensAt + p.tokensBytes), bytes.length, file);
  const kv = bytes.subarray(identity.kvOffset, identity.kvOffset + identity.kvBytes);
  if (crc32(kv) !== identity.kvCrc32) throw new EntryDefect(`${file}: the KV checksum does not match (damaged entry)`, 'corrupt');
  return { identity, kv };
}
