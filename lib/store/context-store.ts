// ContextStore: the Context KV Cache Store of CacheFocus (shared/METHODS.md §1). A shared prefix
// P is encoded once when the store opens; each document d is encoded as [P; d] and the KV of d's
// tokens (computed with P in front, at positions |P| .. |P|+|d|-1) is kept as a block of pages.
// Sequences attach the prefix and any stored documents without recomputing them.
//
// Tiers: only the device tier exists so far (the KV pool's pages). An entry is described by
// StoreEntryHeader (./entry.ts), which the host and disk tiers will serialise with its pages.
import type { NativeKvBlock, NativeModel } from '../binding.js';
import { AbortError, DisposedError, InvalidArgumentError, UnsupportedError } from '../errors.js';
import type { Scheduler } from '../llm/scheduler.js';
import { SequenceState } from '../llm/scheduler.js';
import { describe } from '../tensor.js';
import { checkOptions, checkTokenIds, optionNames } from '../validate.js';
import { entryKey } from './entry.js';

/** Text, or token ids (integers in [0, vocabSize)). */
export type StoreContent = string | readonly number[] | Int32Array;

export interface OpenStoreOptions {
  /**
   * The shared prefix P every document is encoded after (the instruction / system text). Text
   * is tokenized with the tokenizer's special tokens (BOS); token ids are taken as given.
   */
  prefix: StoreContent;
  /** Disk tier folder: not implemented yet (refused with UnsupportedError). */
  dir?: string;
  /**
   * Most bytes of KV pages the store keeps on the device (prefix included); the least recently
   * used documents are evicted beyond it. Default: no bound but the KV pool.
   */
  deviceBytes?: number;
  /** Host-memory tier: not implemented yet (refused with UnsupportedError). */
  hostBytes?: number;
}

/** One document for putMany(): its id and its content as text or as token ids. */
export type StoreDocument = { id: string; text: string } | { id: string; tokens: readonly number[] | Int32Array };

export interface PutManyOptions {
  /** Called after each document is stored, with how many are done of how many. */
  onProgress?: (done: number, total: number) => void;
  /** Stops before the next document; the call rejects with AbortError (stored ones stay). */
  signal?: AbortSignal;
}

export interface StoreStats {
  /** What the device tier holds now: documents, their tokens, and pages and bytes (prefix included). */
  device: { entries: number; tokens: number; pages: number; bytes: number };
  /** Documents a sequence found on the device. */
  hits: number;
  /** Documents a sequence needed that were evicted and recomputed. */
  misses: number;
  /** Documents evicted from the device tier to stay within deviceBytes. */
  evictions: number;
  /** Entries found damaged (checksum or format) in a persistent tier: always 0 until one exists. */
  corruptEntries: number;
}

/** @internal What a store needs from its model. */
export interface StoreHost {
  readonly scheduler: Scheduler;
  readonly vocabSize: number;
  readonly layers: number;
  readonly pageSize: number;
  /** Bytes of one page of one layer: keys and values. */
  readonly pageBytes: number;
  /** Identifies the weights and KV format: entries never cross models. */
  readonly fingerprint: string;
  native(what: string): NativeModel;
  encodeText(text: string, atStart: boolean): Int32Array;
  checkLength(tokens: number, extra: number, argument: string): void;
}

interface Entry {
  readonly id: string;
  readonly tokens: Int32Array;
  readonly key: string;
  block: NativeKvBlock | null; // null once evicted from the device: recomputed on next use
  used: number; // LRU clock
}

const OPEN_OPTIONS = optionNames<OpenStoreOptions>({ prefix: true, dir: true, deviceBytes: true, hostBytes: true });
const PUT_MANY_OPTIONS = optionNames<PutManyOptions>({ onProgress: true, signal: true });

/**
 * Document KV caches computed once after a shared prefix and reused by any later query. Open
 * with model.openStore(); attach stored documents with model.sequence({ store, documents }).
 */
export class ContextStore {
  /** The prefix's tokens (positions 0 .. prefixTokens.length - 1 of every sequence over the store). */
  readonly prefixTokens: Int32Array;
  /** @internal */ readonly host: StoreHost;
  readonly #deviceBytes: number;
  #prefix: NativeKvBlock | null;
  readonly #entries = new Map<string, Entry>();
  #clock = 0;
  #hits = 0;
  #misses = 0;
  #evictions = 0;

  private constructor(host: StoreHost, prefixTokens: Int32Array, prefix: NativeKvBlock, deviceBytes: number) {
    this.host = host;
    this.prefixTokens = prefixTokens;
    this.#prefix = prefix;
    this.#deviceBytes = deviceBytes;
  }

