// The store's remote tier: entries kept in a Redis server that many hosts share, below each
// host's own device, host and disk tiers. A host that misses locally fetches the entry there
// before recomputing it, and writes what it computed there (in the background).
//
// Keys (base = keyPrefix + 'v1:' + the namespace of the model fingerprint and prefix, as the
// disk tier's folder name):
//   base + 'e:' + K                 the entry's manifest (K: the entry key, a hash of the model
//                                   fingerprint, prefix and document tokens; 'prefix' for P's own KV)
//   base + 'c:' + K + ':' + W + ':' + i   chunk i of the entry's bytes, written by write W
//   base + 'w:' + K                 a short-lived claim: one writer writes the entry at a time
//   base + 'ids'                    a hash: document id -> id record (its tokens)
// and the channel base + 'ids', on which a writer announces each id record it writes.
//
// An entry's bytes are the disk tier's file bytes (./entry-file.ts: safetensors with the header
// and CRC-32s in __metadata__), cut into chunks. The manifest is written last, with SET NX: a
// reader that finds it finds a whole write (chunk keys name their write, so two writers never
// mix chunks), and concurrent writers of one entry write it once. Redis may evict any key at
// any time: a missing chunk is a miss, and the manifest is removed so that the next host that
// computes the entry writes it again.
//
// With a secret, every manifest and id record carries an HMAC-SHA256 over what it describes
// (the manifest and the entry's bytes; the namespace, id and tokens): entries and ids without a
// valid one are refused like damaged ones. Nothing is encrypted.
//
// Faults: commands time out (commandTimeoutMs) and none waits for a connection (no offline
// queue). A timeout or a lost connection pauses the tier for RETRY_PAUSE_MS (reads and writes
// skipped: the requests go on with the local tiers) while the client reconnects in the
// background; the outage is reported once, and its end when a command succeeds again.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis as RedisClient, RedisOptions } from 'ioredis';
import { crc32, decodeEntry, EntryDefect, type EntryBytes, type EntryIdentity } from './entry-file.js';

/** What openStore's `remote` option says, checked. */
export interface RemoteTierOptions {
  url: string;
  keyPrefix: string;
  /** Seconds an entry is kept after it was last written or read (null: until Redis evicts it). */
  ttlSeconds: number | null;
  secret: string | null;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  /** Bytes of one chunk of an entry's value. */
  chunkBytes: number;
}

/** What the tier tells its store. */
export interface RemoteTierListener {
  /** The server cannot be used (once per outage). */
  down(message: string): void;
  /** Usable again after being down (or connected for the first time after open). */
  up(): void;
  /** An id record another store announced (checked). */
  announce(id: string, tokens: Int32Array): void;
  /** An id record found damaged or untrusted. */
  defect(defect: EntryDefect, name: string): void;
}

/** Counters of the tier (the store adds what it knows of the entries). */
export interface RemoteTierCounters {
  /** Entries fetched from Redis and served (to sequences and to puts). */
  hits: number;
  /** Fetches that found no whole entry there (never written, expired, or partly evicted). */
  misses: number;
  /** Entries this store wrote there (concurrent writers of one entry write it once). */
  writes: number;
  /** Commands that failed or timed out (the requests went on with the local tiers). */
  errors: number;
  /** Writes not attempted: the server was unavailable, or too many bytes were waiting to be written. */
  skippedWrites: number;
  bytesRead: number;
  bytesWritten: number;
}

/** An entry fetched and checked: its identity, its KV, and how to remove it when the store refuses it. */
export interface RemoteEntry {
  identity: EntryIdentity;
  kv: Uint8Array;
  bytes: number;
  discard(): void;
}

export const DEFAULT_KEY_PREFIX = 'kvfocus:';
export const DEFAULT_CHUNK_BYTES = 16 << 20; // most entries fit one (read without a copy); larger ones span several
export const MIN_CHUNK_BYTES = 1024;
export const PREFIX_ENTRY_KEY = 'prefix';
const MANIFEST_FORMAT = 'kvfocus.remote-entry';
const MAX_MANIFEST_BYTES = 64 << 10;
const CHUNKS_PER_READ = 16; // chunks requested at once (bounds the replies waiting to be copied)
const CLAIM_MS = 60_000; // a writer that dies holds its claim this long
const ORPHAN_SECONDS = 120; // chunks of a write with no manifest yet expire after this
const MAX_PENDING_BYTES = 256 << 20; // writes waiting beyond this are skipped
const RETRY_PAUSE_MS = 2000;

