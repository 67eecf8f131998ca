// ContextStore: the Context KV Cache Store of CacheFocus (shared/METHODS.md §1). A shared prefix
// P is encoded once when the store opens; each document d is encoded as [P; d] and the KV of d's
// tokens (computed with P in front, at positions |P| .. |P|+|d|-1) is kept as a block of pages.
// Sequences attach the prefix and any stored documents without recomputing them.
//
// Tiers: device (the KV pool's pages: what sequences attach), host (the entry's bytes in memory,
// in the layout of its file) and disk (one safetensors file per entry under `dir`, written when
// the entry is put: the disk is the store's durable copy, device and host are caches over it).
// When the device tier exceeds deviceBytes the least recently used entries move to the host
// tier (when hostBytes > 0; otherwise they leave the device, still on disk if there is one);
// when the host tier exceeds hostBytes its least recently used entries leave it. An entry found
// on a lower tier is moved back to the device when a sequence needs it; an entry on no tier is
// recomputed (a miss).
import { EventEmitter } from 'node:events';
import type { NativeKvBlock, NativeModel } from '../binding.js';
import { AbortError, DisposedError, InvalidArgumentError } from '../errors.js';
import type { Scheduler } from '../llm/scheduler.js';
import { SequenceState } from '../llm/scheduler.js';
import { describe } from '../tensor.js';
import { checkOptions, checkTokenIds, optionNames } from '../validate.js';
import { DiskTier, namespaceOf, type DiskOps } from './disk-tier.js';
import { entryKey, STORE_ENTRY_VERSION, tokensHash, type StoreEntryHeader } from './entry.js';
import { EntryDefect, encodeEntry, entrySize, type EntryBytes, type EntryIdentity } from './entry-file.js';

/** Text, or token ids (integers in [0, vocabSize)). */
export type StoreContent = string | readonly number[] | Int32Array;

export interface OpenStoreOptions {
  /**
   * The shared prefix P every document is encoded after (the instruction / system text). Text
   * is tokenized with the tokenizer's special tokens (BOS); token ids are taken as given.
   */
  prefix: StoreContent;
  /**
   * Folder of the disk tier: every entry put is written there (safetensors files, one per
   * entry, in a subfolder per model and prefix) and a store opened later on the same folder, in
   * this process or another, serves them. Default: no disk tier.
   */
  dir?: string;
  /**
   * Most bytes of KV pages the store keeps on the device (prefix included); the least recently
   * used documents move down a tier beyond it. Default: no bound but the KV pool.
   */
  deviceBytes?: number;
  /** Most bytes of entries the store keeps in host memory (the tier below the device). Default 0: none. */
  hostBytes?: number;
  /** @internal File operations of the disk tier (tests simulate a full disk with them). */
  diskOps?: DiskOps;
}

/** One document for putMany(): its id and its content as text or as token ids. */
export type StoreDocument = { id: string; text: string } | { id: string; tokens: readonly number[] | Int32Array };

export interface PutManyOptions {
  /** Called after each document is stored, with how many are done of how many, and the document's tokens. */
  onProgress?: (done: number, total: number, tokens: number) => void;
  /** Stops before the next document; the call rejects with AbortError (stored ones stay). */
  signal?: AbortSignal;
}

/** What one tier holds now. `pages` counts the KV pages its entries take on the device. */
export interface StoreTierStats {
  entries: number;
  tokens: number;
  pages: number;
  bytes: number;
}

export interface StoreStats {
  /** The device tier (prefix included in pages and bytes). */
  device: StoreTierStats;
  /** The host-memory tier (bytes: the entries' bytes in memory). */
  host: StoreTierStats;
  /** The disk tier (bytes: the entries' files; entries this store knows of). */
  disk: StoreTierStats;
  /** Documents a sequence found on some tier, and on which. */
  hits: number;
  hitsByTier: { device: number; host: number; disk: number };
  /** Documents a sequence needed that were on no tier (or damaged there) and were recomputed. */
  misses: number;
  /** Entries moved down from the device or the host tier (or dropped from the lowest one) to stay within their bounds. */
  evictions: number;
  /** Entry files found damaged (checksum, truncation, format) or foreign (another model, prefix or format version). */
  corruptEntries: number;
}

/**
 * Emitted as the store's 'warning' event (or as a process warning when nobody listens): an entry
 * file that cannot be served. The entry is treated as a miss and the file removed.
 */