  /** @internal Use model.openStore(). */
  static async open(host: StoreHost, options: OpenStoreOptions): Promise<ContextStore> {
    const o = checkOptions(options, OPEN_OPTIONS, 'openStore');
    if (o.dir !== undefined) throw new UnsupportedError('dir: the disk tier of the store is not implemented yet; open an in-memory store (no dir)');
    if (o.hostBytes !== undefined) throw new UnsupportedError('hostBytes: the host-memory tier of the store is not implemented yet');
    const deviceBytes = o.deviceBytes ?? Infinity;
    if (deviceBytes !== Infinity && (!Number.isInteger(deviceBytes) || deviceBytes < 1)) {
      throw new InvalidArgumentError(`deviceBytes: expected a positive integer (or Infinity) but received ${describe(deviceBytes)}`, 'deviceBytes');
    }
    if (o.prefix === undefined) throw new InvalidArgumentError('prefix: is required (text or token ids)', 'prefix');
    const prefixTokens = contentTokens(host, o.prefix, true, 'prefix');
    host.checkLength(prefixTokens.length, 0, 'prefix');
    const bytes = blockPages(host, prefixTokens.length) * host.pageBytes;
    if (bytes > deviceBytes) throw new InvalidArgumentError(`deviceBytes: ${deviceBytes} is less than the prefix's own ${bytes} bytes of KV pages`, 'deviceBytes');
    const prefix = await computeBlock(host, null, 0, prefixTokens);
    return new ContextStore(host, prefixTokens, prefix, deviceBytes);
  }

  #live(what: string): NativeKvBlock {
    if (this.#prefix === null) throw new DisposedError(`${what}: the store has been closed`);
    this.host.native(what);
    return this.#prefix;
  }

  /** Whether close() was called. */
  get closed(): boolean {
    return this.#prefix === null;
  }

  /**
   * Encodes [prefix; content] and keeps the KV of the content's tokens under `id`. Text is
   * tokenized without special tokens (it follows the prefix). Putting an id again with the same
   * content keeps the entry; with other content it replaces it.
   */
  async put(id: string, content: StoreContent): Promise<void> {
    this.#live('put');
    checkId(id, 'id');
    const tokens = contentTokens(this.host, content, false, 'content');
    this.host.checkLength(this.prefixTokens.length + tokens.length, 0, 'content');
    const bytes = (blockPages(this.host, this.prefixTokens.length) + blockPages(this.host, tokens.length)) * this.host.pageBytes;
    if (bytes > this.#deviceBytes) {
      throw new InvalidArgumentError(`content: ${id} needs ${bytes} bytes of KV pages with the prefix, more than deviceBytes (${this.#deviceBytes})`, 'content');
    }
    const key = entryKey(this.host.fingerprint, this.prefixTokens, tokens);
    const old = this.#entries.get(id);
    if (old && old.key === key && old.block) {
      old.used = ++this.#clock;
      return;
    }
    const block = await this.#compute(key, tokens);
    if (this.#prefix === null) {
      block.release();
      throw new DisposedError('put: the store was closed while the document was computed');
    }
    const current = this.#entries.get(id);
    current?.block?.release();
    this.#entries.set(id, { id, tokens, key, block: block.share(), used: ++this.#clock });
    block.release();
    this.#evictTo(id);
  }

