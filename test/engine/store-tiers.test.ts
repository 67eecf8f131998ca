// The store's tiers (CPU, a fixture checkpoint): device pages, host memory and disk files. An
// entry moves down a tier when one is full and back up when a sequence needs it, and serves the
// same KV wherever it came from (logits equal prefilling [P; d; query] directly). The disk tier
// is durable: a store reopened on the folder, here or in another process, serves what was put;
// damaged, truncated, foreign and half-written files are found, counted and never served; a
// full disk is a typed error that leaves the store as it was.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type ContextStore, DiskFullError, loadModel, type Model } from '../../lib/index.js';
import type { StoreWarning } from '../../lib/store/context-store.js';
import { makeFixtures } from '../../scripts/fixtures/make-fixtures.mjs';
import { maxDiff } from '../support/compare';

const repo = join(__dirname, '..', '..');
let root: string;
let modelDir: string;
let model: Model;
const PREFIX = 21;
const LOAD = { device: 'cpu', kvCacheTokens: 1024, prefillChunk: 16 } as const;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-tiers-'));
  modelDir = makeFixtures(root, ['llama-gqa'])['llama-gqa']!;
  model = await loadModel(modelDir, LOAD);
});

afterAll(() => {
  model?.dispose();
  rmSync(root, { recursive: true, force: true });
});

const ids = (i: number, length: number): number[] => Array.from({ length }, (_, j) => 3 + ((i * 31 + j * 7 + ((i * j) % 11)) % 250));
const prefix = ids(0, PREFIX);
const query = ids(9, 5);
let dirs = 0;
const newDir = (): string => join(root, `store-${++dirs}`);

// The query's last logits over the stored document, and the direct prefill's.
async function served(m: Model, store: ContextStore, id: string, doc: number[]): Promise<number> {
  using seq = m.sequence({ store, documents: [id] });
  const ours = (await seq.append(query, { logits: 'last' }))!;
  return maxDiff(ours, await m.logits([...prefix, ...doc, ...query]));
}

function entryFiles(store: ContextStore): string[] {
  return readdirSync(store.folder!).filter((n) => n.endsWith('.safetensors') && n !== 'prefix.safetensors' && !n.startsWith('.tmp-'));
}

// A child process running `script` with `k` (the built package), `model` and `prefix`/`ids`.
function childScript(script: string): string {
  return `const k = require(${JSON.stringify(repo)});
const ids = ${ids.toString()};
const prefix = ids(0, ${PREFIX});
(async () => {
  const model = await k.loadModel(${JSON.stringify(modelDir)}, ${JSON.stringify(LOAD)});
  ${script}
})().catch((e) => { console.error(e); process.exit(1); });`;
}

describe('host tier', () => {
  it('the device tier overflows into host memory; a host hit moves the entry back up with the same KV', async () => {
    const pageBytes = 2 * 16 * model.config.numKvHeads * model.config.headDim * 4;
    const layers = model.config.numLayers;
    // Prefix (2 pages per layer) + two one-page documents.
    using store = await model.openStore({ prefix, deviceBytes: 4 * layers * pageBytes, hostBytes: 1 << 20 });
    const docs = [ids(1, 10), ids(2, 12), ids(3, 14)];
    for (const [i, d] of docs.entries()) await store.put(`d${i}`, d);
    let s = store.stats();
    expect(s.device.entries).toBe(2);
    expect(s.host.entries).toBe(1);
    expect(s.host.tokens).toBe(10);
    expect(s.evictions).toBe(1);
    expect(s.writesByTier.host).toBe(1);
    expect(await served(model, store, 'd0', docs[0]!)).toBeLessThan(1e-5);
    s = store.stats();
    expect(s.hitsByTier).toEqual({ device: 0, host: 1, disk: 0, remote: 0 });
    expect(s.misses).toBe(0);
    expect(s.host.entries).toBe(1); // d1, the least recently used now, went down in its place
    expect(store.list()).toEqual(['d1', 'd2', 'd0']);
  });

  it('a full host tier drops its least recently used entries (recomputed on use without a disk)', async () => {
    const pageBytes = 2 * 16 * model.config.numKvHeads * model.config.headDim * 4;
    const layers = model.config.numLayers;
    using store = await model.openStore({ prefix, deviceBytes: 3 * layers * pageBytes, hostBytes: 1 });
    await store.put('a', ids(1, 10));
    await store.put('b', ids(2, 10));
    const s = store.stats();
    expect(s.device.entries).toBe(1);
    expect(s.host.entries).toBe(0);
    expect(s.evictions).toBe(2); // device -> host, host -> gone
    expect(await served(model, store, 'a', ids(1, 10))).toBeLessThan(1e-5);
    expect(store.stats().misses).toBe(1);
  });
});