export class StoreWarning extends Error {
  constructor(
    message: string,
    readonly kind: 'corrupt' | 'foreign',
    readonly file: string,
  ) {
    super(message);
    this.name = 'StoreWarning';
  }
}

/** @internal What a store needs from its model. */
export interface StoreHost {
  readonly scheduler: Scheduler;
  readonly vocabSize: number;
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly kvDtype: string;
  readonly pageSize: number;
  /** Bytes of one page of one layer: keys and values. */
  readonly pageBytes: number;
  /** Identifies the weights and KV format: entries never cross models. */
  readonly fingerprint: string;
  native(what: string): NativeModel;
  encodeText(text: string, atStart: boolean): Int32Array;
  checkLength(tokens: number, extra: number, argument: string): void;
}

// A disk read started ahead of its use: its outcome, kept until then.
type Loaded = { loaded: { identity: EntryIdentity; kv: Uint8Array } | null } | { error: unknown };

interface Entry {
  readonly id: string;
  readonly tokens: Int32Array;
  readonly key: string;
  block: NativeKvBlock | null; // device tier
  host: EntryBytes | null; // host tier
  disk: EntryIdentity | null; // disk tier: the file as last seen
  used: number; // LRU clock
}

const OPEN_OPTIONS = optionNames<OpenStoreOptions>({ prefix: true, dir: true, deviceBytes: true, hostBytes: true, diskOps: true });
const PUT_MANY_OPTIONS = optionNames<PutManyOptions>({ onProgress: true, signal: true });

/**
 * Document KV caches computed once after a shared prefix and reused by any later query. Open
 * with model.openStore(); attach stored documents with model.sequence({ store, documents }).
 * Events: 'warning' (StoreWarning) for an entry file that cannot be served.
 */
export class ContextStore extends EventEmitter {
  /** The prefix's tokens (positions 0 .. prefixTokens.length - 1 of every sequence over the store). */
  readonly prefixTokens: Int32Array;
  /** @internal */ readonly host: StoreHost;
  readonly #deviceBytes: number;
  readonly #hostBytes: number;
  readonly #disk: DiskTier | null;
  readonly #prefixHash: string;
  #prefix: NativeKvBlock | null;
  readonly #entries = new Map<string, Entry>();
  #clock = 0;
  #hits = { device: 0, host: 0, disk: 0 };
  #misses = 0;
  #evictions = 0;
  #corrupt = 0;
  readonly #bad = new Set<string>(); // files found unservable (counted once)
  #commits: Promise<unknown> = Promise.resolve(); // puts commit (write, index) one at a time

  private constructor(host: StoreHost, prefixTokens: Int32Array, prefix: NativeKvBlock, o: { deviceBytes: number; hostBytes: number; disk: DiskTier | null }) {
    super();
    this.host = host;
    this.prefixTokens = prefixTokens;
    this.#prefixHash = tokensHash(prefixTokens);
    this.#prefix = prefix;
    this.#deviceBytes = o.deviceBytes;
    this.#hostBytes = o.hostBytes;
    this.#disk = o.disk;
  }

