// The store's remote tier against a real redis-server (CPU, a fixture checkpoint): one process
// computes a document and another is served it from Redis with the same KV (logits equal a
// direct prefill of [P; d; query]); concurrent writers write an entry once; damaged, partly
// evicted, foreign and forged entries are misses, counted and never served; Redis down at open,
// killed mid-run or frozen never fails a request, and the tier reconnects when it returns.
//
// The server is Debian's redis-server, started here on a free loopback port without persistence.
// Where it is not installed the tests skip with a note, except on CI (CI=true), where .ci/run
// installs it and a missing server fails them.
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type ContextStore, loadModel, type Model, type StoreWarning } from '../../lib/index.js';
import { namespaceOf } from '../../lib/store/disk-tier.js';
import { entryKey, tokensHash } from '../../lib/store/entry.js';
import { findRedisServer, freePort, RedisServer, startRedis } from '../support/redis-server.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { maxDiff } from '../support/compare';

const repo = join(__dirname, '..', '..');
const onCi = process.env.CI === 'true' || process.env.CI === '1';
const redisBin = findRedisServer();
if (!redisBin && !onCi) console.warn('store-remote.test.ts: skipped: no redis-server on PATH (apt-get install redis-server; .ci/run installs it)');

let root: string;
let modelDir: string;
let model: Model;
let server: RedisServer;
let redis: Redis; // the tests' own client: inspects and damages what the stores wrote
const PREFIX = 21;
const LOAD = { device: 'cpu', kvCacheTokens: 1024, prefillChunk: 16 } as const;
const CHUNK = 2048; // small chunks: the fixture's entries span several

const ids = (i: number, length: number): number[] => Array.from({ length }, (_, j) => 3 + ((i * 31 + j * 7 + ((i * j) % 11)) % 250));
const prefix = ids(0, PREFIX);
const query = ids(9, 5);

// The query's last logits over the stored document, against the direct prefill's.
async function served(m: Model, store: ContextStore, id: string, doc: number[]): Promise<number> {
  using seq = m.sequence({ store, documents: [id] });
  const ours = (await seq.append(query, { logits: 'last' }))!;
  return maxDiff(ours, await m.logits([...prefix, ...doc, ...query]));
}

function collect(store: ContextStore): StoreWarning[] {
  const out: StoreWarning[] = [];
  store.on('warning', (w: StoreWarning) => out.push(w));
  return out;
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Where the store keeps a document in Redis: its manifest and (from the manifest) its chunks.
function keysOf(store: ContextStore, keyPrefix: string, doc: number[]): { manifest: string; chunks(manifest: { write: string; chunks: number }): string[] } {
  const fp = store.host.fingerprint;
  const k = entryKey(fp, store.prefixTokens, Int32Array.from(doc));
  const base = `${keyPrefix}v1:${namespaceOf(fp, tokensHash(store.prefixTokens))}:`;
  return {
    manifest: `${base}e:${k}`,
    chunks: (m) => Array.from({ length: m.chunks }, (_, i) => `${base}c:${k}:${m.write}:${i}`),
  };
}

async function manifestAt(key: string): Promise<{ write: string; chunks: number; bytes: number; key: string } | null> {
  const raw = await redis.get(key);
  return raw === null ? null : JSON.parse(raw.split('\n')[0]!);
}

// A child process running `script` with `k` (the built package), `model`, `prefix` and `ids`; its stdout.
function child(script: string): Promise<string> {
  const code = `const k = require(${JSON.stringify(repo)});
const ids = ${ids.toString()};
const prefix = ids(0, ${PREFIX});
(async () => {
  const model = await k.loadModel(${JSON.stringify(modelDir)}, ${JSON.stringify(LOAD)});
  ${script}
})().catch((e) => { console.error(e); process.exit(1); });`;
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (b) => (out += b));
    c.stderr.on('data', (b) => (err += b));
    c.on('exit', (status) => (status === 0 && err === '' ? resolve(out) : reject(new Error(`child exited ${status}: ${err}`))));
  });
}

it.runIf(onCi || redisBin !== null)('a redis-server is installed (CI installs it in .ci/run)', () => {
  expect(redisBin, 'redis-server is not on PATH: the remote tier tests cannot run').not.toBeNull();
});

