// Store entries: the key that names one (model, prefix, document) and the header a persistent
// tier will write before the entry's pages. Only the device tier exists so far; the header is
// the contract the host and disk tiers will serialise (with a checksum of the pages after it).
import { createHash } from 'node:crypto';

/** Version of StoreEntryHeader; a tier refuses entries of another version. */
export const STORE_ENTRY_VERSION = 1;

/** What an entry's pages are, enough to refuse an entry that does not fit the model reading it. */
export interface StoreEntryHeader {
  version: number;
  /** Model fingerprint (weights, KV dtype and page size): entries never cross models. */
  fingerprint: string;
  /** sha256 of the prefix tokens and of the document tokens (little-endian i32). */
  prefixHash: string;
  documentHash: string;
  /** Tokens of the document, at positions prefixTokens .. prefixTokens + tokens - 1. */
  prefixTokens: number;
  tokens: number;
  layers: number;
  kvHeads: number;
  headDim: number;
  pageSize: number;
  kvDtype: string;
}

export function tokensHash(tokens: Int32Array): string {
  return createHash('sha256').update(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength)).digest('hex');
}

/** The key of an entry: (model fingerprint, prefix tokens, document tokens), as hex. */
export function entryKey(fingerprint: string, prefix: Int32Array, document: Int32Array): string {
  return createHash('sha256').update(`${fingerprint}\n${tokensHash(prefix)}\n${tokensHash(document)}`).digest('hex');
}