  /** @internal Use model.openStore(). */
  static async open(host: StoreHost, options: OpenStoreOptions): Promise<ContextStore> {
    const o = checkOptions(options, OPEN_OPTIONS, 'openStore');
    const deviceBytes = byteBound(o.deviceBytes, Infinity, 'deviceBytes', 1);
    const hostBytes = byteBound(o.hostBytes, 0, 'hostBytes', 0);
    if (o.dir !== undefined && (typeof o.dir !== 'string' || o.dir === '')) {
      throw new InvalidArgumentError(`dir: expected a folder path but received ${describe(o.dir)}`, 'dir');
    }
    if (o.prefix === undefined) throw new InvalidArgumentError('prefix: is required (text or token ids)', 'prefix');
    const prefixTokens = contentTokens(host, o.prefix, true, 'prefix');
    host.checkLength(prefixTokens.length, 0, 'prefix');
    const bytes = blockPages(host, prefixTokens.length) * host.pageBytes;
    if (bytes > deviceBytes) throw new InvalidArgumentError(`deviceBytes: ${deviceBytes} is less than the prefix's own ${bytes} bytes of KV pages`, 'deviceBytes');
    const prefixHash = tokensHash(prefixTokens);
    let disk: DiskTier | null = null;
    if (o.dir !== undefined) {
      disk = new DiskTier(o.dir, namespaceOf(host.fingerprint, prefixHash), o.diskOps);
      await disk.init({
        format: 'kvfocus.store',
        version: 1,
        fingerprint: host.fingerprint,
        prefixHash,
        prefixTokens: [...prefixTokens],
        model: { layers: host.layers, kvHeads: host.kvHeads, headDim: host.headDim, pageSize: host.pageSize, kvDtype: host.kvDtype },
      });
    }
    const found: Array<{ warning: StoreWarning } | { identity: EntryIdentity }> = [];
    let prefix: NativeKvBlock | null = null;
    if (disk) {
      // The prefix's own KV is an entry too (id ''): reused when it checks out.
      const file = disk.fileOf('');
      const loaded = await disk.load(file).catch((e: unknown) => {
        if (e instanceof EntryDefect) found.push({ warning: new StoreWarning(e.message, e.kind, file) });
        else throw e;
        return null;
      });
      const expect = entryHeader(host, 0, tokensHash(new Int32Array(0)), prefixTokens);
      if (loaded && sameHeader(loaded.identity.header, expect)) prefix = await host.native('openStore').importBlock(0, prefixTokens.length, loaded.kv);
      for (const f of disk.entryFiles()) {
        try {
          const identity = disk.identity(f);
          if (identity) found.push({ identity });
        } catch (e) {
          if (!(e instanceof EntryDefect)) throw e;
          found.push({ warning: new StoreWarning(e.message, e.kind, f) });
        }
      }
    }
    if (prefix === null) {
      prefix = await computeBlock(host, null, 0, prefixTokens);
      if (disk) {
        const kv = await prefix.read();
        await disk.write('', encodeEntry('', entryHeader(host, 0, tokensHash(new Int32Array(0)), prefixTokens), prefixTokens, kv));
      }
    }
    const store = new ContextStore(host, prefixTokens, prefix, { deviceBytes, hostBytes, disk });
    for (const f of found) {
      if ('warning' in f) store.#defect(f.warning);
      else store.#adopt(f.identity);
    }
    return store;
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

  /** The folder of this store's entry files (under `dir`), or undefined without a disk tier. */
  get folder(): string | undefined {
    return this.#disk?.folder;
  }

  /**
   * Encodes [prefix; content] and keeps the KV of the content's tokens under `id` (on the
   * device, and on disk when the store has a dir: put resolves once the file is written).
   * Text is tokenized without special tokens (it follows the prefix). Putting an id again with
   * the same content keeps the entry; with other content it replaces it. On a full disk it
   * rejects with DiskFullError and the store is unchanged.
   */
  async put(id: string, content: StoreContent): Promise<void> {
    this.#live('put');
    const job = this.#prepare(id, content, 'content');
    if (job.block) await this.#store(job, await job.block);
  }

  /**
   * put() for each document in order (see StoreDocument), reporting progress; `signal` stops it
   * before the next document (those already started are stored) and it rejects with AbortError.
   * Up to four documents are computed at once (their prefill shares forward steps); they are
   * stored in the order listed, and a failure stops the ones after it.
   */
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
    const WINDOW = 4;
    const pending: Promise<void>[] = [];
    let previous: Promise<void> = Promise.resolve();
    let failed = false;
    try {
      for (let i = 0; i < list.length; i++) {
        if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
        if (pending.length >= WINDOW) await pending.shift();
        if (failed) break;
        const d = list[i]!;
        const job = this.#prepare(d.id, 'text' in d ? d.text : d.tokens, `docs[${i}]`);
        const before = previous;
        const stored = (async () => {
          const block = job.block ? await job.block.catch((e: unknown) => before.then(() => Promise.reject(e))) : null;
          try {
            await before;
          } catch (e) {
            block?.release();
            throw e;
          }
          if (block) await this.#store(job, block);
          onProgress?.(i + 1, list.length, job.tokens.length);
        })();
        stored.catch(() => (failed = true));
        pending.push(stored);
        previous = stored;
      }
    } finally {
      await Promise.allSettled(pending);
    }
    await previous;
    if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
  }