describe('disk tier', () => {
  it('entries are safetensors files with the header in their metadata; a reopened store serves them from disk', async () => {
    const dir = newDir();
    const docs = { a: ids(1, 13), b: ids(2, 37), c: ids(3, 16) };
    {
      using store = await model.openStore({ prefix, dir });
      await store.putMany(Object.entries(docs).map(([id, tokens]) => ({ id, tokens })));
      expect(store.stats().disk.entries).toBe(3);
      expect(store.stats().writesByTier.disk).toBe(3);
      expect(entryFiles(store)).toHaveLength(3);
      // Any safetensors reader opens it: 8-byte header length, JSON header, data.
      const bytes = readFileSync(join(store.folder!, entryFiles(store)[0]!));
      const n = Number(bytes.readBigUInt64LE(0));
      const header = JSON.parse(bytes.subarray(8, 8 + n).toString());
      const kv = model.config.numKvHeads * model.config.headDim;
      expect(header.__metadata__).toMatchObject({ format: 'kvfocus.store-entry', version: '1', prefix_tokens: String(PREFIX), kv_dtype: 'f32', layers: String(model.config.numLayers) });
      expect(header.k.dtype).toBe('F32');
      expect(header.k.shape.slice(2).reduce((x: number, y: number) => x * y)).toBe(kv);
      expect(8 + n + header.v.data_offsets[1]).toBe(bytes.length);
    }
    using again = await model.openStore({ prefix, dir });
    expect(again.list().sort()).toEqual(['a', 'b', 'c']);
    expect(again.stats().device.entries).toBe(0);
    for (const [id, d] of Object.entries(docs)) expect(await served(model, again, id, d)).toBeLessThan(1e-5);
    const s = again.stats();
    expect(s.hitsByTier.disk).toBe(3);
    expect(s.misses).toBe(0);
    expect(s.corruptEntries).toBe(0);
    expect(s.device.entries).toBe(3);
  });

  it('another process reads what one process wrote, and entries of another prefix or model are not shared', async () => {
    const dir = newDir();
    const r = spawnSync(process.execPath, ['-e', childScript(`
      const store = await model.openStore({ prefix, dir: ${JSON.stringify(dir)} });
      await store.put('x', ids(4, 30));
      store.close(); model.dispose(); console.log('ok');`)], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('ok');
    using store = await model.openStore({ prefix, dir });
    expect(store.has('x')).toBe(true);
    expect(await served(model, store, 'x', ids(4, 30))).toBeLessThan(1e-5);
    expect(store.stats().hitsByTier.disk).toBe(1);
    using other = await model.openStore({ prefix: ids(5, PREFIX), dir });
    expect(other.has('x')).toBe(false);
    // Other weights, same architecture: another fingerprint, so no shared entries.
    const tweaked = join(root, 'tweaked');
    mkdirSync(tweaked, { recursive: true });
    for (const f of readdirSync(modelDir)) copyFileSync(join(modelDir, f), join(tweaked, f));
    const weights = join(tweaked, 'model.safetensors');
    const w = readFileSync(weights);
    w[w.length - 1] ^= 0x01;
    writeFileSync(weights, w);
    const m2 = await loadModel(tweaked, LOAD);
    try {
      using theirs = await m2.openStore({ prefix, dir });
      expect(theirs.has('x')).toBe(false);
      expect(theirs.folder).not.toBe(store.folder);
    } finally {
      m2.dispose();
    }
  });

  it('a store in one process sees entries another process puts while it is open', async () => {
    const dir = newDir();
    using store = await model.openStore({ prefix, dir });
    expect(store.has('late')).toBe(false);
    const r = spawnSync(process.execPath, ['-e', childScript(`
      const store = await model.openStore({ prefix, dir: ${JSON.stringify(dir)} });
      await store.put('late', ids(6, 20));
      store.close(); model.dispose();`)], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(0);
    expect(store.has('late')).toBe(true);
    expect(store.list()).toContain('late');
    expect(await served(model, store, 'late', ids(6, 20))).toBeLessThan(1e-5);
  });

  it('delete removes the file; putting an id again with other content replaces the file', async () => {
    const dir = newDir();
    using store = await model.openStore({ prefix, dir });
    await store.put('a', ids(1, 10));
    await store.put('b', ids(2, 10));
    expect(store.delete('a')).toBe(true);
    expect(store.delete('a')).toBe(false);
    expect(entryFiles(store)).toHaveLength(1);
    await store.put('b', ids(3, 20));
    expect(entryFiles(store)).toHaveLength(1);
    using again = await model.openStore({ prefix, dir });
    expect(again.list()).toEqual(['b']);
    expect(await served(model, again, 'b', ids(3, 20))).toBeLessThan(1e-5);
  });
});

describe('durability', () => {
  async function storeWith(dir: string, docs: Record<string, number[]>): Promise<string> {
    using store = await model.openStore({ prefix, dir });
    for (const [id, d] of Object.entries(docs)) await store.put(id, d);
    return store.folder!;
  }

  function fileOf(folder: string, id: string, docs: Record<string, number[]>): string {
    // Find the entry's file by its metadata id (names are hashes of the id).
    for (const n of readdirSync(folder).filter((f) => f.endsWith('.safetensors') && f !== 'prefix.safetensors')) {
      const b = readFileSync(join(folder, n));
      const header = JSON.parse(b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString());
      if (header.__metadata__.id === id) return join(folder, n);
    }
    throw new Error(`no file for ${id} (${Object.keys(docs)})`);
  }

  it('a damaged KV byte is caught by the checksum: counted, reported as a warning, recomputed, never served', async () => {
    const dir = newDir();
    const docs = { a: ids(1, 20), b: ids(2, 20) };
    const folder = await storeWith(dir, docs);
    const file = fileOf(folder, 'a', docs);
    const bytes = readFileSync(file);
    bytes[bytes.length - 100] ^= 0x40; // inside v
    writeFileSync(file, bytes);
    using store = await model.openStore({ prefix, dir });
    const warnings: StoreWarning[] = [];
    store.on('warning', (w: StoreWarning) => warnings.push(w));
    expect(await served(model, store, 'a', docs.a)).toBeLessThan(1e-5);
    expect(await served(model, store, 'b', docs.b)).toBeLessThan(1e-5);
    const s = store.stats();
    expect(s.corruptEntries).toBe(1);
    expect(s.misses).toBe(1);
    expect(s.hitsByTier.disk).toBe(1);
    await new Promise((r) => setImmediate(r));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.kind).toBe('corrupt');
    expect(warnings[0]!.message).toMatch(/checksum/);
    // The recomputed entry was written again, whole.
    using again = await model.openStore({ prefix, dir });
    expect(await served(model, again, 'a', docs.a)).toBeLessThan(1e-5);
    expect(again.stats().corruptEntries).toBe(0);
    expect(again.stats().hitsByTier.disk).toBe(1);
  });

  it('truncated files, damaged headers and foreign entries are found when the store opens', async () => {
    const dir = newDir();
    const docs = { t: ids(1, 20), h: ids(2, 20), f: ids(3, 20), ok: ids(4, 20) };
    const folder = await storeWith(dir, docs);
    const t = fileOf(folder, 't', docs);
    writeFileSync(t, readFileSync(t).subarray(0, statSync(t).size - 7));
    const h = fileOf(folder, 'h', docs);
    const hb = readFileSync(h);
    hb[8] = 0x78; // 'x' where the JSON's '{' was
    writeFileSync(h, hb);
    // Foreign: an entry written for another prefix, copied in under this folder.
    const otherFolder = await (async () => {
      using other = await model.openStore({ prefix: ids(7, PREFIX), dir });
      await other.put('f', docs.f);
      return other.folder!;
    })();
    const f = fileOf(folder, 'f', docs);
    copyFileSync(fileOf(otherFolder, 'f', docs), f);
    using store = await model.openStore({ prefix, dir });
    const warnings: StoreWarning[] = [];
    store.on('warning', (w: StoreWarning) => warnings.push(w));
    expect(store.stats().corruptEntries).toBe(3);
    expect(store.list()).toEqual(['ok']);
    await new Promise((r) => setImmediate(r));
    expect(warnings.map((w) => w.kind).sort()).toEqual(['corrupt', 'corrupt', 'foreign']);
    expect(existsSync(t)).toBe(false); // damaged files are removed; the foreign one is left alone
    expect(existsSync(f)).toBe(true);
    expect(await served(model, store, 'ok', docs.ok)).toBeLessThan(1e-5);
  });

  it('a writer killed (SIGKILL) in the middle of writing an entry leaves no half-written entry to serve', async () => {
    const dir = newDir();
    // The child stores two documents, then stalls halfway through writing the third's file
    // and says so; the test kills it there.
    const child = spawn(process.execPath, ['-e', childScript(`
      const fsp = require('node:fs/promises');
      let files = 0;
      const diskOps = {
        rename: fsp.rename, unlink: fsp.unlink,
        async open(file, flags) {
          const fh = await fsp.open(file, flags);
          if (!file.includes('.tmp-') || ++files < 5) return fh; // store.json, the prefix, d0 and d1 whole
          const write = fh.write.bind(fh);
          fh.write = async (buf, off, len) => {
            const half = Math.max(1, len >> 1);
            await write(buf, off, half);
            await fh.sync();
            console.log('HALF ' + file);
            await new Promise(() => {}); // stall: the parent kills us here
          };
          return fh;
        },
      };
      const store = await model.openStore({ prefix, dir: ${JSON.stringify(dir)}, diskOps });
      for (let i = 0; i < 3; i++) await store.put('d' + i, ids(10 + i, 40));`)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (b) => (err += b));
    const tmp = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (b) => {
        out += b;
        const m = /HALF (\S+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      child.on('exit', () => reject(new Error(`the writer exited before stalling: ${err}`)));
    });
    const exited = new Promise((r) => child.on('exit', r));
    child.kill('SIGKILL');
    await exited;
    expect(existsSync(tmp)).toBe(true); // the half-written file is there...
    using store = await model.openStore({ prefix, dir });
    expect(store.list().sort()).toEqual(['d0', 'd1']); // ...and never an entry
    expect(existsSync(tmp)).toBe(false); // removed: its writer is dead
    expect(store.stats().corruptEntries).toBe(0);
    for (const i of [0, 1]) expect(await served(model, store, `d${i}`, ids(10 + i, 40))).toBeLessThan(1e-5);
  }, 60_000);

  it('two processes writing one folder at once do not corrupt it', async () => {
    const dir = newDir();
    // Both put the same ids (with different content) and some of their own, interleaved.
    const writer = (w: number): Promise<number> =>
      new Promise((resolve) => {
        const c = spawn(process.execPath, ['-e', childScript(`
          const store = await model.openStore({ prefix, dir: ${JSON.stringify(dir)} });
          for (let i = 0; i < 6; i++) {
            await store.put('shared' + i, ids(20 + i + ${w} * 10, 25 + ${w}));
            await store.put('own${w}-' + i, ids(40 + i, 10));
          }
          store.close(); model.dispose();`)], { stdio: 'ignore' });
        c.on('exit', (code) => resolve(code ?? -1));
      });
    expect(await Promise.all([writer(0), writer(1)])).toEqual([0, 0]);
    using store = await model.openStore({ prefix, dir });
    expect(store.list()).toHaveLength(18);
    expect(store.stats().corruptEntries).toBe(0);
    for (let i = 0; i < 6; i++) {
      // Whichever write came last, the entry is whole and serves its own content.
      using seq = model.sequence({ store, documents: [`shared${i}`] });
      const ours = (await seq.append(query, { logits: 'last' }))!;
      const tokens = seq.layout().layers[0]!.source.length - PREFIX - query.length;
      const w = tokens === 25 ? 0 : 1;
      expect(maxDiff(ours, await model.logits([...prefix, ...ids(20 + i + w * 10, 25 + w), ...query]))).toBeLessThan(1e-5);
    }
    expect(store.stats().misses).toBe(0);
  }, 120_000);
});

describe('a full disk', () => {
  it('DiskFullError: nothing half-stored, the old content of a replaced id kept, no temporary file left', async () => {
    const dir = newDir();
    let full = false;
    const fsp = await import('node:fs/promises');
    const diskOps = {
      rename: fsp.rename,
      unlink: fsp.unlink,
      async open(file: string, flags: string) {
        const fh = await fsp.open(file, flags);
        if (!full) return fh;
        const write = fh.write.bind(fh) as (b: Buffer, o: number, l: number) => Promise<{ bytesWritten: number }>;
        let room = 64;
        (fh as unknown as { write: unknown }).write = async (b: Buffer, o: number, l: number) => {
          if (room <= 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
          const n = Math.min(l, room);
          room -= n;
          return write(b, o, n);
        };
        return fh;
      },
    };
    using store = await model.openStore({ prefix, dir, diskOps });
    await store.put('a', ids(1, 20));
    full = true;
    await expect(store.put('b', ids(2, 20))).rejects.toThrow(DiskFullError);
    await expect(store.put('a', ids(3, 20))).rejects.toThrow(/disk is full/);
    expect(store.stats().errorsByTier.disk).toBe(2);
    expect(store.has('b')).toBe(false);
    expect(store.list()).toEqual(['a']);
    expect(readdirSync(store.folder!).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    expect(await served(model, store, 'a', ids(1, 20))).toBeLessThan(1e-5);
    full = false;
    await store.put('b', ids(2, 20));
    using again = await model.openStore({ prefix, dir });
    expect(again.list().sort()).toEqual(['a', 'b']);
    expect(await served(model, again, 'a', ids(1, 20))).toBeLessThan(1e-5);
  });

  // A real small file system, where the platform lets this process mount one (root on Linux).
  const mountPoint = join(tmpdir(), `kvfocus-full-${process.pid}`);
  mkdirSync(mountPoint, { recursive: true });
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=160k', 'tmpfs', mountPoint]).status === 0;
  it.skipIf(!mounted)('on a real full file system (tmpfs): the puts that resolved are all served after reopening', async () => {
    try {
      const stored: string[] = [];
      let error: unknown;
      {
        using store = await model.openStore({ prefix, dir: mountPoint });
        for (let i = 0; i < 40 && error === undefined; i++) {
          await store.put(`d${i}`, ids(i + 1, 30)).then(
            () => stored.push(`d${i}`),
            (e: unknown) => (error = e),
          );
        }
        expect(error).toBeInstanceOf(DiskFullError);
        expect(store.list().sort()).toEqual([...stored].sort());
      }
      using again = await model.openStore({ prefix, dir: mountPoint });
      expect(again.list().sort()).toEqual([...stored].sort());
      expect(again.stats().corruptEntries).toBe(0);
      expect(await served(model, again, stored.at(-1)!, ids(stored.length, 30))).toBeLessThan(1e-5);
    } finally {
      spawnSync('umount', [mountPoint]);
    }
  });
});

describe('the pool under pressure', () => {
  it('a store gives back device pages when a request needs them; its documents are served again later', async () => {
    const small = await loadModel(modelDir, { device: 'cpu', kvCacheTokens: 256, pageSize: 16 });
    try {
      const dir = newDir();
      using store = await small.openStore({ prefix, dir });
      // 10 documents of 16 tokens: 10 of the pool's 16 pages per layer, with the prefix's 2.
      for (let i = 0; i < 10; i++) await store.put(`d${i}`, ids(30 + i, 16));
      expect(store.stats().device.entries).toBe(10);
      // A prompt that needs 8 pages per layer: only 4 are free until the store gives some back.
      const r = await small.generate(ids(50, 120), { maxTokens: 4, temperature: 0, stopTokens: [] }).result;
      expect(r.completionTokens).toBe(4);
      const s = store.stats();
      expect(s.device.entries).toBeLessThan(10);
      expect(s.evictions).toBeGreaterThan(0);
      // What left the device is still on disk, and is served from there.
      using seq = small.sequence({ store, documents: ['d0'] });
      const ours = (await seq.append(query, { logits: 'last' }))!;
      expect(maxDiff(ours, await small.logits([...prefix, ...ids(30, 16), ...query]))).toBeLessThan(1e-5);
      expect(store.stats().hitsByTier.disk).toBe(1);
    } finally {
      small.dispose();
    }
  });
});
