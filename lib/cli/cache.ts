// `kvfocus cache build | stats | verify`: fill a store's disk tier from a JSONL file of
// documents, and inspect or check a store folder without loading a model.
import { createReadStream, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import cliProgress from 'cli-progress';
import { loadDefaultModel, loadModel, type Model } from '../llm/model.js';
import type { StoreDocument } from '../store/context-store.js';
import { DiskTier, ENTRY_SUFFIX, MANIFEST_FILE, PREFIX_FILE, storeFolders } from '../store/disk-tier.js';
import { EntryDefect } from '../store/entry-file.js';
import type { DeviceName, FloatDType } from '../tensor.js';

/** A command-line failure: printed as one line, exit code `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
  }
}

export interface BuildOptions {
  model: string;
  store: string;
  prefix?: string;
  device?: string;
  dtype?: string;
  kvDtype?: string;
  batch: number;
  progress: boolean;
  /** A Redis url: the entries are written there too (the remote tier). */
  remote?: string;
  keyPrefix?: string;
}

// Reads docs.jsonl lazily: one { id, text } or { id, tokens } object per line (blank lines skipped).
async function* readDocs(file: string): AsyncGenerator<StoreDocument> {
  const lines = createInterface({ input: createReadStream(file), crlfDelay: Infinity });
  let n = 0;
  for await (const line of lines) {
    n++;
    if (line.trim() === '') continue;
    let d: unknown;
    try {
      d = JSON.parse(line);
    } catch (e) {
      throw new CliError(`${file}:${n}: not JSON (${(e as Error).message})`);
    }
    const o = d as { id?: unknown; text?: unknown; tokens?: unknown };
    if (o === null || typeof o !== 'object' || typeof o.id !== 'string' || o.id === '') throw new CliError(`${file}:${n}: expected an object with a non-empty string "id"`);
    if (typeof o.text === 'string' && o.tokens === undefined) yield { id: o.id, text: o.text };
    else if (Array.isArray(o.tokens) && o.text === undefined) yield { id: o.id, tokens: o.tokens as number[] };
    else throw new CliError(`${file}:${n}: expected "text" (a string) or "tokens" (an array of token ids), not both`);
  }
}

async function countLines(file: string): Promise<number> {
  let n = 0;
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) if (line.trim() !== '') n++;
  return n;
}

function choice<T extends string>(v: string | undefined, allowed: readonly T[], name: string): T | undefined {
  if (v === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(v)) throw new CliError(`${name}: expected one of ${allowed.join(', ')} but received '${v}'`);
  return v as T;
}

async function openModel(o: BuildOptions): Promise<Model> {
  const device = o.device as DeviceName | undefined;
  const options = { device, dtype: choice<FloatDType>(o.dtype, ['f32', 'f16', 'bf16'], '--dtype'), kvDtype: choice<FloatDType>(o.kvDtype, ['f32', 'f16', 'bf16'], '--kv-dtype') };
  if (o.model === 'default' || o.model === 'fast' || o.model === 'deep') return loadDefaultModel({ ...options, variant: o.model === 'deep' ? 'deep' : 'fast' });
  if (!existsSync(o.model)) throw new CliError(`--model: ${o.model} does not exist (a model folder, or 'default')`);
  return loadModel(o.model, options);
}

