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
//
// Remote (`remote: { url }`): a Redis server many hosts share, below the disk (./remote-tier.ts).
// An entry missing locally is fetched there before it is recomputed (by sequences and by puts),
// and an entry computed here is written there in the background; ids put on any host are
// announced to every store of the same model and prefix. Redis being down or slow never fails
// a request: the store goes on with its local tiers.
import { EventEmitter } from 'node:events';
import type { NativeKvBlock, NativeModel } from '../binding.js';
import { AbortError, DisposedError, InvalidArgumentError } from '../errors.js';
import type { Scheduler } from '../llm/scheduler.js';
import { SequenceState } from '../llm/scheduler.js';
import { describe } from '../tensor.js';
import { checkOptions, checkTokenIds, optionNames } from '../validate.js';
import { DiskTier, namespaceOf, type DiskOps } from './disk-tier.js';
import { entryKey, STORE_ENTRY_VERSION, tokensHash, type StoreEntryHeader } from './entry.js';
import { EntryDefect, encodeEntry, entrySize, MAX_ENTRY_HEADER_BYTES, type EntryBytes, type EntryIdentity } from './entry-file.js';
import { DEFAULT_CHUNK_BYTES, DEFAULT_KEY_PREFIX, MIN_CHUNK_BYTES, PREFIX_ENTRY_KEY, RemoteTier, type RemoteEntry, type RemoteTierCounters, type RemoteTierListener, type RemoteTierOptions } from './remote-tier.js';

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
  /**
   * A Redis server shared by many hosts (the remote tier, below the disk): entries missing
   * locally are fetched there before they are recomputed, and entries computed here are written
   * there in the background. See RemoteStoreOptions. Default: no remote tier.
   */
  remote?: RemoteStoreOptions;
  /** @internal File operations of the disk tier (tests simulate a full disk with them). */
  diskOps?: DiskOps;
}

