#!/usr/bin/env node
// npm run bench:remote — the store's remote tier (Redis on loopback) on the CPU: time to attach
// N stored documents (and prefill a query after them) when the documents come from Redis, from
// the local disk tier, or are recomputed; and the bytes/s of fetching entries from Redis through
// the tier (manifest, chunks, checks) next to a plain GET of the same bytes.
//
//   node scripts/bench/store-remote.mjs [--documents 20] [--doc-tokens 200] [--prefix-tokens 30]
//       [--query-tokens 20] [--reps 5] [--redis-url redis://host:port] [--threads N]
//       [--json out.json] [--quick]
//
// Model: the ~100M-parameter fixture of scripts/bench/store.mjs (bench/tmp/store-llama-100m,
// written once), f32 weights and KV: a 200-token document's entry is 4.9 MB (one chunk of the
// default 16 MiB).
// Redis: without --redis-url a redis-server (Debian's package) is started on a free loopback
// port with no persistence, and killed at the end.
//
// Setup (not timed): one store with a dir and the remote tier puts the N documents (each [P; d]
// computed once), which writes their files and their Redis entries.
// Timed, a warm-up and then --reps rounds, the scenarios in rotating order:
//   remote     a store opened with the remote tier only (no dir), so every document is fetched
//              from Redis: model.sequence({ store, documents }) + append(query, { logits: 'last' }).
//              Opening it (the prefix's KV fetched, the ids read) is timed apart.
//   disk       the same with a store opened on the dir only (files in the page cache, as the
//              second reader of a hot file).
//   recompute  the same on a store whose entries are known but on no tier (evicted from a
//              device tier bounded to one document): every document is recomputed ([P; d]
//              prefill each, one after the other, as the store's miss path does).
//   device     the remote store's documents attached again, now on the device (for reference).
// Bytes/s (rounds of each, interleaved): RemoteTier.load of the N entries one after another
// (GET of the manifest, MGET of its chunks, header CRC, the entry's CRC-32s; and with a secret,
// HMAC-SHA256 over all of it) against a plain GET of each entry's bytes stored as one value.
// Once, a check: logits of the query over one document fetched from Redis against a direct
// prefill of [P; d; query] (max abs diff, expected below 1e-4).
//
// Goals (issue 15): fetching from Redis >= 5x faster than recomputing; the tier's bytes/s within
// 2x of the plain GET.
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { flag, opt, positiveInt, threadsOption } from './args.mjs';
import { concat, ensureCheckpoint, median, now, parameterCount, randomTokens, SIZES, rotatingRuns } from './store-fixture.mjs';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const benchDir = join(repoRoot, 'bench', 'tmp');
const LOGITS_TOLERANCE = 1e-4;

const quick = flag('--quick');
const documents = positiveInt('--documents', quick ? 4 : 20);
const docTokens = positiveInt('--doc-tokens', quick ? 48 : 200);
const prefixTokens = positiveInt('--prefix-tokens', 30);
const queryTokens = positiveInt('--query-tokens', 20);
const reps = positiveInt('--reps', quick ? 1 : 5);
const redisUrlArg = opt('--redis-url', undefined);
const jsonOut = opt('--json', undefined);
threadsOption(); // before the addon loads (below)

const require = createRequire(import.meta.url);
const kv = require('../../dist/cjs/index.js');
const { DEFAULT_CHUNK_BYTES, RemoteTier } = require('../../dist/cjs/store/remote-tier.js');
const { namespaceOf } = require('../../dist/cjs/store/disk-tier.js');
const { entryKey, tokensHash } = require('../../dist/cjs/store/entry.js');
const { Redis } = require('ioredis');

const roundUp = (n, page) => Math.ceil(n / page) * page;
const loadAverageBefore = loadavg()[0];

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A redis-server on a free loopback port without persistence; kill() ends it. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
  process.on('exit', () => child.kill('SIGKILL'));
  let log = '';
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${log}`)), 10_000);
    const onData = (b) => {
      log += b;
      if (/Ready to accept connections/.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('error', (e) => reject(new Error(`redis-server: ${e.message} (apt-get install redis-server, or pass --redis-url)`)));
    child.once('exit', (code) => reject(new Error(`redis-server exited (${code}):\n${log}`)));
  });
  child.stdout.resume();
  child.stderr.resume();
  const version = /v=([\d.]+)/.exec(log)?.[1] ?? /version=([\d.]+)/.exec(log)?.[1] ?? null;
  return { url: `redis://127.0.0.1:${port}`, version, kill: () => child.kill('SIGKILL') };
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/** Seconds of attaching `ids` from `store` and prefilling `query` after them; the logits. */
async function attach(model, store, ids, query) {
  const t0 = now();
  const seq = model.sequence({ store, documents: ids });
  try {
    const logits = await seq.append(query, { logits: 'last' });
    return { seconds: now() - t0, logits };
  } finally {
    seq.dispose();
  }
}