  // Checks one document and starts computing it (block: null when the id already holds it).
  #prepare(id: string, content: StoreContent, argument: string): { id: string; tokens: Int32Array; key: string; block: Promise<NativeKvBlock> | null } {
    checkId(id, argument === 'content' ? 'id' : `${argument}.id`);
    const tokens = contentTokens(this.host, content, false, argument);
    this.host.checkLength(this.prefixTokens.length + tokens.length, 0, argument);
    const bytes = (blockPages(this.host, this.prefixTokens.length) + blockPages(this.host, tokens.length)) * this.host.pageBytes;
    if (bytes > this.#deviceBytes) {
      throw new InvalidArgumentError(`${argument}: ${id} needs ${bytes} bytes of KV pages with the prefix, more than deviceBytes (${this.#deviceBytes})`, argument);
    }
    const key = entryKey(this.host.fingerprint, this.prefixTokens, tokens);
    const old = this.#lookup(id);
    if (old && old.key === key && (old.block || old.host || old.disk)) {
      old.used = ++this.#clock;
      return { id, tokens, key, block: null };
    }
    return { id, tokens, key, block: this.#compute(tokens) };
  }

  // Keeps a computed document under its id (writing its file first when there is a disk tier).
  async #store(job: { id: string; tokens: Int32Array; key: string }, block: NativeKvBlock): Promise<void> {
    try {
      await this.#commit(async () => {
        if (this.#prefix === null) throw new DisposedError('put: the store was closed while the document was computed');
        const entry: Entry = { id: job.id, tokens: job.tokens, key: job.key, block: null, host: null, disk: null, used: 0 };
        if (this.#disk) entry.disk = await this.#write(entry, await block.read());
        this.#drop(this.#entries.get(job.id));
        entry.block = block.share();
        entry.used = ++this.#clock;
        this.#entries.set(job.id, entry);
      });
    } finally {
      block.release();
    }
    await this.#balance();
  }

  /** Whether `id` is stored (on some tier, or known and recomputed on its next use). */
  has(id: string): boolean {
    this.#live('has');
    return this.#lookup(id) !== undefined;
  }

  /**
   * Removes `id` from every tier (its file too); false when it was not stored. Sequences already
   * using it keep their pages.
   */
  delete(id: string): boolean {
    this.#live('delete');
    const e = this.#lookup(id);
    this.#drop(e);
    this.#entries.delete(id);
    if (this.#disk) this.#disk.removeSync(id);
    return e !== undefined;
  }

  /** Ids of the stored documents, least recently used first (with a dir: every entry on disk too). */
  list(): string[] {
    this.#live('list');
    if (this.#disk) for (const f of this.#disk.entryFiles()) this.#identify(f);
    return [...this.#entries.values()].sort((a, b) => a.used - b.used).map((e) => e.id);
  }

  stats(): StoreStats {
    const prefix = this.#live('stats');
    const tier = (): StoreTierStats => ({ entries: 0, tokens: 0, pages: 0, bytes: 0 });
    const device = tier();
    const host = tier();
    const disk = tier();
    device.pages = prefix.pages;
    for (const e of this.#entries.values()) {
      const pages = blockPages(this.host, e.tokens.length);
      const add = (t: StoreTierStats, bytes: number): void => {
        t.entries++;
        t.tokens += e.tokens.length;
        t.pages += pages;
        t.bytes += bytes;
      };
      if (e.block) add(device, 0);
      if (e.host) add(host, entrySize(e.host));
      if (e.disk) add(disk, e.disk.fileBytes);
    }
    device.bytes = device.pages * this.host.pageBytes;
    const hits = this.#hits.device + this.#hits.host + this.#hits.disk;
    return { device, host, disk, hits, hitsByTier: { ...this.#hits }, misses: this.#misses, evictions: this.#evictions, corruptEntries: this.#corrupt };
  }

  /** Frees the store's pages and host memory (files stay). Sequences over it keep the pages they use. Idempotent. */
  close(): void {
    if (this.#prefix === null) return;
    for (const e of this.#entries.values()) this.#drop(e);
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
      const e = this.#lookup(id);
      if (!e) throw new InvalidArgumentError(`documents[${i}]: '${id}' is not in the store`, 'documents');
      return e;
    });
  }

  /**
   * @internal Handles on the prefix's and the entries' blocks, owned by the caller (release
   * each): entries on a lower tier are moved up, entries on none recomputed.
   */
  async blocks(entries: Entry[]): Promise<NativeKvBlock[]> {
    const out = [this.#live('sequence').share()];
    // Entries only on disk are read a few ahead (reads overlap checksums and uploads); the
    // window bounds the host memory of files read but not yet uploaded.
    const reads = new Map<Entry, Promise<Loaded>>();
    const readAhead = (from: number): void => {
      for (let i = from; i < entries.length && reads.size < 4; i++) {
        const e = entries[i]!;
        if (!e.block && !e.host && e.disk && this.#disk && !reads.has(e)) {
          const read = this.#disk.load(this.#disk.fileOf(e.id)).then(
            (loaded) => ({ loaded }),
            (error: unknown) => ({ error }),
          );
          reads.set(e, read);
        }
      }
    };
    try {
      for (const [i, e] of entries.entries()) {
        readAhead(i);
        e.used = ++this.#clock;
        const read = reads.get(e);
        reads.delete(e);
        out.push(await this.#up(e, read));
      }
    } catch (err) {
      for (const b of out) b.release();
      await Promise.allSettled(reads.values());
      throw err;
    }
    await this.#balance();
    return out;
  }

  // The entry's block on the device, from whichever tier holds it (a handle the caller owns).
  async #up(e: Entry, read?: Promise<Loaded>): Promise<NativeKvBlock> {
    if (e.block) {
      this.#hits.device++;
      return e.block.share();
    }
    const start = this.prefixTokens.length;
    const model = this.host.native('sequence');
    let block: NativeKvBlock | null = null;
    if (e.host) {
      block = await model.importBlock(start, e.tokens.length, e.host.kv);
      this.#hits.host++;
      e.host = null; // moved up (the disk, if any, still has it)
    } else if (e.disk && this.#disk) {
      const file = this.#disk.fileOf(e.id);
      let loaded: { identity: EntryIdentity; kv: Uint8Array } | null = null;
      try {
        const r = read ? await read : { loaded: await this.#disk.load(file) };
        if ('error' in r) throw r.error;
        loaded = r.loaded;
      } catch (err) {
        if (!(err instanceof EntryDefect)) throw err;
        this.#defect(new StoreWarning(err.message, err.kind, file));
      }
      if (loaded && sameHeader(loaded.identity.header, this.#header(e.tokens))) {
        block = await model.importBlock(start, e.tokens.length, loaded.kv);
        this.#hits.disk++;
      } else if (loaded) {
        // Another process put other content under this id since: later sequences get that.
        if (this.#entries.get(e.id) === e) this.#entries.delete(e.id);
        this.#adopt(loaded.identity);
      } else if (this.#entries.get(e.id) === e) {
        e.disk = null; // gone (damaged, or deleted by another process)
      }
    }
    if (block === null) {
      this.#misses++;
      block = await this.#compute(e.tokens);
      if (this.#prefix === null) {
        block.release();
        throw new DisposedError('sequence: the store was closed while a document was recomputed');
      }
      // Still the entry under its id: keep the recomputed KV (and its file again, when lost).
      if (this.#entries.get(e.id) === e && this.#disk && !e.disk) {
        const b = block;
        // The KV is served anyway when this fails: the file is written again on the next miss.
        await this.#commit(async () => {
          e.disk = await this.#write(e, await b.read());
        }).catch(() => undefined);
      }
    }
    if (this.#entries.get(e.id) === e && !e.block) e.block = block.share();
    return block;
  }

  // Moves least recently used entries down until each tier fits its bound.
  async #balance(): Promise<void> {
    if (this.#deviceBytes === Infinity && this.#hostBytes === Infinity) return;
    await this.#commit(async () => {
      const lru = (pick: (e: Entry) => boolean): Entry[] => [...this.#entries.values()].filter(pick).sort((a, b) => a.used - b.used);
      for (const e of lru((x) => x.block !== null)) {
        if (this.#prefix === null || this.stats().device.bytes <= this.#deviceBytes) break;
        if (this.#hostBytes > 0 && !e.host) {
          const kv = await e.block!.read();
          if (this.#entries.get(e.id) !== e || !e.block) continue;
          e.host = encodeEntry(e.id, this.#header(e.tokens), e.tokens, kv);
        }
        e.block!.release();
        e.block = null;
        this.#evictions++;
      }
      if (this.#hostBytes === Infinity || this.#prefix === null) return;
      let hostBytes = 0;
      for (const e of this.#entries.values()) if (e.host) hostBytes += entrySize(e.host);
      for (const e of lru((x) => x.host !== null)) {
        if (hostBytes <= this.#hostBytes) break;
        hostBytes -= entrySize(e.host!);
        e.host = null;
        this.#evictions++;
      }
    });
  }

  // Runs fn after every earlier commit (puts, deletes and moves between tiers do not interleave).
  #commit<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#commits.then(fn, fn);
    this.#commits = run.catch(() => undefined);
    return run;
  }

  // Writes the entry's file (the KV as NativeKvBlock.read() returns it); its identity as written.
  async #write(e: Entry, kv: ArrayBuffer): Promise<EntryIdentity | null> {
    const disk = this.#disk!;
    await disk.write(e.id, encodeEntry(e.id, this.#header(e.tokens), e.tokens, kv));
    const file = disk.fileOf(e.id);
    this.#bad.delete(file);
    return disk.identity(file);
  }

  #drop(e: Entry | undefined): void {
    if (!e) return;
    e.block?.release();
    e.block = null;
    e.host = null;
  }

  // The entry under `id`: known to this process, or a file on disk (put by another process).
  #lookup(id: string): Entry | undefined {
    const e = this.#entries.get(id);
    if (e || !this.#disk) return e;
    return this.#identify(this.#disk.fileOf(id));
  }

  // Indexes the entry in `file` if it is one of ours and not known yet.
  #identify(file: string): Entry | undefined {
    if (this.#bad.has(file)) return undefined;
    try {
      const identity = this.#disk!.identity(file);
      if (!identity) return undefined;
      const known = this.#entries.get(identity.id);
      if (known) return known;
      return this.#adopt(identity);
    } catch (e) {
      if (!(e instanceof EntryDefect)) throw e;
      this.#defect(new StoreWarning(e.message, e.kind, file));
      return undefined;
    }
  }

  // An entry file found on disk: indexed if it was written for this model and prefix.
  #adopt(identity: EntryIdentity): Entry | undefined {
    const file = this.#disk!.fileOf(identity.id);
    if (!sameHeader(identity.header, this.#header(identity.tokens))) {
      this.#defect(new StoreWarning(`${file}: written for another model or prefix (${identity.id})`, 'foreign', file));
      return undefined;
    }
    const e: Entry = { id: identity.id, tokens: identity.tokens, key: entryKey(this.host.fingerprint, this.prefixTokens, identity.tokens), block: null, host: null, disk: identity, used: 0 };
    this.#entries.set(e.id, e);
    return e;
  }

  // A file that cannot be served: counted and reported; a damaged one is removed, a foreign one
  // (another format version, say) left to whoever wrote it. Its entry is recomputed as a miss.
  #defect(w: StoreWarning): void {
    this.#corrupt++;
    this.#bad.add(w.file);
    if (w.kind === 'corrupt') {
      try {
        this.#disk?.removeFileSync(w.file);
      } catch {
        // left in place: it is counted once and never served
      }
    }
    // Listeners attached right after openStore() resolves still see what it found.
    setImmediate(() => {
      if (this.listenerCount('warning') > 0) this.emit('warning', w);
      else process.emitWarning(w);
    });
  }

  #header(tokens: Int32Array): StoreEntryHeader {
    return entryHeader(this.host, this.prefixTokens.length, this.#prefixHash, tokens);
  }

  // [prefix; tokens] computed now. (Two users of one evicted document compute it twice: rare,
  // and simpler than sharing one computation's pages between callers.)
  #compute(tokens: Int32Array): Promise<NativeKvBlock> {
    return computeBlock(this.host, this.#prefix, this.prefixTokens.length, tokens);
  }
}

function entryHeader(host: StoreHost, prefixTokens: number, prefixHash: string, tokens: Int32Array): StoreEntryHeader {
  return {
    version: STORE_ENTRY_VERSION,
    fingerprint: host.fingerprint,
    prefixHash,
    documentHash: tokensHash(tokens),
    prefixTokens,
    tokens: tokens.length,
    layers: host.layers,
    kvHeads: host.kvHeads,
    headDim: host.headDim,
    pageSize: host.pageSize,
    kvDtype: host.kvDtype,
  };
}

function sameHeader(a: StoreEntryHeader, b: StoreEntryHeader): boolean {
  return (Object.keys(b) as (keyof StoreEntryHeader)[]).every((k) => a[k] === b[k]);
}

function byteBound(v: unknown, fallback: number, name: string, min: number): number {
  if (v === undefined) return fallback;
  if (v === Infinity || (typeof v === 'number' && Number.isInteger(v) && v >= min)) return v;
  throw new InvalidArgumentError(`${name}: expected an integer >= ${min} (or Infinity) but received ${describe(v)}`, name);
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