  /** put() for each document in order (see StoreDocument), reporting progress; `signal` stops it. */
  async putMany(docs: Iterable<StoreDocument>, options?: PutManyOptions | null): Promise<void> {
    this.#live('putMany');
    const { onProgress, signal } = checkOptions(options, PUT_MANY_OPTIONS, 'putMany');
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      throw new InvalidArgumentError(`onProgress: expected a function but received ${describe(onProgress)}`, 'onProgress');
    }
    if (docs === null || typeof (docs as { [Symbol.iterator]?: unknown })?.[Symbol.iterator] !== 'function') {
      throw new InvalidArgumentError(`docs: expected an array of { id, text } or { id, tokens } but received ${describe(docs)}`, 'docs');
    }
    const list = [...docs];
    list.forEach((d, i) => {
      const ok = d !== null && typeof d === 'object' && typeof d.id === 'string' && (('text' in d) !== ('tokens' in d));
      if (!ok) throw new InvalidArgumentError(`docs[${i}]: expected { id, text } or { id, tokens } but received ${describe(d)}`, 'docs');
    });
    for (let i = 0; i < list.length; i++) {
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      const d = list[i]!;
      await this.put(d.id, 'text' in d ? d.text : d.tokens);
      onProgress?.(i + 1, list.length);
    }
  }

  /** Whether `id` is stored (on the device, or evicted and recomputed on its next use). */
  has(id: string): boolean {
    this.#live('has');
    return this.#entries.has(id);
  }

  /** Removes `id`; false when it was not stored. Sequences already using it keep their pages. */
  delete(id: string): boolean {
    this.#live('delete');
    const e = this.#entries.get(id);
    if (!e) return false;
    e.block?.release();
    this.#entries.delete(id);
    return true;
  }

  /** Ids of the stored documents, least recently used first. */
  list(): string[] {
    this.#live('list');
    return [...this.#entries.values()].sort((a, b) => a.used - b.used).map((e) => e.id);
  }

  stats(): StoreStats {
    const prefix = this.#live('stats');
    let entries = 0;
    let tokens = 0;
    let pages = prefix.pages;
    for (const e of this.#entries.values()) {
      if (!e.block) continue;
      entries++;
      tokens += e.tokens.length;
      pages += e.block.pages;
    }
    return {
      device: { entries, tokens, pages, bytes: pages * this.host.pageBytes },
      hits: this.#hits,
      misses: this.#misses,
      evictions: this.#evictions,
      corruptEntries: 0,
    };
  }

  /** Frees the store's pages. Sequences over it keep the pages they use until they end. Idempotent. */
  close(): void {
    if (this.#prefix === null) return;
    for (const e of this.#entries.values()) e.block?.release();
    this.#entries.clear();
    this.#prefix.release();
    this.#prefix = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** @internal The entries of `ids`, checked now (an unknown id throws, naming it). */
  entries(ids: unknown): Entry[] {
    this.#live('sequence');
    if (!Array.isArray(ids)) throw new InvalidArgumentError(`documents: expected an array of stored ids but received ${describe(ids)}`, 'documents');
    return ids.map((id, i) => {
      if (typeof id !== 'string') throw new InvalidArgumentError(`documents[${i}]: expected a stored id but received ${describe(id)}`, 'documents');
      const e = this.#entries.get(id);
      if (!e) throw new InvalidArgumentError(`documents[${i}]: '${id}' is not in the store`, 'documents');
      return e;
    });
  }

  /**
   * @internal Handles on the prefix's and the entries' blocks, owned by the caller (release
   * each): entries evicted meanwhile are recomputed first.
   */
  async blocks(entries: Entry[]): Promise<NativeKvBlock[]> {
    const out = [this.#live('sequence').share()];
    try {
      for (const e of entries) {
        if (e.block) this.#hits++;
        else {
          this.#misses++;
          const block = await this.#compute(e.key, e.tokens);
          if (this.#prefix === null) {
            block.release();
            throw new DisposedError('sequence: the store was closed while a document was recomputed');
          }
          // Still the entry stored under its id (not deleted or replaced meanwhile): keep it again.
          if (this.#entries.get(e.id) === e && !e.block) e.block = block.share();
          out.push(block);
          e.used = ++this.#clock;
          this.#evictTo(e.id);
          continue;
        }
        e.used = ++this.#clock;
        out.push(e.block.share());
      }
    } catch (err) {
      for (const b of out) b.release();
      throw err;
    }
    return out;
  }

  // [prefix; tokens] computed now. (Two users of one evicted document compute it twice: rare,
  // and simpler than sharing one computation's pages between callers.)
  #compute(_key: string, tokens: Int32Array): Promise<NativeKvBlock> {
    return computeBlock(this.host, this.#prefix, this.prefixTokens.length, tokens);
  }

  // Evicts least recently used documents (never `keep`) until the device tier fits deviceBytes.
  #evictTo(keep: string): void {
    if (this.#deviceBytes === Infinity) return;
    const resident = [...this.#entries.values()].filter((e) => e.block && e.id !== keep).sort((a, b) => a.used - b.used);
    while (this.stats().device.bytes > this.#deviceBytes && resident.length > 0) {
      const e = resident.shift()!;
      e.block!.release();
      e.block = null;
      this.#evictions++;
    }
  }
}

// Pages (all layers) of a block of n tokens.
function blockPages(host: StoreHost, n: number): number {
  return Math.ceil(n / host.pageSize) * host.layers;
}

function checkId(id: unknown, argument: string): asserts id is string {
  if (typeof id !== 'string' || id.length === 0) throw new InvalidArgumentError(`${argument}: expected a non-empty string but received ${describe(id)}`, argument);
}

function contentTokens(host: StoreHost, content: StoreContent, atStart: boolean, argument: string): Int32Array {
  let tokens: Int32Array;
  if (typeof content === 'string') tokens = content === '' ? new Int32Array(0) : host.encodeText(content, atStart);
  else if (content instanceof Int32Array || Array.isArray(content)) tokens = checkTokenIds(content, host.vocabSize, argument);
  else throw new InvalidArgumentError(`${argument}: expected text or token ids (number[] or Int32Array) but received ${describe(content)}`, argument);
  if (tokens.length === 0) throw new InvalidArgumentError(`${argument}: is empty`, argument);
  return Int32Array.from(tokens);
}

// The KV of `tokens` computed after the prefix block (positions from `start`), as a block of its
// own: a sequence attaches the prefix, appends the tokens through the scheduler (batched with
// other work) and hands its pages over before it is released.
async function computeBlock(host: StoreHost, prefix: NativeKvBlock | null, start: number, tokens: Int32Array): Promise<NativeKvBlock> {
  const model = host.native('put');
  const seq = new SequenceState(model.newSequence(), false);
  if (prefix) {
    const prefixBlock = prefix.share();
    seq.pins.push(prefixBlock);
    seq.push(new Int32Array(start)); // the prefix's stream: its KV is attached, never fed
    seq.attached = start;
    seq.placed = start;
    seq.restore = () => model.attach(seq.native!, [{ block: prefixBlock, start: 0 }]);
  }
  let block: NativeKvBlock | null = null;
  await host.scheduler.append({
    seq,
    input: tokens,
    logits: 'none',
    capture: () => {
      block = seq.native!.exportBlock(start);
    },
  });
  if (block === null) throw new InvalidArgumentError('put: the document was computed but its KV was not kept');
  return block;
}