// Removes KEYS[1] if it still holds ARGV[1] (a manifest or claim another writer may have replaced).
const DELETE_IF_SAME = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

interface Manifest {
  format: string;
  version: number;
  key: string;
  write: string;
  bytes: number;
  chunkBytes: number;
  chunks: number;
  headBytes: number;
  headCrc32: number;
}

/** The url without its password (for messages). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable url)';
  }
}

export class RemoteTier {
  readonly #o: RemoteTierOptions;
  readonly #base: string;
  readonly #listener: RemoteTierListener;
  readonly #name: string;
  readonly #self = randomBytes(8).toString('hex'); // this tier's announcements come back to it: skipped
  #client: RedisClient | null = null;
  #subscriber: RedisClient | null = null;
  #ready = false; // the client's connection is up
  #pausedUntil = 0; // after a failed command: skip until then
  #down = false; // an outage was reported (and not yet its end)
  #everUp = false;
  #closing = false; // close() was called: nothing new starts
  #closed = false; // and the writes started before are done
  #chain: Promise<unknown> = Promise.resolve(); // writes, one at a time
  #pendingBytes = 0;
  readonly #pending = new Set<Promise<unknown>>();
  readonly counters: RemoteTierCounters = { hits: 0, misses: 0, writes: 0, errors: 0, skippedWrites: 0, bytesRead: 0, bytesWritten: 0 };

  constructor(options: RemoteTierOptions, namespace: string, listener: RemoteTierListener) {
    this.#o = options;
    this.#base = `${options.keyPrefix}v1:${namespace}:`;
    this.#listener = listener;
    this.#name = redactUrl(options.url);
  }

  /** The server, for messages (no password). */
  get server(): string {
    return this.#name;
  }

  /** Whether reads and writes go to the server now (connected, and not paused after a failure). */
  get connected(): boolean {
    return !this.#closing && this.#usable();
  }

  #usable(): boolean {
    return this.#ready && !this.#closed && Date.now() >= this.#pausedUntil;
  }

  /** The Redis key of an entry's manifest. */
  entryKey(key: string): string {
    return `${this.#base}e:${key}`;
  }

  get idsKey(): string {
    return `${this.#base}ids`;
  }

  /** Where a chunk of write `write` of an entry lives (tests damage chunks through it). */
  chunkKey(key: string, write: string, i: number): string {
    return `${this.#base}c:${key}:${write}:${i}`;
  }

  /**
   * Starts connecting; resolves once the first attempt succeeded or failed, or after the connect
   * timeout: never rejects (a server that is down is reported and retried in the background).
   */
  async open(): Promise<void> {
    const { Redis } = await import('ioredis'); // loaded only by stores with a remote tier
    const options: RedisOptions = {
      protocol: 2,
      connectTimeout: this.#o.connectTimeoutMs,
      commandTimeout: this.#o.commandTimeoutMs,
      enableOfflineQueue: false, // a command never waits for a connection
      maxRetriesPerRequest: 0, // commands in flight when it drops fail at once
      retryStrategy: (times) => Math.min(100 * times, RETRY_PAUSE_MS),
      disableClientInfo: true,
      lazyConnect: true,
    };
    const client = new Redis(this.#o.url, options);
    this.#client = client;
    client.on('error', (e: Error) => this.#fail(e));
    client.on('close', () => {
      this.#ready = false;
      this.#fail(new Error('connection closed'));
    });
    client.on('ready', () => {
      this.#ready = true;
      this.#pausedUntil = 0;
      this.#recovered();
    });
    const first = new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        client.off('ready', done);
        client.off('error', done);
        resolve();
      };
      const timer = setTimeout(done, this.#o.connectTimeoutMs);
      client.once('ready', done);
      client.once('error', done);
    });
    client.connect().catch(() => {}); // failures arrive as 'error' events; ioredis retries
    await first;
    if (!this.#ready && !this.#down) this.#fail(new Error(`not connected within ${this.#o.connectTimeoutMs} ms`));

    // Announcements of ids other stores put: a second connection (a subscribed one can send
    // nothing else), which queues its SUBSCRIBE until it is connected and renews it on reconnects.
    const sub = client.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, commandTimeout: undefined, lazyConnect: true });
    this.#subscriber = sub;
    sub.on('error', () => {}); // the main connection reports outages
    sub.on('message', (_channel: string, message: string) => this.#onAnnouncement(message));
    sub.connect().catch(() => {});
    sub.subscribe(this.idsKey).catch(() => {});
  }

  // A failed command or connection: counted, the tier paused, the outage reported once.
  #fail(e: Error): void {
    if (this.#closing) return;
    this.#pausedUntil = Date.now() + RETRY_PAUSE_MS;
    if (this.#down) return;
    this.#down = true;
    this.#listener.down(`${this.#name}: ${e.message}; the store goes on with its local tiers and retries`);
  }

  #recovered(): void {
    if (this.#closing) return;
    const wasDown = this.#down || !this.#everUp;
    this.#down = false;
    this.#everUp = true;
    if (wasDown) this.#listener.up();
  }

  // A command: null when the tier is paused or the command fails (counted, the tier paused).
  async #run<T>(what: (c: RedisClient) => Promise<T>): Promise<{ value: T } | null> {
    const client = this.#client;
    if (!client || !this.#usable()) return null;
    try {
      const value = await what(client);
      if (this.#down && this.#ready) this.#recovered();
      return { value };
    } catch (e) {
      this.counters.errors++;
      this.#fail(e as Error);
      return null;
    }
  }

  #mac(parts: Array<string | Uint8Array>): string | null {
    if (this.#o.secret === null) return null;
    const h = createHmac('sha256', this.#o.secret);
    for (const p of parts) h.update(p);
    return h.digest('hex');
  }

  #macMatches(expected: string | null, given: string | undefined): boolean {
    if (expected === null) return true;
    if (given === undefined || !/^[0-9a-f]{64}$/.test(given)) return false;
    return timingSafeEqual(Buffer.from(expected, 'hex'), Buffer.from(given, 'hex'));
  }

  // ---------------------------------------------------------------------------------------------
  // Reading
  // ---------------------------------------------------------------------------------------------

  /**
   * The entry stored under `key`, every check passed (manifest, chunk sizes, HMAC with a secret,
   * then the entry's own CRC-32s): null when it is not there (or partly evicted), or when the
   * server cannot be used; EntryDefect when it is damaged, untrusted, not an entry or larger
   * than `maxBytes` (its manifest is then removed). The caller compares the identity with what
   * it expects.
   */
  async load(key: string, maxBytes: number): Promise<RemoteEntry | null> {
    const mkey = this.entryKey(key);
    const got = await this.#run((c) => c.getBuffer(mkey));
    if (got === null) return null;
    const raw = got.value;
    if (raw === null) {
      this.counters.misses++;
      return null;
    }
    const discard = (m: Manifest | null): void => this.#discard(mkey, raw, key, m);
    let manifest: Manifest | null = null;
    try {
      const { manifest: m, json, mac } = this.#parseManifest(raw, mkey);
      manifest = m;
      if (m.key !== key) throw new EntryDefect(`${mkey}: the manifest is for another entry (${m.key})`, 'foreign');
      if (m.bytes > maxBytes) throw new EntryDefect(`${mkey}: an entry of ${m.bytes} bytes, where this document's can have at most ${maxBytes}`, 'foreign');
      if (this.#o.secret !== null && mac === undefined) throw new EntryDefect(`${mkey}: no HMAC, and this store has a secret (written without one, or forged)`, 'untrusted');
      const keys = Array.from({ length: m.chunks }, (_, i) => this.chunkKey(key, m.write, i));
      // One buffer for the entry (the KV is uploaded from one): a lone chunk is it already.
      let bytes: Buffer | null = m.chunks === 1 ? null : Buffer.allocUnsafe(m.bytes);
      let at = 0;
      for (let i = 0; i < keys.length; i += CHUNKS_PER_READ) {
        // GETs sent together (a large value parses faster as a reply of its own than inside an MGET's array).
        const r = await this.#run((c) => Promise.all(keys.slice(i, i + CHUNKS_PER_READ).map((k) => c.getBuffer(k))));
        if (r === null) return null;
        for (const [j, chunk] of r.value.entries()) {
          if (chunk === null) {
            // Evicted (or expired) under the manifest: a miss; the manifest goes, so the entry can be written again.
            this.counters.misses++;
            discard(m);
            return null;
          }
          const want = Math.min(m.chunkBytes, m.bytes - at);
          if (chunk.length !== want) throw new EntryDefect(`${keys[i + j]}: chunk of ${chunk.length} bytes, the manifest says ${want}`, 'corrupt');
          if (bytes) chunk.copy(bytes, at);
          else bytes = chunk;
          at += chunk.length;
        }
      }
      if (bytes === null) throw new EntryDefect(`${mkey}: no chunks`, 'corrupt');
      if (crc32(bytes.subarray(0, m.headBytes)) !== m.headCrc32) throw new EntryDefect(`${mkey}: the header's checksum does not match (damaged entry)`, 'corrupt');
      if (!this.#macMatches(this.#mac([json, '\n', bytes]), mac)) {
        throw new EntryDefect(`${mkey}: the HMAC does not match (written with another secret, or forged)`, 'untrusted');
      }
      const { identity, kv } = decodeEntry(bytes, mkey);
      this.counters.hits++;
      this.counters.bytesRead += bytes.length;
      const ttl = this.#o.ttlSeconds;
      if (ttl !== null) {
        // An entry in use lives on: ttlSeconds counts from its last write or read.
        void this.#run((c) => {
          const p = c.pipeline().expire(mkey, ttl);
          for (const k of keys) p.expire(k, ttl + 60);
          return execAll(p);
        });
      }
      return { identity, kv, bytes: bytes.length, discard: () => discard(manifest) };
    } catch (e) {
      if (e instanceof EntryDefect) discard(manifest);
      throw e;
    }
  }

  #parseManifest(raw: Buffer, mkey: string): { manifest: Manifest; json: string; mac: string | undefined } {
    if (raw.length > MAX_MANIFEST_BYTES) throw new EntryDefect(`${mkey}: a manifest of ${raw.length} bytes is larger than one can be`, 'corrupt');
    const text = raw.toString('utf8');
    const nl = text.indexOf('\n');
    const json = nl < 0 ? text : text.slice(0, nl);
    const macLine = nl < 0 ? undefined : text.slice(nl + 1);
    if (macLine !== undefined && !macLine.startsWith('mac:')) throw new EntryDefect(`${mkey}: malformed manifest`, 'corrupt');
    let m: Manifest;
    try {
      m = JSON.parse(json) as Manifest;
    } catch {
      throw new EntryDefect(`${mkey}: the manifest is not JSON (damaged entry)`, 'corrupt');
    }
    if (m === null || typeof m !== 'object' || m.format !== MANIFEST_FORMAT) throw new EntryDefect(`${mkey}: not a kvfocus remote entry`, 'foreign');
    if (m.version !== 1) throw new EntryDefect(`${mkey}: remote entry version ${String(m.version)}, this kvfocus reads 1`, 'foreign');
    const int = (v: unknown, min: number): boolean => Number.isSafeInteger(v) && (v as number) >= min;
    const ok =
      typeof m.key === 'string' && typeof m.write === 'string' && /^[0-9a-f]{1,64}$/.test(m.write) &&
      int(m.bytes, 8) && int(m.chunkBytes, MIN_CHUNK_BYTES) && int(m.chunks, 1) && int(m.headBytes, 8) && m.headBytes <= m.bytes &&
      int(m.headCrc32, 0) && m.chunks === Math.ceil(m.bytes / m.chunkBytes);
    if (!ok) throw new EntryDefect(`${mkey}: malformed manifest`, 'corrupt');
    return { manifest: m, json, mac: macLine?.slice(4) };
  }

  // Removes a manifest the store cannot serve (if no writer replaced it since) and its chunks.
  #discard(mkey: string, raw: Buffer, key: string, m: Manifest | null): void {
    const chunks = m ? Array.from({ length: m.chunks }, (_, i) => this.chunkKey(key, m.write, i)) : [];
    void this.#run(async (c) => {
      const removed = await c.eval(DELETE_IF_SAME, 1, mkey, raw);
      if (removed === 1 && chunks.length > 0) await c.del(...chunks);
    });
  }

  /** The id records of the namespace (checked; damaged or untrusted ones reported and left out); null when the server cannot be used. */
  async ids(): Promise<Array<{ id: string; tokens: Int32Array }> | null> {
    const out: Array<{ id: string; tokens: Int32Array }> = [];
    let cursor = '0';
    do {
      const r = await this.#run((c) => c.hscan(this.idsKey, cursor, 'COUNT', 1000));
      if (r === null) return null;
      cursor = r.value[0];
      const fields = r.value[1];
      for (let i = 0; i + 1 < fields.length; i += 2) {
        const rec = this.#parseIdRecord(fields[i]!, fields[i + 1]!);
        if (rec) out.push(rec);
      }
    } while (cursor !== '0');
    return out;
  }

  #idRecord(id: string, tokens: Int32Array): string {
    const b64 = Buffer.from(tokens.buffer, tokens.byteOffset, tokens.byteLength).toString('base64');
    const mac = this.#mac(this.#idMacInput(id, b64));
    return JSON.stringify(mac === null ? { v: 1, tokens: b64 } : { v: 1, tokens: b64, mac });
  }

  #idMacInput(id: string, b64: string): string[] {
    return ['kvfocus.remote-id\n', this.#base, '\n', id, '\n', b64];
  }

  #parseIdRecord(id: string, text: string): { id: string; tokens: Int32Array } | null {
    const name = `${this.idsKey}[${JSON.stringify(id)}]`;
    try {
      let r: { v?: unknown; tokens?: unknown; mac?: unknown };
      try {
        r = JSON.parse(text);
      } catch {
        throw new EntryDefect(`${name}: the id record is not JSON`, 'corrupt');
      }
      if (r === null || typeof r !== 'object' || r.v !== 1 || typeof r.tokens !== 'string' || (r.mac !== undefined && typeof r.mac !== 'string')) {
        throw new EntryDefect(`${name}: malformed id record`, 'corrupt');
      }
      if (!this.#macMatches(this.#mac(this.#idMacInput(id, r.tokens)), r.mac as string | undefined)) {
        throw new EntryDefect(`${name}: the id record's HMAC ${r.mac === undefined ? 'is missing' : 'does not match'} (written with another secret, or forged)`, 'untrusted');
      }
      const bytes = Buffer.from(r.tokens, 'base64');
      if (bytes.length === 0 || bytes.length % 4 !== 0) throw new EntryDefect(`${name}: the id record's tokens are damaged`, 'corrupt');
      const tokens = new Int32Array(bytes.length / 4);
      Buffer.from(tokens.buffer).set(bytes);
      return { id, tokens };
    } catch (e) {
      if (!(e instanceof EntryDefect)) throw e;
      this.#listener.defect(e, name);
      return null;
    }
  }

  #onAnnouncement(message: string): void {
    if (this.#closing) return;
    let m: { id?: unknown; record?: unknown; from?: unknown };
    try {
      m = JSON.parse(message);
    } catch {
      return;
    }
    if (typeof m?.id !== 'string' || typeof m.record !== 'string' || m.from === this.#self) return;
    const rec = this.#parseIdRecord(m.id, m.record);
    if (rec) this.#listener.announce(rec.id, rec.tokens);
  }

  // ---------------------------------------------------------------------------------------------
  // Writing (in the background: the caller never waits)
  // ---------------------------------------------------------------------------------------------

  /** Whether a write of about `bytes` would be started now (connected, and room in the backlog); counts a skip when not. */
  canWrite(bytes: number): boolean {
    const ok = this.connected && (this.#pendingBytes === 0 || this.#pendingBytes + bytes <= MAX_PENDING_BYTES);
    if (!ok) this.counters.skippedWrites++;
    return ok;
  }

  /**
   * Writes an entry (unless it is there already or another writer is writing it) and then the
   * id record of `id`, after every earlier write. Never rejects: true when the id record (or,
   * without one, the entry) is in Redis afterwards.
   */
  write(job: { key: string; bytes: number; entry: Promise<EntryBytes> | null; id: { id: string; tokens: Int32Array } | null }): Promise<boolean> {
    this.#pendingBytes += job.bytes;
    const entry = job.entry?.catch(() => null) ?? null;
    const run = this.#chain.then(async () => {
      let ok = true;
      if (entry) {
        const bytes = await entry;
        ok = bytes !== null && (await this.#writeEntry(job.key, bytes));
        if (bytes === null) this.counters.errors++;
      }
      if (job.id) ok = await this.#writeId(job.id.id, job.id.tokens);
      return ok;
    });
    const settled = run.catch(() => false).finally(() => {
      this.#pendingBytes -= job.bytes;
      this.#pending.delete(settled);
    });
    this.#pending.add(settled);
    this.#chain = settled;
    return settled;
  }

  async #writeEntry(key: string, e: EntryBytes): Promise<boolean> {
    const mkey = this.entryKey(key);
    const claimKey = `${this.#base}w:${key}`;
    const write = randomBytes(8).toString('hex');
    // Claim the entry, unless it is there already or being written by another store.
    const claimed = await this.#run(async (c) => {
      if ((await c.exists(mkey)) === 1) return 'there';
      return (await c.set(claimKey, write, 'PX', CLAIM_MS, 'NX')) === 'OK' ? 'ours' : 'busy';
    });
    if (claimed === null) return false;
    if (claimed.value !== 'ours') return true; // there, or about to be
    const total = e.head.length + e.tokens.length + e.kv.length;
    const chunks = chunksOf([e.head, e.tokens, e.kv], this.#o.chunkBytes);
    const keys = chunks.map((_, i) => this.chunkKey(key, write, i));
    const manifest: Manifest = { format: MANIFEST_FORMAT, version: 1, key, write, bytes: total, chunkBytes: this.#o.chunkBytes, chunks: chunks.length, headBytes: e.head.length, headCrc32: crc32(e.head) };
    const json = JSON.stringify(manifest);
    const mac = this.#mac([json, '\n', e.head, e.tokens, e.kv]);
    const value = mac === null ? json : `${json}\nmac:${mac}`;
    const ttl = this.#o.ttlSeconds;
    const done = await this.#run(async (c) => {
      try {
        // Chunks first, each with a short life until the manifest that names them exists.
        const p = c.pipeline();
        for (const [i, chunk] of chunks.entries()) p.set(keys[i]!, chunk, 'EX', ORPHAN_SECONDS);
        await execAll(p);
        const set = ttl === null ? await c.set(mkey, value, 'NX') : await c.set(mkey, value, 'EX', ttl, 'NX');
        if (set !== 'OK') {
          await c.del(...keys); // another writer's manifest won (the claim had run out)
          return false;
        }
        // The chunks now live as long as the manifest (a little longer, so a reader that found
        // the manifest finds them).
        const q = c.pipeline();
        for (const k of keys) {
          if (ttl === null) q.persist(k);
          else q.expire(k, ttl + 60);
        }
        await execAll(q);
        return true;
      } finally {
        await c.eval(DELETE_IF_SAME, 1, claimKey, write).catch(() => {});
      }
    });
    if (done?.value) {
      this.counters.writes++;
      this.counters.bytesWritten += total;
    }
    return done !== null;
  }

  async #writeId(id: string, tokens: Int32Array): Promise<boolean> {
    const record = this.#idRecord(id, tokens);
    const ttl = this.#o.ttlSeconds;
    const r = await this.#run(async (c) => {
      const p = c.multi().hset(this.idsKey, id, record);
      if (ttl !== null) p.expire(this.idsKey, ttl + 60);
      p.publish(this.idsKey, JSON.stringify({ id, record, from: this.#self }));
      await execAll(p);
    });
    return r !== null;
  }

  /** Removes the id record of `id` (the entry stays: other ids or hosts may hold the same document). */
  deleteId(id: string): void {
    void this.#run((c) => c.hdel(this.idsKey, id));
  }

  /** Resolves once every write started so far has finished (or failed). */
  async flush(): Promise<void> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
  }

  /** Closes the connections once the writes started so far are done; nothing is read or written after. Idempotent. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    const client = this.#client;
    const sub = this.#subscriber;
    this.#subscriber = null;
    sub?.disconnect();
    void this.flush().then(() => {
      this.#closed = true;
      this.#client = null;
      client?.disconnect();
    });
  }
}

// A pipeline's or transaction's replies, rejecting with the first error among them.
async function execAll(p: { exec(): Promise<Array<[Error | null, unknown]> | null> }): Promise<void> {
  const replies = await p.exec();
  if (replies === null) throw new Error('transaction discarded');
  for (const [e] of replies) if (e) throw e;
}

// The bytes of `parts` cut into chunks of `size` (the last shorter): views where a chunk lies in
// one part, copies where it spans two.
export function chunksOf(parts: Buffer[], size: number): Buffer[] {
  const out: Buffer[] = [];
  let pieces: Buffer[] = [];
  let filled = 0;
  for (const part of parts) {
    for (let at = 0; at < part.length; ) {
      const n = Math.min(size - filled, part.length - at);
      pieces.push(part.subarray(at, at + n));
      filled += n;
      at += n;
      if (filled === size) {
        out.push(pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces));
        pieces = [];
        filled = 0;
      }
    }
  }
  if (filled > 0) out.push(pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces));
  return out;
}