/** cache build: every document of the JSONL file into the store under `store`. */
export async function build(docsFile: string, o: BuildOptions, out: NodeJS.WriteStream = process.stderr): Promise<void> {
  if (!existsSync(docsFile) || !statSync(docsFile).isFile()) throw new CliError(`${docsFile}: no such file`);
  const total = await countLines(docsFile);
  const model = await openModel(o);
  try {
    // Without --prefix the prefix is the tokenizer's start of text alone.
    const bos = model.tokenizer.bosTokenId;
    const prefix = o.prefix ?? (bos === null ? undefined : [bos]);
    if (prefix === undefined || prefix === '') throw new CliError('--prefix: required for this model (its tokenizer has no start-of-text token)');
    if (o.keyPrefix !== undefined && o.remote === undefined) throw new CliError('--key-prefix: needs --remote');
    const remote = o.remote === undefined ? undefined : { url: o.remote, ...(o.keyPrefix === undefined ? {} : { keyPrefix: o.keyPrefix }) };
    using store = await model.openStore({ prefix, dir: o.store, remote });
    store.on('warning', (w: Error) => out.write(`warning: ${w.message}\n`));
    const bar = new cliProgress.SingleBar(
      {
        format: ' {bar} {percentage}% | {value}/{total} docs | {docsPerSec} docs/s | {tokensPerSec} tokens/s | ETA {eta_formatted}',
        stream: out,
        noTTYOutput: o.progress && !out.isTTY,
        notTTYSchedule: 5000,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    const started = performance.now();
    let tokens = 0;
    let done = 0;
    const rates = (): { docsPerSec: string; tokensPerSec: string } => {
      const s = Math.max(1e-9, (performance.now() - started) / 1000);
      return { docsPerSec: (done / s).toFixed(1), tokensPerSec: (tokens / s).toFixed(0) };
    };
    if (o.progress) bar.start(total, 0, rates());
    try {
      let batch: StoreDocument[] = [];
      const flush = async (): Promise<void> => {
        await store.putMany(batch, {
          onProgress: (_d, _t, n) => {
            done++;
            tokens += n;
            if (o.progress) bar.update(done, rates());
          },
        });
        batch = [];
      };
      for await (const d of readDocs(docsFile)) {
        batch.push(d);
        if (batch.length >= o.batch) await flush();
      }
      await flush();
    } finally {
      if (o.progress) bar.stop();
    }
    await store.flush(); // the writes to Redis run in the background
    const s = store.stats();
    const seconds = (performance.now() - started) / 1000;
    out.write(
      `stored ${done} documents (${tokens} tokens) in ${seconds.toFixed(1)} s: ${rates().docsPerSec} docs/s, ${rates().tokensPerSec} tokens/s\n` +
        `store folder: ${store.folder}\n` +
        `disk: ${s.disk.entries} entries, ${s.disk.tokens} tokens, ${formatBytes(s.disk.bytes)}\n` +
        (s.remote
          ? `redis: ${s.remote.writes} entries written (${formatBytes(s.remote.bytesWritten)}), ${s.remote.hits} fetched from it, ${s.remote.entries} ids; ${s.remote.errors} errors, ${s.remote.skippedWrites} writes skipped${s.remote.connected ? '' : ' (not connected)'}\n`
          : ''),
    );
  } finally {
    model.dispose();
  }
}

export interface FolderReport {
  folder: string;
  fingerprint: string | null;
  prefixTokens: number | null;
  model: Record<string, unknown> | null;
  entries: number;
  tokens: number;
  bytes: number;
  temporaryFiles: number;
  /** verify only: entries whose every checksum matched, and the files that failed. */
  verified?: number;
  damaged?: Array<{ file: string; kind: EntryDefect['kind']; reason: string }>;
}

function checkStoreDir(dir: string): void {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new CliError(`${dir}: not a folder`);
}

/** cache stats / verify: what each entry folder under `dir` holds (verify: every checksum checked). */
export async function inspect(dir: string, verify: boolean): Promise<FolderReport[]> {
  checkStoreDir(dir);
  const reports: FolderReport[] = [];
  for (const { folder, manifest } of storeFolders(dir)) {
    const disk = new DiskTier(path.dirname(folder), path.basename(folder));
    const r: FolderReport = {
      folder,
      fingerprint: manifest?.fingerprint ?? null,
      prefixTokens: manifest ? manifest.prefixTokens.length : null,
      model: manifest ? { ...manifest.model } : null,
      entries: 0,
      tokens: 0,
      bytes: 0,
      temporaryFiles: 0,
    };
    if (verify) {
      r.verified = 0;
      r.damaged = [];
    }
    const names = (await import('node:fs')).readdirSync(folder);
    r.temporaryFiles = names.filter((n) => n.startsWith('.tmp-')).length;
    for (const name of names) {
      if (!name.endsWith(ENTRY_SUFFIX) || name.startsWith('.tmp-') || name === MANIFEST_FILE) continue;
      const file = path.join(folder, name);
      try {
        const identity = verify ? (await disk.load(file))?.identity : disk.identity(file);
        if (!identity) continue; // removed meanwhile
        if (manifest && (identity.header.fingerprint !== manifest.fingerprint || (name !== PREFIX_FILE && identity.header.prefixHash !== manifest.prefixHash))) {
          throw new EntryDefect(`${file}: written for another model or prefix`, 'foreign');
        }
        if (name === PREFIX_FILE) continue;
        r.entries++;
        r.tokens += identity.tokens.length;
        r.bytes += identity.fileBytes;
        if (verify) r.verified!++;
      } catch (e) {
        if (!(e instanceof EntryDefect)) throw e;
        if (verify) r.damaged!.push({ file, kind: e.kind, reason: e.message });
        else {
          r.damaged ??= [];
          r.damaged.push({ file, kind: e.kind, reason: e.message });
        }
      }
    }
    reports.push(r);
  }
  return reports;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${u === 0 ? n : n.toFixed(1)} ${units[u]}`;
}

export function formatReports(reports: FolderReport[], verify: boolean): string {
  if (reports.length === 0) return 'no store folders (none holds a store.json)\n';
  let s = '';
  for (const r of reports) {
    s += `${r.folder}\n`;
    if (r.model) s += `  model: ${Object.entries(r.model).map(([k, v]) => `${k} ${v}`).join(', ')}; prefix ${r.prefixTokens} tokens\n`;
    else s += '  store.json: unreadable\n';
    s += `  ${r.entries} entries, ${r.tokens} tokens, ${formatBytes(r.bytes)}`;
    if (r.temporaryFiles > 0) s += `, ${r.temporaryFiles} temporary files (writes in progress or of killed writers)`;
    s += '\n';
    if (verify) s += `  verified: ${r.verified} ok, ${r.damaged!.length} damaged or foreign\n`;
    for (const d of r.damaged ?? []) s += `  ${d.kind}: ${d.reason}\n`;
  }
  return s;
}