describe('remote options (no server needed)', () => {
  let m: Model;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvfocus-remote-options-'));
    m = await loadModel(makeFixtures(dir, ['llama-gqa'])['llama-gqa']!, LOAD);
  });
  afterAll(() => {
    m?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  it('are checked, naming the field', async () => {
    await expect(m.openStore({ prefix, remote: { url: 'http://localhost:6379' } })).rejects.toThrow(/remote\.url: expected 'redis:\/\/host:port'/);
    await expect(m.openStore({ prefix, remote: { url: 'redis://localhost', ttl_seconds: 5 } as never })).rejects.toThrow(/unknown option 'ttl_seconds' \(did you mean 'ttlSeconds'\?\)/);
    await expect(m.openStore({ prefix, remote: { url: 'redis://localhost', ttlSeconds: 0 } })).rejects.toThrow(/remote\.ttlSeconds: expected an integer >= 1/);
    await expect(m.openStore({ prefix, remote: { url: 'redis://localhost', secret: '' } })).rejects.toThrow(/remote\.secret/);
    await expect(m.openStore({ prefix, remote: 'redis://localhost' as never })).rejects.toThrow(/remote: expected \{ url/);
  });

  it("a server that is not there: openStore resolves, and the url's password appears in no message", async () => {
    const url = `redis://:hunter2@127.0.0.1:${await freePort()}`;
    using store = await m.openStore({ prefix, remote: { url, connectTimeoutMs: 300 } });
    const warnings = collect(store);
    await store.put('a', ids(1, 12));
    expect(await served(m, store, 'a', ids(1, 12))).toBeLessThan(1e-5);
    await settle();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.kind).toBe('unavailable');
    expect(`${warnings[0]!.message} ${warnings[0]!.file}`).not.toContain('hunter2');
    expect(warnings[0]!.file).toContain(':***@127.0.0.1');
  });
});