/** openStore's `remote`: where the shared Redis is and how entries are kept there. */
export interface RemoteStoreOptions {
  /** `redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS. */
  url: string;
  /**
   * Prepended to every key (default 'kvfocus:'). Entries of different models or prefixes never
   * meet under one prefix; tenants that must not share entries use different prefixes (and secrets).
   */
  keyPrefix?: string;
  /** Seconds an entry is kept after it was last written or read. Default: until Redis evicts it (maxmemory policy). */
  ttlSeconds?: number;
  /**
   * Key of an HMAC-SHA256 that every entry and id record written carries, and that every one
   * read must carry: entries without a valid one are refused like damaged ones. Default: the
   * environment variable KVFOCUS_REMOTE_SECRET, else none (any writer to Redis is trusted).
   */
  secret?: string;
  /** Longest wait for a connection, at open and on reconnects (ms, default 2000). */
  connectTimeoutMs?: number;
  /** Longest wait for one command's reply (ms, default 1000): a slower server counts as unavailable for a moment. */
  commandTimeoutMs?: number;
  /** @internal Bytes of one chunk of an entry's value (default 16 MiB). */
  chunkBytes?: number;
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

/** The remote tier: what this store knows is in Redis, and what it did there. */
export interface StoreRemoteStats extends StoreTierStats, RemoteTierCounters {
  /** Whether the server is in use now: connected, and no command failed in the last moments. */
  connected: boolean;
}

export interface StoreStats {
  /** The device tier (prefix included in pages and bytes). */
  device: StoreTierStats;
  /** The host-memory tier (bytes: the entries' bytes in memory). */
  host: StoreTierStats;
  /** The disk tier (bytes: the entries' files; entries this store knows of). */
  disk: StoreTierStats;
  /**
   * The remote tier, or null without one. entries, tokens and pages: the documents whose id
   * this store saw in Redis or wrote there (their KV may have been evicted since); bytes: their
   * tokens and KV.
   */
  remote: StoreRemoteStats | null;
  /** Documents a sequence found on some tier, and on which. */
  hits: number;
  hitsByTier: { device: number; host: number; disk: number; remote: number };
  /** Entries written to each tier below the device (host: moved down into it; disk: files written; remote: entries sent). */
  writesByTier: { host: number; disk: number; remote: number };
  /** Failed reads and writes of each persistent tier (a full disk, an I/O error, Redis failing or unreachable). */
  errorsByTier: { disk: number; remote: number };
  /** Documents a sequence needed that were on no tier (or damaged there) and were recomputed. */
  misses: number;
  /** Entries moved down from the device or the host tier (or dropped from the lowest one) to stay within their bounds. */
  evictions: number;
  /** Entry files found damaged (checksum, truncation, format) or foreign (another model, prefix or format version). */
  corruptEntries: number;
}

/**
 * Emitted as the store's 'warning' event (or as a process warning when nobody listens): an entry
 * that cannot be served (kind 'corrupt', 'foreign', or 'untrusted': no valid HMAC), treated as a
 * miss (a damaged file is removed); or the remote tier's server unavailable ('unavailable', once
 * per outage; `file` is then the server's url, without its password).
 */
export class StoreWarning extends Error {
  constructor(
    message: string,
    readonly kind: 'corrupt' | 'foreign' | 'untrusted' | 'unavailable',
    /** The entry's file, or on the remote tier its Redis key. */
    readonly file: string,
    readonly tier: 'disk' | 'remote' = 'disk',
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
// The same for a fetch from the remote tier.
type Fetched = { loaded: RemoteEntry | null } | { error: unknown };

interface Entry {
  readonly id: string;
  readonly tokens: Int32Array;
  readonly key: string;
  block: NativeKvBlock | null; // device tier
  host: EntryBytes | null; // host tier
  disk: EntryIdentity | null; // disk tier: the file as last seen
  remote: boolean; // remote tier: its id record seen in Redis or written there (the KV may be gone since)
  used: number; // LRU clock
}

// A document being put: fetched from the remote tier or computed.
interface PutJob {
  id: string;
  tokens: Int32Array;
  key: string;
  block: Promise<NativeKvBlock> | null; // null: the id already holds it
  fetched: boolean; // the KV came from the remote tier
}

const OPEN_OPTIONS = optionNames<OpenStoreOptions>({ prefix: true, dir: true, deviceBytes: true, hostBytes: true, remote: true, diskOps: true });
const REMOTE_OPTIONS = optionNames<RemoteStoreOptions>({ url: true, keyPrefix: true, ttlSeconds: true, secret: true, connectTimeoutMs: true, commandTimeoutMs: true, chunkBytes: true });
const PUT_MANY_OPTIONS = optionNames<PutManyOptions>({ onProgress: true, signal: true });

/**
 * Document KV caches computed once after a shared prefix and reused by any later query. Open
 * with model.openStore(); attach stored documents with model.sequence({ store, documents }).
 * Events: 'warning' (StoreWarning) for an entry that cannot be served, or a remote tier whose
 * server is unavailable.
 */
export class ContextStore extends EventEmitter {
  /** The prefix's tokens (positions 0 .. prefixTokens.length - 1 of every sequence over the store). */
  readonly prefixTokens: Int32Array;
  /** @internal */ readonly host: StoreHost;
  readonly #deviceBytes: number;
  readonly #hostBytes: number;
  readonly #disk: DiskTier | null;
  readonly #remote: RemoteTier | null;
  readonly #prefixHash: string;
  #prefix: NativeKvBlock | null;
  readonly #entries = new Map<string, Entry>();
  #clock = 0;
  #hits = { device: 0, host: 0, disk: 0, remote: 0 };
  readonly #writes = { host: 0, disk: 0 }; // entries written to a tier (the remote tier counts its own)
  readonly #errors = { disk: 0 }; // failed reads and writes of a tier (the remote tier counts its own)
  #misses = 0;
  #evictions = 0;
  #corrupt = 0;
  readonly #bad = new Set<string>(); // files found unservable (counted once)
  #held: StoreWarning[] | null = []; // warnings found while opening, emitted once open() returns
  #commits: Promise<unknown> = Promise.resolve(); // puts commit (write, index) one at a time

  private constructor(host: StoreHost, prefixTokens: Int32Array, prefix: NativeKvBlock, o: { deviceBytes: number; hostBytes: number; disk: DiskTier | null; remote: RemoteTier | null }) {
    super();
    this.host = host;
    this.prefixTokens = prefixTokens;
    this.#prefixHash = tokensHash(prefixTokens);
    this.#prefix = prefix;
    this.#deviceBytes = o.deviceBytes;
    this.#hostBytes = o.hostBytes;
    this.#disk = o.disk;
    this.#remote = o.remote;
    host.scheduler.reclaimers.add(this.#reclaim);
  }

  // The pool is short of pages for running work: the least recently used documents leave the
  // device (still on a lower tier if there is one, else recomputed when used) until enough are
  // free. Pages a sequence still reads stay allocated until it ends.
  readonly #reclaim = (pages: number): void => {
    if (this.#prefix === null) return;
    const model = this.host.native('reclaim');
    const resident = [...this.#entries.values()].filter((e) => e.block !== null).sort((a, b) => a.used - b.used);
    for (const e of resident) {
      if (model.freePages() >= pages) return;
      e.block!.release();
      e.block = null;
      this.#evictions++;
    }
  };

  /** @internal Use model.openStore(). */
  static async open(host: StoreHost, options: OpenStoreOptions): Promise<ContextStore> {
    const o = checkOptions(options, OPEN_OPTIONS, 'openStore');
    const deviceBytes = byteBound(o.deviceBytes, Infinity, 'deviceBytes', 1);
    const hostBytes = byteBound(o.hostBytes, 0, 'hostBytes', 0);
    if (o.dir !== undefined && (typeof o.dir !== 'string' || o.dir === '')) {
      throw new InvalidArgumentError(`dir: expected a folder path but received ${describe(o.dir)}`, 'dir');
    }
    const remoteOptions = o.remote === undefined ? null : checkRemoteOptions(o.remote);
    if (o.prefix === undefined) throw new InvalidArgumentError('prefix: is required (text or token ids)', 'prefix');
    const prefixTokens = contentTokens(host, o.prefix, true, 'prefix');
    host.checkLength(prefixTokens.length, 0, 'prefix');
    const bytes = blockPages(host, prefixTokens.length) * host.pageBytes;
    if (bytes > deviceBytes) throw new InvalidArgumentError(`deviceBytes: ${deviceBytes} is less than the prefix's own ${bytes} bytes of KV pages`, 'deviceBytes');
    const prefixHash = tokensHash(prefixTokens);
    const namespace = namespaceOf(host.fingerprint, prefixHash);
    let disk: DiskTier | null = null;
    if (o.dir !== undefined) {
      disk = new DiskTier(o.dir, namespace, o.diskOps);
      await disk.init({
        format: 'kvfocus.store',
        version: 1,
        fingerprint: host.fingerprint,
        prefixHash,
        prefixTokens: [...prefixTokens],
        model: { layers: host.layers, kvHeads: host.kvHeads, headDim: host.headDim, pageSize: host.pageSize, kvDtype: host.kvDtype },
      });
    }
    // The remote tier reports to the store once it exists (what it reports before is replayed).
    let store: ContextStore | null = null;
    const early: Array<(s: ContextStore) => void> = [];
    const tell = (f: (s: ContextStore) => void): void => (store ? f(store) : void early.push(f));
    let remote: RemoteTier | null = null;
    if (remoteOptions) {
      const listener: RemoteTierListener = {
        down: (message) => tell((s) => s.#warn(new StoreWarning(message, 'unavailable', remote!.server, 'remote'))),
        up: () => {
          if (store) store.#remoteUp(); // before the store exists: its ids are read after this anyway
        },
        announce: (id, tokens) => tell((s) => s.#adoptRemote(id, tokens, true)),
        defect: (d, name) => tell((s) => s.#defect(new StoreWarning(d.message, d.kind, name, 'remote'))),
      };
      remote = new RemoteTier(remoteOptions, namespace, listener);
      await remote.open(); // never rejects: a server that is down is retried in the background
    }
    const found: Array<{ warning: StoreWarning } | { identity: EntryIdentity }> = [];
    const prefixHeader = entryHeader(host, 0, tokensHash(new Int32Array(0)), prefixTokens);
    let prefix: NativeKvBlock | null = null;
    try {
      if (disk) {
        // The prefix's own KV is an entry too (id ''): reused when it checks out.
        const file = disk.fileOf('');
        const loaded = await disk.load(file).catch((e: unknown) => {
          if (e instanceof EntryDefect) found.push({ warning: new StoreWarning(e.message, e.kind, file) });
          else throw e;
          return null;
        });
        if (loaded && sameHeader(loaded.identity.header, prefixHeader)) prefix = await host.native('openStore').importBlock(0, prefixTokens.length, loaded.kv);
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
      let prefixBytes: EntryBytes | null = null;
      if (prefix === null && remote) {
        const got = await fetchRemote(host, remote, PREFIX_ENTRY_KEY, 0, prefixTokens, prefixHeader);
        if (got && 'warning' in got) found.push(got);
        else if (got) {
          prefix = got.block;
          if (disk) await disk.write('', encodeEntry('', prefixHeader, prefixTokens, got.kv));
        }
      }
      if (prefix === null) {
        prefix = await computeBlock(host, null, 0, prefixTokens);
        if (disk || remote) prefixBytes = encodeEntry('', prefixHeader, prefixTokens, await prefix.read());
        if (disk) await disk.write('', prefixBytes!);
        if (remote && prefixBytes && remote.canWrite(entrySize(prefixBytes))) {
          void remote.write({ key: PREFIX_ENTRY_KEY, bytes: entrySize(prefixBytes), entry: Promise.resolve(prefixBytes), id: null });
        }
      }
    } catch (e) {
      prefix?.release();
      remote?.close();
      throw e;
    }
    store = new ContextStore(host, prefixTokens, prefix, { deviceBytes, hostBytes, disk, remote });
    for (const f of found) {
      if ('warning' in f) store.#defect(f.warning);
      else store.#adopt(f.identity);
    }
    // Ids put on other hosts (disk entries win where an id holds other content here).
    const ids = remote ? await remote.ids() : null;
    for (const r of ids ?? []) store.#adoptRemote(r.id, r.tokens, false);
    for (const f of early.splice(0)) f(store);
    const held = store.#held!;
    store.#held = null;
    for (const w of held) store.#warn(w);
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

  // Checks one document and starts fetching or computing it (block: null when the id already holds it).
  #prepare(id: string, content: StoreContent, argument: string): PutJob {
    checkId(id, argument === 'content' ? 'id' : `${argument}.id`);
    const tokens = contentTokens(this.host, content, false, argument);
    this.host.checkLength(this.prefixTokens.length + tokens.length, 0, argument);
    const bytes = (blockPages(this.host, this.prefixTokens.length) + blockPages(this.host, tokens.length)) * this.host.pageBytes;
    if (bytes > this.#deviceBytes) {
      throw new InvalidArgumentError(`${argument}: ${id} needs ${bytes} bytes of KV pages with the prefix, more than deviceBytes (${this.#deviceBytes})`, argument);
    }
    const key = entryKey(this.host.fingerprint, this.prefixTokens, tokens);
    const old = this.#lookup(id);
    if (old && old.key === key && (old.block || old.host || old.disk || old.remote)) {
      old.used = ++this.#clock;
      return { id, tokens, key, block: null, fetched: false };
    }
    const job: PutJob = { id, tokens, key, block: null, fetched: false };
    job.block = this.#fetchOrCompute(job);
    return job;
  }

  // The document's KV from the remote tier when it is there (computed elsewhere), else computed.
  async #fetchOrCompute(job: PutJob): Promise<NativeKvBlock> {
    if (this.#remote?.connected) {
      const got = await fetchRemote(this.host, this.#remote, job.key, this.prefixTokens.length, job.tokens, this.#header(job.tokens));
      if (got && 'warning' in got) this.#defect(got.warning);
      else if (got) {
        job.fetched = true;
        return got.block;
      }
    }
    return this.#compute(job.tokens);
  }

  // Keeps a computed document under its id (writing its file first when there is a disk tier,
  // and to the remote tier after, in the background).
  async #store(job: PutJob, block: NativeKvBlock): Promise<void> {
    let stored = null as Entry | null;
    let bytes = null as EntryBytes | null;
    try {
      await this.#commit(async () => {
        if (this.#prefix === null) throw new DisposedError('put: the store was closed while the document was computed');
        const entry: Entry = { id: job.id, tokens: job.tokens, key: job.key, block: null, host: null, disk: null, remote: false, used: 0 };
        if (this.#disk) {
          bytes = this.#encode(entry, await block.read());
          entry.disk = await this.#write(entry, bytes);
        }
        this.#drop(this.#entries.get(job.id));
        entry.block = block.share();
        entry.used = ++this.#clock;
        this.#entries.set(job.id, entry);
        stored = entry;
      });
      if (stored) this.#publish(stored, bytes ?? block, { entry: !job.fetched, id: true });
    } finally {
      block.release();
    }
    await this.#balance();
  }

  // Writes an entry to the remote tier in the background (its KV unless Redis has it, its id
  // record unless this store knows Redis has it); never fails the caller.
  #publish(e: Entry, src: EntryBytes | NativeKvBlock | null, what: { entry: boolean; id: boolean }): void {
    const remote = this.#remote;
    const id = what.id && !e.remote;
    const entry = what.entry && src !== null;
    if (!remote || (!id && !entry)) return;
    const bytes = entry ? this.#dataBytes(e.tokens.length) : 0;
    if (!remote.canWrite(bytes)) return;
    let data: Promise<EntryBytes> | null = null;
    if (src && entry) {
      if ('head' in src) data = Promise.resolve(src);
      else {
        const b = src.share(); // read now; the write waits for the earlier ones
        data = b.read().then((kv) => this.#encode(e, kv)).finally(() => b.release());
      }
    }
    void remote.write({ key: e.key, bytes, entry: data, id: id ? { id: e.id, tokens: e.tokens } : null }).then((ok) => {
      if (ok && id && this.#entries.get(e.id) === e) e.remote = true;
    });
  }

  /**
   * Resolves once the writes to the remote tier started so far are done (they run in the
   * background: puts and sequences never wait for them). Without a remote tier, at once.
   */
  async flush(): Promise<void> {
    await this.#remote?.flush();
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
    this.#remote?.deleteId(id); // the KV stays there: other ids or hosts may hold the same document
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
    const remote = tier();
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
      if (e.remote) add(remote, this.#dataBytes(e.tokens.length));
    }
    device.bytes = device.pages * this.host.pageBytes;
    const hits = this.#hits.device + this.#hits.host + this.#hits.disk + this.#hits.remote;
    const r = this.#remote;
    return {
      device,
      host,
      disk,
      remote: r ? { ...remote, connected: r.connected, ...r.counters } : null,
      hits,
      hitsByTier: { ...this.#hits },
      writesByTier: { ...this.#writes, remote: r ? r.counters.writes : 0 },
      errorsByTier: { ...this.#errors, remote: r ? r.counters.errors : 0 },
      misses: this.#misses,
      evictions: this.#evictions,
      corruptEntries: this.#corrupt,
    };
  }

  /**
   * Frees the store's pages and host memory (files and Redis entries stay). Sequences over it
   * keep the pages they use. The connections to Redis close once the writes started are done
   * (await flush() first to wait for them). Idempotent.
   */
  close(): void {
    if (this.#prefix === null) return;
    for (const e of this.#entries.values()) this.#drop(e);
    this.#entries.clear();
    this.#prefix.release();
    this.#prefix = null;
    this.host.scheduler.reclaimers.delete(this.#reclaim);
    this.#remote?.close();
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
    // Entries only on disk (or only in Redis) are read a few ahead (reads overlap checksums and
    // uploads); the window bounds the host memory of entries read but not yet uploaded.
    const reads = new Map<Entry, Promise<Loaded>>();
    const fetches = new Map<Entry, Promise<Fetched>>();
    const readAhead = (from: number): void => {
      for (let i = from; i < entries.length && reads.size + fetches.size < 4; i++) {
        const e = entries[i]!;
        if (e.block || e.host || reads.has(e) || fetches.has(e)) continue;
        if (e.disk && this.#disk) {
          const read = this.#disk.load(this.#disk.fileOf(e.id)).then(
            (loaded) => ({ loaded }),
            (error: unknown) => ({ error }),
          );
          reads.set(e, read);
        } else if (this.#remote?.connected) {
          const fetch = this.#remote.load(e.key, this.#maxEntryBytes(e.tokens.length)).then(
            (loaded) => ({ loaded }),
            (error: unknown) => ({ error }),
          );
          fetches.set(e, fetch);
        }
      }
    };
    try {
      for (const [i, e] of entries.entries()) {
        readAhead(i);
        e.used = ++this.#clock;
        const read = reads.get(e);
        reads.delete(e);
        const fetch = fetches.get(e);
        fetches.delete(e);
        out.push(await this.#up(e, read, fetch));
      }
    } catch (err) {
      for (const b of out) b.release();
      await Promise.allSettled([...reads.values(), ...fetches.values()]);
      throw err;
    }
    await this.#balance();
    return out;
  }

  // The entry's block on the device, from whichever tier holds it (a handle the caller owns).
  async #up(e: Entry, read?: Promise<Loaded>, fetch?: Promise<Fetched>): Promise<NativeKvBlock> {
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
        if (!(err instanceof EntryDefect)) {
          this.#errors.disk++;
          throw err;
        }
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
    if (block === null && this.#remote) {
      // Computed on another host (or here before), when Redis has it.
      const got = await fetchRemote(this.host, this.#remote, e.key, start, e.tokens, this.#header(e.tokens), fetch);
      if (got && 'warning' in got) this.#defect(got.warning);
      else if (got) {
        block = got.block;
        this.#hits.remote++;
        if (this.#entries.get(e.id) === e) {
          if (this.#disk && !e.disk) {
            const kv = got.kv;
            await this.#commit(async () => {
              e.disk = await this.#write(e, this.#encode(e, kv));
            }).catch(() => undefined);
          }
          this.#publish(e, null, { entry: false, id: true });
        }
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
      const current = this.#entries.get(e.id) === e;
      let bytes = null as EntryBytes | null;
      if (current && this.#disk && !e.disk) {
        const b = block;
        // The KV is served anyway when this fails: the file is written again on the next miss.
        await this.#commit(async () => {
          bytes = this.#encode(e, await b.read());
          e.disk = await this.#write(e, bytes);
        }).catch(() => undefined);
      }
      // And in Redis, for the other hosts (the id record only while the id still means this content).
      this.#publish(e, bytes ?? block, { entry: true, id: current });
    }
    if (this.#entries.get(e.id) === e && !e.block) e.block = block.share();
    return block;
  }

  // Moves least recently used entries down until each tier fits its bound.
  async #balance(): Promise<void> {
    if (this.#deviceBytes === Infinity && this.#hostBytes === Infinity) return;
    await this.#commit(async () => {
      const lru = (pick: (e: Entry) => boolean): Entry[] => [...this.#entries.values()].filter(pick).sort((a, b) => a.used - b.used);
      const resident = lru((x) => x.block !== null);
      // The device tier's bytes (the prefix's pages and each resident entry's), kept as entries leave.
      const bytesOf = (e: Entry): number => blockPages(this.host, e.tokens.length) * this.host.pageBytes;
      let deviceBytes = (this.#prefix?.pages ?? 0) * this.host.pageBytes;
      for (const e of resident) deviceBytes += bytesOf(e);
      for (const e of resident) {
        if (this.#prefix === null || deviceBytes <= this.#deviceBytes) break;
        if (this.#hostBytes > 0 && !e.host) {
          const kv = await e.block!.read();
          if (this.#entries.get(e.id) !== e || !e.block) {
            if (!e.block) deviceBytes -= bytesOf(e); // left the device meanwhile (deleted, replaced, reclaimed)
            continue;
          }
          e.host = this.#encode(e, kv);
          this.#writes.host++;
        }
        e.block!.release();
        e.block = null;
        deviceBytes -= bytesOf(e);
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

  // The entry's bytes (file layout) from its KV as NativeKvBlock.read() returns it.
  #encode(e: Entry, kv: ArrayBuffer | Uint8Array): EntryBytes {
    return encodeEntry(e.id, this.#header(e.tokens), e.tokens, kv);
  }

  // Bytes of an entry's tokens and KV (its file less the JSON header).
  #dataBytes(tokens: number): number {
    return tokens * 4 + (this.host.layers * tokens * this.host.pageBytes) / this.host.pageSize;
  }

  #maxEntryBytes(tokens: number): number {
    return this.#dataBytes(tokens) + 8 + MAX_ENTRY_HEADER_BYTES;
  }

  // Writes the entry's file; its identity as written.
  async #write(e: Entry, bytes: EntryBytes): Promise<EntryIdentity | null> {
    const disk = this.#disk!;
    try {
      await disk.write(e.id, bytes);
    } catch (err) {
      this.#errors.disk++;
      throw err;
    }
    this.#writes.disk++;
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
    const e: Entry = { id: identity.id, tokens: identity.tokens, key: entryKey(this.host.fingerprint, this.prefixTokens, identity.tokens), block: null, host: null, disk: identity, remote: false, used: 0 };
    this.#entries.set(e.id, e);
    return e;
  }

  // An id record found in Redis (at open, after a reconnect) or announced by another store
  // (`replace`: a put newer than what this store holds under the id).
  #adoptRemote(id: string, tokens: Int32Array, replace: boolean): void {
    if (this.#prefix === null || id === '') return;
    const fits = tokens.length > 0 && tokens.every((t) => t >= 0 && t < this.host.vocabSize);
    let long = false;
    try {
      this.host.checkLength(this.prefixTokens.length + tokens.length, 0, 'id record');
    } catch {
      long = true;
    }
    if (!fits || long) {
      const name = `${this.#remote!.idsKey}[${JSON.stringify(id)}]`;
      this.#defect(new StoreWarning(`${name}: its tokens ${fits ? 'do not fit the model\'s context' : 'are outside the vocabulary'}`, 'foreign', name, 'remote'));
      return;
    }
    const key = entryKey(this.host.fingerprint, this.prefixTokens, tokens);
    const known = this.#lookup(id);
    if (known && known.key === key) {
      known.remote = true;
      return;
    }
    if (known && !replace) return;
    this.#drop(known);
    this.#entries.set(id, { id, tokens, key, block: null, host: null, disk: null, remote: true, used: 0 });
  }

  // The remote tier is usable again: ids put elsewhere meanwhile (their announcements were lost).
  #remoteUp(): void {
    const remote = this.#remote;
    if (!remote || this.#prefix === null) return;
    void remote.ids().then((ids) => {
      for (const r of ids ?? []) this.#adoptRemote(r.id, r.tokens, false);
    });
  }

  // An entry that cannot be served: counted and reported. A damaged file is removed, a foreign one
  // (another format version, say) left to whoever wrote it; the remote tier removes what it
  // refuses itself. Its entry is recomputed as a miss.
  #defect(w: StoreWarning): void {
    this.#corrupt++;
    if (w.tier === 'disk') {
      this.#bad.add(w.file);
      if (w.kind === 'corrupt') {
        try {
          this.#disk?.removeFileSync(w.file);
        } catch {
          // left in place: it is counted once and never served
        }
      }
    }
    this.#warn(w);
  }

  #warn(w: StoreWarning): void {
    if (this.#held) {
      this.#held.push(w);
      return;
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

// The entry under `key` from the remote tier, checked against `header` and uploaded at
// positions start..: null when Redis does not have it whole (or cannot be used now), a warning
// when what it has cannot be served. `ahead`: the fetch, when it was started earlier.
async function fetchRemote(
  host: StoreHost,
  remote: RemoteTier,
  key: string,
  start: number,
  tokens: Int32Array,
  header: StoreEntryHeader,
  ahead?: Promise<Fetched>,
): Promise<{ block: NativeKvBlock; kv: Uint8Array } | { warning: StoreWarning } | null> {
  let loaded: RemoteEntry | null;
  try {
    const r = ahead ? await ahead : { loaded: await remote.load(key, 8 + MAX_ENTRY_HEADER_BYTES + tokens.length * 4 + (host.layers * tokens.length * host.pageBytes) / host.pageSize) };
    if ('error' in r) throw r.error;
    loaded = r.loaded;
  } catch (err) {
    if (!(err instanceof EntryDefect)) throw err;
    return { warning: new StoreWarning(err.message, err.kind, remote.entryKey(key), 'remote') };
  }
  if (!loaded) return null;
  if (!sameHeader(loaded.identity.header, header)) {
    loaded.discard(); // under this model's and prefix's key: planted, or written by a broken writer
    const name = remote.entryKey(key);
    return { warning: new StoreWarning(`${name}: written for another model, prefix or document`, 'foreign', name, 'remote') };
  }
  return { block: await host.native('sequence').importBlock(start, tokens.length, loaded.kv), kv: loaded.kv };
}

function checkRemoteOptions(v: unknown): RemoteTierOptions {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new InvalidArgumentError(`remote: expected { url: 'redis://...', keyPrefix?, ttlSeconds?, secret? } but received ${describe(v)}`, 'remote');
  }
  const o = checkOptions(v as RemoteStoreOptions, REMOTE_OPTIONS, 'openStore: remote');
  if (typeof o.url !== 'string' || !/^rediss?:\/\/./.test(o.url)) {
    throw new InvalidArgumentError(`remote.url: expected 'redis://host:port' (or 'rediss://' for TLS) but received ${typeof o.url === 'string' ? JSON.stringify(o.url.replace(/:[^:@/]*@/, ':***@')) : describe(o.url)}`, 'remote.url');
  }
  if (o.keyPrefix !== undefined && typeof o.keyPrefix !== 'string') {
    throw new InvalidArgumentError(`remote.keyPrefix: expected a string but received ${describe(o.keyPrefix)}`, 'remote.keyPrefix');
  }
  const positive = (x: unknown, name: string, fallback: number | null, min = 1): number | null => {
    if (x === undefined) return fallback;
    if (typeof x === 'number' && Number.isSafeInteger(x) && x >= min) return x;
    throw new InvalidArgumentError(`remote.${name}: expected an integer >= ${min} but received ${describe(x)}`, `remote.${name}`);
  };
  let secret: string | null = o.secret ?? process.env.KVFOCUS_REMOTE_SECRET ?? null;
  if (o.secret !== undefined && (typeof o.secret !== 'string' || o.secret === '')) {
    throw new InvalidArgumentError('remote.secret: expected a non-empty string', 'remote.secret');
  }
  if (secret === '') secret = null;
  return {
    url: o.url,
    keyPrefix: o.keyPrefix ?? DEFAULT_KEY_PREFIX,
    ttlSeconds: positive(o.ttlSeconds, 'ttlSeconds', null),
    secret,
    connectTimeoutMs: positive(o.connectTimeoutMs, 'connectTimeoutMs', 2000)!,
    commandTimeoutMs: positive(o.commandTimeoutMs, 'commandTimeoutMs', 1000)!,
    chunkBytes: positive(o.chunkBytes, 'chunkBytes', DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES)!,
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