function maxAbsDiff(a, b) {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

async function main() {
  mkdirSync(benchDir, { recursive: true });
  const started = now();
  const ownServer = redisUrlArg === undefined ? await startRedis() : null;
  const url = redisUrlArg ?? ownServer.url;
  const keyPrefix = `kvfocus-bench-${process.pid}:`;
  const dir = join(benchDir, `store-remote-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  const checkpoint = await ensureCheckpoint(benchDir);
  const page = 16;
  const kvCacheTokens = 4 * (roundUp(prefixTokens, page) + documents * roundUp(docTokens, page) + roundUp(queryTokens, page)) + 8 * page;
  const model = await kv.loadModel(checkpoint, { device: 'cpu', kvCacheTokens });
  const plain = new Redis(url, { maxRetriesPerRequest: 1 });
  const tiers = [];
  try {
    const c = model.config;
    const limit = Math.min(c.vocabSize, 16000);
    const bos = model.tokenizer.bosTokenId;
    const prefix = concat(bos === null ? [] : [bos], randomTokens(prefixTokens - (bos === null ? 0 : 1), 1, limit));
    const docs = Array.from({ length: documents }, (_, i) => ({ id: `d${i}`, tokens: randomTokens(docTokens, 100 + i, limit) }));
    const ids = docs.map((d) => d.id);
    const query = randomTokens(queryTokens, 7, limit);
    const remote = { url, keyPrefix, commandTimeoutMs: 10_000 };
    console.error(`100m fixture: ${(parameterCount(c) / 1e6).toFixed(1)}M params; ${documents} documents of ${docTokens} tokens; Redis ${url}${ownServer?.version ? ` (${ownServer.version})` : ''}`);

    // Setup: every document computed once, written to the dir and to Redis.
    let fingerprint;
    {
      const writer = await model.openStore({ prefix, dir, remote });
      await writer.putMany(docs);
      await writer.flush();
      const s = writer.stats();
      if (s.remote.writes !== documents + 1) throw new Error(`setup: ${s.remote.writes} entries written to Redis, expected ${documents + 1}`);
      fingerprint = writer.host.fingerprint;
      writer.close();
    }
    const entryBytes = (d) => {
      const folder = join(dir, namespaceOf(fingerprint, tokensHash(prefix)));
      const file = readdirSync(folder).find((n) => n.endsWith('.safetensors') && n !== 'prefix.safetensors' && readFileSync(join(folder, n)).includes(`"id":"${d.id}"`));
      return readFileSync(join(folder, file));
    };

    // Check: the KV fetched from Redis gives the direct prefill's logits.
    let check;
    {
      const store = await model.openStore({ prefix, remote });
      const a = await attach(model, store, [ids[0]], query);
      const direct = await model.logits(concat(prefix, docs[0].tokens, query));
      const hit = store.stats().hitsByTier.remote === 1;
      store.close();
      const diff = maxAbsDiff(a.logits, direct.subarray(direct.length - a.logits.length));
      check = { maxAbsDiff: diff, tolerance: LOGITS_TOLERANCE, servedFromRedis: hit, pass: hit && diff < LOGITS_TOLERANCE };
      console.error(`logits of one document from Redis vs a direct prefill: max abs diff ${diff.toExponential(2)} (${check.pass ? 'ok' : 'FAIL'})`);
    }

    // The recompute store: entries known, on no tier. Its device tier holds the prefix and one
    // document; a dummy document attached before each run pushes the last one out.
    const pageBytes = 2 * page * c.numKvHeads * c.headDim * 4;
    const pagesOf = (n) => Math.ceil(n / page) * c.numLayers;
    const recomputeStore = await model.openStore({ prefix, deviceBytes: (pagesOf(prefixTokens) + pagesOf(docTokens)) * pageBytes });
    await recomputeStore.putMany([...docs, { id: 'dummy', tokens: randomTokens(docTokens, 99, limit) }]);

    const openSeconds = [];
    const deviceSeconds = [];
    const expectTier = (store, tier, n) => {
      const s = store.stats();
      const got = tier === 'miss' ? s.misses : s.hitsByTier[tier];
      if (got !== n) throw new Error(`${tier}: ${got} of ${n} documents (stats ${JSON.stringify(s.hitsByTier)}, misses ${s.misses})`);
    };
    const times = await rotatingRuns({
      remote: async () => {
        const t0 = now();
        const store = await model.openStore({ prefix, remote });
        openSeconds.push(now() - t0);
        try {
          const r = await attach(model, store, ids, query);
          expectTier(store, 'remote', documents);
          deviceSeconds.push((await attach(model, store, ids, query)).seconds);
          return r.seconds;
        } finally {
          store.close();
        }
      },
      disk: async () => {
        const store = await model.openStore({ prefix, dir });
        try {
          const r = await attach(model, store, ids, query);
          expectTier(store, 'disk', documents);
          return r.seconds;
        } finally {
          store.close();
        }
      },
      recompute: async () => {
        await attach(model, recomputeStore, ['dummy'], query); // the documents leave the device
        const before = recomputeStore.stats().misses;
        const r = await attach(model, recomputeStore, ids, query);
        const misses = recomputeStore.stats().misses - before;
        if (misses !== documents) throw new Error(`recompute: ${misses} of ${documents} documents recomputed`);
        return r.seconds;
      },
    });
    recomputeStore.close();

    // Bytes/s: the tier's load against a plain GET of the same bytes, with and without a secret.
    const namespace = namespaceOf(fingerprint, tokensHash(prefix));
    const keys = docs.map((d) => entryKey(fingerprint, prefix, d.tokens));
    const plainKeys = docs.map((_, i) => `${keyPrefix}plain:${i}`);
    let totalBytes = 0;
    for (const [i, d] of docs.entries()) {
      const b = entryBytes(d);
      totalBytes += b.length;
      await plain.set(plainKeys[i], b);
    }
    const secret = 'bench secret';
    {
      // The same entries under another key prefix, written with a secret (an HMAC each).
      const signer = await model.openStore({ prefix, remote: { ...remote, keyPrefix: `${keyPrefix}hmac:`, secret } });
      await signer.putMany(docs);
      await signer.flush();
      signer.close();
    }
    const listener = { down: (m) => console.error(`remote: ${m}`), up() {}, announce() {}, defect: (d) => console.error(`remote: ${d.message}`) };
    const openTier = async (prefixKey, s) => {
      const t = new RemoteTier({ url, keyPrefix: prefixKey, ttlSeconds: null, secret: s, connectTimeoutMs: 5000, commandTimeoutMs: 10_000, chunkBytes: DEFAULT_CHUNK_BYTES }, namespace, listener);
      tiers.push(t);
      await t.open();
      return t;
    };
    const tier = await openTier(keyPrefix, null);
    const signed = await openTier(`${keyPrefix}hmac:`, secret);
    const loadAll = (t) => async () => {
      const t0 = now();
      let bytes = 0;
      for (const k of keys) {
        const e = await t.load(k, 1 << 30);
        if (!e) throw new Error(`tier load: ${k} missing`);
        bytes += e.bytes;
      }
      if (bytes !== totalBytes) throw new Error(`tier load: ${bytes} bytes, expected ${totalBytes}`);
      return now() - t0;
    };
    const getAll = async () => {
      const t0 = now();
      let bytes = 0;
      for (const k of plainKeys) bytes += (await plain.getBuffer(k)).length;
      if (bytes !== totalBytes) throw new Error(`plain GET: ${bytes} bytes, expected ${totalBytes}`);
      return now() - t0;
    };
    const rates = await rotatingRuns({ tier: loadAll(tier), tierHmac: loadAll(signed), plainGet: getAll }, reps);

    const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
    const bps = Object.fromEntries(Object.entries(rates).map(([k, v]) => [k, totalBytes / median(v)]));
    const report = {
      bench: 'store-remote',
      date: new Date().toISOString(),
      command: `node scripts/bench/store-remote.mjs ${process.argv.slice(2).join(' ')}`.trim(),
      host: { cpu: cpus()[0]?.model, logicalCores: cpus().length, threads: kv.buildInfo().cpuThreads, loadAverageBefore, loadAverageAfter: loadavg()[0] },
      redis: { url: redisUrlArg ? url : 'loopback, started by the script', version: ownServer?.version ?? null },
      model: { fixture: 'store-llama-100m', parameters: parameterCount(c), sizes: SIZES, kvDtype: 'f32' },
      settings: { documents, docTokens, prefixTokens, queryTokens, reps, chunkBytes: DEFAULT_CHUNK_BYTES },
      entryBytes: totalBytes / documents,
      logitsCheck: check,
      attachSeconds: { runs: times, median: m, remoteOpenMedian: median(openSeconds), deviceMedian: median(deviceSeconds) },
      ratios: { recomputeOverRemote: m.recompute / m.remote, recomputeOverDisk: m.recompute / m.disk, remoteOverDisk: m.remote / m.disk },
      bytesPerSecond: { runs: rates, median: bps, tierOverPlainGet: bps.tier / bps.plainGet, tierHmacOverPlainGet: bps.tierHmac / bps.plainGet },
      goals: { recomputeOverRemoteAtLeast: 5, tierOverPlainGetAtLeast: 0.5 },
      seconds: now() - started,
    };
    report.goals.met = report.ratios.recomputeOverRemote >= 5 && report.bytesPerSecond.tierOverPlainGet >= 0.5;
    if (jsonOut) writeFileSync(jsonOut, `${JSON.stringify(report, null, 2)}\n`);
    print(report);
    if (!check.pass) process.exitCode = 1;
  } finally {
    for (const t of tiers) t.close();
    await Promise.all(tiers.map((t) => t.flush()));
    plain.disconnect();
    model.dispose();
    rmSync(dir, { recursive: true, force: true });
    ownServer?.kill();
  }
}

const ms = (s) => (s * 1e3).toFixed(1);
const mbps = (b) => (b / 1e6).toFixed(0);

function print(r) {
  const a = r.attachSeconds.median;
  const b = r.bytesPerSecond.median;
  const s = r.settings;
  console.log(`Attach ${s.documents} documents of ${s.docTokens} tokens (+ a ${s.queryTokens}-token query), 100M fixture, CPU ${r.host.threads} threads, median of ${s.reps}:`);
  console.log(`  from Redis (loopback) ${ms(a.remote)} ms, from disk ${ms(a.disk)} ms, recomputed ${ms(a.recompute)} ms, from the device ${ms(r.attachSeconds.deviceMedian)} ms`);
  console.log(`  recompute / Redis ${r.ratios.recomputeOverRemote.toFixed(1)}x (goal >= 5x), Redis / disk ${r.ratios.remoteOverDisk.toFixed(2)}; opening a store on Redis ${ms(r.attachSeconds.remoteOpenMedian)} ms`);
  console.log(`Fetch ${s.documents} entries of ${(r.entryBytes / 1e6).toFixed(2)} MB one after another: tier ${mbps(b.tier)} MB/s, with HMAC ${mbps(b.tierHmac)} MB/s, plain GET ${mbps(b.plainGet)} MB/s`);
  console.log(`  tier / plain GET ${r.bytesPerSecond.tierOverPlainGet.toFixed(2)} (goal >= 0.5), with HMAC ${r.bytesPerSecond.tierHmacOverPlainGet.toFixed(2)}`);
  console.log(`logits check: max abs diff ${r.logitsCheck.maxAbsDiff.toExponential(1)} (${r.logitsCheck.pass ? 'ok' : 'FAIL'}); goals ${r.goals.met ? 'met' : 'NOT met'}; ${r.seconds.toFixed(1)} s${jsonOut ? `; JSON: ${jsonOut}` : ''}`);
  console.log('\nMarkdown (README):\n');
  console.log('| documents from | attach + query (ms) | vs recompute |');
  console.log('|---|---:|---:|');
  console.log(`| Redis (loopback) | ${ms(a.remote)} | ${r.ratios.recomputeOverRemote.toFixed(1)}x faster |`);
  console.log(`| local disk | ${ms(a.disk)} | ${r.ratios.recomputeOverDisk.toFixed(1)}x faster |`);
  console.log(`| recomputed | ${ms(a.recompute)} | 1 |`);
  console.log(`| device (already attached) | ${ms(r.attachSeconds.deviceMedian)} | ${(a.recompute / r.attachSeconds.deviceMedian).toFixed(1)}x faster |`);
  console.log('');
  console.log('| fetch of the entries | MB/s | vs plain GET |');
  console.log('|---|---:|---:|');
  console.log(`| remote tier (manifest, chunks, CRC-32s) | ${mbps(b.tier)} | ${r.bytesPerSecond.tierOverPlainGet.toFixed(2)} |`);
  console.log(`| remote tier with a secret (+ HMAC-SHA256) | ${mbps(b.tierHmac)} | ${r.bytesPerSecond.tierHmacOverPlainGet.toFixed(2)} |`);
  console.log(`| plain GET of the same bytes | ${mbps(b.plainGet)} | 1 |`);
}

await main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