describe.skipIf(!redisBin && !onCi)('remote tier (Redis)', () => {
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'kvfocus-remote-'));
    modelDir = makeFixtures(root, ['llama-gqa'])['llama-gqa']!;
    model = await loadModel(modelDir, LOAD);
    server = await startRedis();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
  });

  afterAll(async () => {
    redis?.disconnect();
    await server?.kill();
    model?.dispose();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const remote = (keyPrefix: string, more: object = {}): { url: string; keyPrefix: string; chunkBytes: number } => ({ url: server.url, keyPrefix, chunkBytes: CHUNK, ...more });

  it('one process computes the documents, another is served them from Redis with the same KV', async () => {
    const docs = { a: ids(1, 20), b: ids(2, 33), c: ids(3, 17) };
    const out = await child(`
      const store = await model.openStore({ prefix, remote: ${JSON.stringify(remote('two:'))} });
      await store.putMany(${JSON.stringify(Object.entries(docs).map(([id, tokens]) => ({ id, tokens })))});
      await store.flush();
      console.log(JSON.stringify(store.stats().remote));
      store.close(); model.dispose();`);
    const theirs = JSON.parse(out);
    expect(theirs).toMatchObject({ connected: true, writes: 4, errors: 0, entries: 3 }); // 3 documents and the prefix
    using store = await model.openStore({ prefix, remote: remote('two:') });
    expect(store.list().sort()).toEqual(['a', 'b', 'c']); // their ids, from Redis
    for (const [id, d] of Object.entries(docs)) expect(await served(model, store, id, d)).toBeLessThan(1e-5);
    const s = store.stats();
    expect(s.hitsByTier).toEqual({ device: 0, host: 0, disk: 0, remote: 3 });
    expect(s.misses).toBe(0);
    expect(s.corruptEntries).toBe(0);
    expect(s.remote).toMatchObject({ connected: true, entries: 3, hits: 4, misses: 0, writes: 0, errors: 0 }); // hits: the prefix too
    expect(s.remote!.tokens).toBe(20 + 33 + 17);
  });

  it('ids put by another process while a store is open are announced to it; a put there of the same document is fetched, not computed', async () => {
    using store = await model.openStore({ prefix, remote: remote('live:') });
    expect(store.has('late')).toBe(false);
    await child(`
      const store = await model.openStore({ prefix, remote: ${JSON.stringify(remote('live:'))} });
      await store.put('late', ids(6, 20));
      await store.flush(); store.close(); model.dispose();`);
    await until('the id is announced', () => store.has('late'));
    expect(await served(model, store, 'late', ids(6, 20))).toBeLessThan(1e-5);
    expect(store.stats().hitsByTier.remote).toBe(1);
    await store.put('same-content', ids(6, 20)); // another id, the same document: its KV comes from Redis
    expect(store.stats().remote!.hits).toBe(2);
    expect(await served(model, store, 'same-content', ids(6, 20))).toBeLessThan(1e-5);
    expect(store.stats().misses).toBe(0);
  });

  it('several processes putting the same documents at once write each entry once', async () => {
    const docs = Array.from({ length: 6 }, (_, i) => ({ id: `s${i}`, tokens: ids(20 + i, 24 + i) }));
    const writer = (): Promise<string> =>
      child(`
        const store = await model.openStore({ prefix, remote: ${JSON.stringify(remote('many:'))} });
        await store.putMany(${JSON.stringify(docs)});
        await store.flush();
        console.log(JSON.stringify(store.stats().remote));
        store.close(); model.dispose();`);
    const stats = (await Promise.all([writer(), writer(), writer()])).map((o) => JSON.parse(o));
    expect(stats.reduce((n, s) => n + s.writes, 0)).toBe(docs.length + 1); // each document and the prefix, once
    for (const s of stats) expect(s.errors).toBe(0);
    const keys = await redis.keys('many:*');
    const manifests = keys.filter((k) => /:e:/.test(k));
    expect(manifests).toHaveLength(docs.length + 1);
    expect(keys.filter((k) => /:w:/.test(k))).toEqual([]); // no claim left behind
    let chunks = 0;
    for (const k of manifests) chunks += (await manifestAt(k))!.chunks;
    expect(keys.filter((k) => /:c:/.test(k))).toHaveLength(chunks); // no chunks of a losing write
    using store = await model.openStore({ prefix, remote: remote('many:') });
    for (const d of docs) expect(await served(model, store, d.id, d.tokens)).toBeLessThan(1e-5);
    expect(store.stats().hitsByTier.remote).toBe(docs.length);
  });

  it('a byte flipped in a stored chunk is caught by the checksum: counted, reported, recomputed, and the entry written again whole', async () => {
    const doc = ids(4, 40);
    {
      using writer = await model.openStore({ prefix, remote: remote('flip:') });
      await writer.put('d', doc);
      await writer.flush();
      const k = keysOf(writer, 'flip:', doc);
      const m = (await manifestAt(k.manifest))!;
      expect(m.chunks).toBeGreaterThan(2);
      const last = k.chunks(m).at(-1)!;
      const bytes = (await redis.getBuffer(last))!;
      bytes[bytes.length - 10]! ^= 0x20; // inside v
      await redis.set(last, bytes, 'KEEPTTL');
    }
    using store = await model.openStore({ prefix, remote: remote('flip:') });
    const warnings = collect(store);
    expect(await served(model, store, 'd', doc)).toBeLessThan(1e-5);
    let s = store.stats();
    expect(s.corruptEntries).toBe(1);
    expect(s.misses).toBe(1);
    expect(s.hitsByTier.remote).toBe(0);
    await settle();
    expect(warnings.map((w) => [w.kind, w.tier])).toEqual([['corrupt', 'remote']]);
    expect(warnings[0]!.message).toMatch(/checksum/);
    await store.flush();
    s = store.stats();
    expect(s.remote!.writes).toBe(1); // the damaged entry was removed, and the recomputed one written
    using again = await model.openStore({ prefix, remote: remote('flip:') });
    expect(await served(model, again, 'd', doc)).toBeLessThan(1e-5);
    expect(again.stats().hitsByTier.remote).toBe(1);
    expect(again.stats().corruptEntries).toBe(0);
  });

  it('a chunk evicted from Redis is a miss, not an error: recomputed, and the entry written again', async () => {
    const doc = ids(5, 40);
    {
      using writer = await model.openStore({ prefix, remote: remote('evict:') });
      await writer.put('d', doc);
      await writer.flush();
      const k = keysOf(writer, 'evict:', doc);
      const m = (await manifestAt(k.manifest))!;
      expect(await redis.del(k.chunks(m)[1]!)).toBe(1);
    }
    using store = await model.openStore({ prefix, remote: remote('evict:') });
    const warnings = collect(store);
    expect(await served(model, store, 'd', doc)).toBeLessThan(1e-5);
    const s = store.stats();
    expect(s.misses).toBe(1);
    expect(s.corruptEntries).toBe(0);
    expect(s.remote).toMatchObject({ misses: 1, errors: 0, hits: 1 }); // hits: the prefix
    await settle();
    expect(warnings).toEqual([]);
    await store.flush();
    using again = await model.openStore({ prefix, remote: remote('evict:') });
    expect(await served(model, again, 'd', doc)).toBeLessThan(1e-5);
    expect(again.stats().hitsByTier.remote).toBe(1);
  });

  it('an entry written by another model under the same key prefix is never served', async () => {
    const doc = ids(7, 30);
    // Other weights, same architecture and tokens: another fingerprint.
    const tweaked = join(root, 'tweaked');
    mkdirSync(tweaked, { recursive: true });
    for (const f of readdirSync(modelDir)) copyFileSync(join(modelDir, f), join(tweaked, f));
    const weights = join(tweaked, 'model.safetensors');
    const w = readFileSync(weights);
    w[w.length - 1] ^= 0x01;
    writeFileSync(weights, w);
    const other = await loadModel(tweaked, LOAD);
    try {
      using theirs = await other.openStore({ prefix, remote: remote('shared:') });
      await theirs.put('d', doc);
      await theirs.flush();
      // Ours does not find it: another namespace.
      {
        using ours = await model.openStore({ prefix, remote: remote('shared:') });
        expect(ours.has('d')).toBe(false);
        await ours.put('d', doc);
        expect(ours.stats().remote!.hits).toBe(0);
        await ours.flush();
      }
      // Planted under our key (the manifest edited to name it): refused by the header check.
      const from = keysOf(theirs, 'shared:', doc);
      using probe = await model.openStore({ prefix, remote: remote('probe:') }); // our fingerprint
      const to = keysOf(probe, 'shared:', doc);
      const m = (await manifestAt(from.manifest))!;
      const raw = (await redis.get(from.manifest))!;
      const ourKey = to.manifest.split(':e:')[1]!;
      const theirChunks = from.chunks(m);
      for (const [i, c] of to.chunks(m).entries()) await redis.set(c, (await redis.getBuffer(theirChunks[i]!))!);
      await redis.set(to.manifest, raw.replace(`"key":"${m.key}"`, `"key":"${ourKey}"`));
    } finally {
      other.dispose();
    }
    using store = await model.openStore({ prefix, remote: remote('shared:') });
    const warnings = collect(store);
    expect(await served(model, store, 'd', doc)).toBeLessThan(1e-5);
    const s = store.stats();
    expect(s.hitsByTier.remote).toBe(0);
    expect(s.misses).toBe(1);
    expect(s.corruptEntries).toBe(1);
    await settle();
    expect(warnings.map((x) => [x.kind, x.tier])).toEqual([['foreign', 'remote']]);
    expect(warnings[0]!.message).toMatch(/another model/);
  });

  it('with a secret, entries and ids without a valid HMAC (valid checksums, another secret or none) are refused', async () => {
    const doc = ids(8, 30);
    const right = remote('trust:', { secret: 'right secret' });
    for (const forger of [{ secret: 'another secret' }, {}]) {
      await redis.del(...(await redis.keys('trust:*')), 'trust:none');
      {
        using mallory = await model.openStore({ prefix, remote: remote('trust:', forger) });
        await mallory.put('d', doc);
        await mallory.flush();
      }
      using store = await model.openStore({ prefix, remote: right });
      const warnings = collect(store);
      expect(store.has('d')).toBe(false); // its id record is refused too
      await store.put('d', doc); // fetches the planted entry, refuses it, computes
      expect(await served(model, store, 'd', doc)).toBeLessThan(1e-5);
      const s = store.stats();
      expect(s.remote!.hits).toBe(0);
      expect(s.corruptEntries).toBe(3); // the prefix, the id record, the entry
      await settle();
      expect(warnings.map((w) => w.kind)).toEqual(['untrusted', 'untrusted', 'untrusted']);
      expect(warnings.map((w) => w.message).join('\n')).toMatch(/HMAC/);
      await store.flush();
    }
    // What the store with the secret wrote back is served to the next one (here by the environment variable).
    process.env.KVFOCUS_REMOTE_SECRET = 'right secret';
    try {
      using again = await model.openStore({ prefix, remote: remote('trust:') });
      expect(again.has('d')).toBe(true);
      expect(await served(model, again, 'd', doc)).toBeLessThan(1e-5);
      expect(again.stats().hitsByTier.remote).toBe(1);
      expect(again.stats().corruptEntries).toBe(0);
      // An announcement without the HMAC (published by anyone who can reach Redis) is refused too.
      const channel = `trust:v1:${namespaceOf(again.host.fingerprint, tokensHash(again.prefixTokens))}:ids`;
      const tokens = Buffer.from(Int32Array.from(ids(13, 10)).buffer).toString('base64');
      expect(await redis.publish(channel, JSON.stringify({ id: 'evil', record: JSON.stringify({ v: 1, tokens }) }))).toBeGreaterThan(0);
      await until('the announcement is refused', () => again.stats().corruptEntries === 1);
      expect(again.has('evil')).toBe(false);
    } finally {
      delete process.env.KVFOCUS_REMOTE_SECRET;
    }
  });

  it('kvfocus cache build --remote writes the entries to Redis for the other hosts', async () => {
    const docs = [{ id: 'x', tokens: ids(11, 20) }, { id: 'y', tokens: ids(12, 25) }];
    writeFileSync(join(root, 'docs.jsonl'), docs.map((d) => JSON.stringify(d)).join('\n') + '\n');
    const out = await new Promise<string>((resolve, reject) => {
      const c = spawn(process.execPath, [join(repo, 'bin', 'kvfocus.js'), 'cache', 'build', join(root, 'docs.jsonl'), '--model', modelDir, '--device', 'cpu', '--store', join(root, 'cli-store'), '--prefix', 'Read these.', '--no-progress', '--remote', server.url, '--key-prefix', 'cli:']);
      let text = '';
      c.stdout.on('data', (b) => (text += b));
      c.stderr.on('data', (b) => (text += b));
      c.on('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`exit ${code}: ${text}`))));
    });
    expect(out).toMatch(/redis: 3 entries written/); // the two documents and the prefix
    const textPrefix = model.tokenizer.encode('Read these.', { addSpecialTokens: true });
    using store = await model.openStore({ prefix: textPrefix, remote: { url: server.url, keyPrefix: 'cli:' } });
    expect(store.list().sort()).toEqual(['x', 'y']);
    using seq = model.sequence({ store, documents: ['x', 'y'] });
    await seq.append(query);
    expect(store.stats().hitsByTier.remote).toBe(2);
  });

  it('ttlSeconds: the manifest expires first, its chunks a minute later; a read renews both', async () => {
    const doc = ids(10, 30);
    using store = await model.openStore({ prefix, remote: remote('ttl:', { ttlSeconds: 100 }) });
    await store.put('d', doc);
    await store.flush();
    const k = keysOf(store, 'ttl:', doc);
    const m = (await manifestAt(k.manifest))!;
    expect(await redis.ttl(k.manifest)).toBeGreaterThan(95);
    expect(await redis.ttl(k.manifest)).toBeLessThanOrEqual(100);
    for (const c of k.chunks(m)) expect(await redis.ttl(c)).toBeGreaterThan(155);
    await redis.expire(k.manifest, 5);
    using reader = await model.openStore({ prefix, remote: remote('ttl:', { ttlSeconds: 100 }) });
    expect(await served(model, reader, 'd', doc)).toBeLessThan(1e-5);
    expect(reader.stats().hitsByTier.remote).toBe(1);
    await until('the read renews the entry', async () => (await redis.ttl(k.manifest)) > 95);
  });

  it('Redis down at open does not fail openStore; the tier connects when Redis starts', async () => {
    const late = new RedisServer(await freePort());
    try {
      const t0 = Date.now();
      using store = await model.openStore({ prefix, remote: { url: late.url, connectTimeoutMs: 500 } });
      expect(Date.now() - t0).toBeLessThan(5000);
      const warnings = collect(store);
      await store.put('a', ids(1, 20));
      expect(await served(model, store, 'a', ids(1, 20))).toBeLessThan(1e-5);
      expect(store.stats().remote).toMatchObject({ connected: false, writes: 0 });
      await settle();
      expect(warnings.map((w) => [w.kind, w.tier])).toEqual([['unavailable', 'remote']]);
      expect(warnings[0]!.file).toBe(`${late.url}`);
      await late.start();
      await until('the store reconnects', () => store.stats().remote!.connected);
      await store.put('b', ids(2, 20));
      await store.flush();
      expect(store.stats().remote!.writes).toBe(1);
      const probe = new Redis(late.url);
      try {
        expect((await probe.keys('kvfocus:*:e:*')).length).toBe(1);
      } finally {
        probe.disconnect();
      }
    } finally {
      await late.kill();
    }
  });

  it('Redis killed mid-run: requests go on with local tiers and recomputation, the store says so, and reconnects when it is back', async () => {
    const own = await startRedis();
    try {
      const opts = { url: own.url, chunkBytes: CHUNK, commandTimeoutMs: 500 };
      {
        using writer = await model.openStore({ prefix, remote: opts });
        await writer.putMany([
          { id: 'a', tokens: ids(1, 20) },
          { id: 'b', tokens: ids(2, 20) },
        ]);
        await writer.flush();
      }
      using store = await model.openStore({ prefix, remote: opts });
      const warnings = collect(store);
      expect(store.list().sort()).toEqual(['a', 'b']);
      expect(await served(model, store, 'a', ids(1, 20))).toBeLessThan(1e-5); // from Redis
      await own.kill();
      await until('the store sees the server gone', () => !store.stats().remote!.connected);
      expect(await served(model, store, 'b', ids(2, 20))).toBeLessThan(1e-5); // recomputed
      await store.put('c', ids(3, 20));
      expect(await served(model, store, 'c', ids(3, 20))).toBeLessThan(1e-5);
      let s = store.stats();
      expect(s.hitsByTier.remote).toBe(1);
      expect(s.misses).toBe(1);
      expect(s.remote!.connected).toBe(false);
      expect(s.remote!.skippedWrites).toBeGreaterThan(0);
      await settle();
      expect(warnings.map((w) => w.kind)).toEqual(['unavailable']);
      await own.start(); // empty: no persistence
      await until('the store reconnects', () => store.stats().remote!.connected);
      await store.put('d', ids(4, 20));
      await store.flush();
      s = store.stats();
      expect(s.remote!.writes).toBe(1);
      using other = await model.openStore({ prefix, remote: opts });
      expect(other.has('d')).toBe(true);
      expect(await served(model, other, 'd', ids(4, 20))).toBeLessThan(1e-5);
      expect(other.stats().hitsByTier.remote).toBe(1);
    } finally {
      await own.kill();
    }
  });

  it('Redis dying while a fetch waits for its reply: the request recomputes at once, without waiting for the timeout', async () => {
    const own = await startRedis();
    try {
      const opts = { url: own.url, commandTimeoutMs: 20_000 };
      {
        using writer = await model.openStore({ prefix, remote: opts });
        await writer.put('a', ids(1, 20));
        await writer.flush();
      }
      using store = await model.openStore({ prefix, remote: opts });
      collect(store);
      own.pause(); // the fetch goes out and waits
      const t0 = Date.now();
      const result = served(model, store, 'a', ids(1, 20));
      await new Promise((r) => setTimeout(r, 200));
      await own.kill(); // the connection drops under it
      expect(await result).toBeLessThan(1e-5);
      expect(Date.now() - t0).toBeLessThan(5000);
      const s = store.stats();
      expect(s.misses).toBe(1);
      expect(s.remote).toMatchObject({ connected: false, hits: 1 }); // hits: the prefix
      expect(s.remote!.errors).toBeGreaterThan(0);
    } finally {
      await own.kill();
    }
  });

  it('a frozen Redis (answers nothing) costs a bounded wait, then the store goes on without it until it answers again', async () => {
    const own = await startRedis();
    try {
      const opts = { url: own.url, chunkBytes: CHUNK, commandTimeoutMs: 300 };
      {
        using writer = await model.openStore({ prefix, remote: opts });
        await writer.put('a', ids(1, 20));
        await writer.put('b', ids(2, 20));
        await writer.flush();
      }
      using store = await model.openStore({ prefix, remote: opts });
      const warnings = collect(store);
      own.pause();
      const t0 = Date.now();
      expect(await served(model, store, 'a', ids(1, 20))).toBeLessThan(1e-5); // the fetch times out: recomputed
      expect(await served(model, store, 'b', ids(2, 20))).toBeLessThan(1e-5); // the tier is paused: recomputed at once
      expect(Date.now() - t0).toBeLessThan(3000);
      const s = store.stats();
      expect(s.misses).toBe(2);
      expect(s.remote!.errors).toBeGreaterThan(0);
      expect(s.remote!.connected).toBe(false);
      expect(warnings.map((w) => w.message)).toEqual([expect.stringMatching(/timed out/)]);
      own.resume();
      await until('the store uses the server again', async () => {
        await store.put(`probe${Date.now()}`, ids(9, 12)); // a command that succeeds ends the pause
        await store.flush();
        return store.stats().remote!.connected && store.stats().remote!.writes > 0;
      });
    } finally {
      await own.kill();
    }
  });
});
