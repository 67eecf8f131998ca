// The store's disk tier: one folder per (model fingerprint, prefix) under the store's `dir`,
// holding one safetensors file per entry (./entry-file.ts), named by a hash of the entry's id,
// and a store.json that says what the folder is for (people and `kvfocus cache stats` read it).
//
// Durability: an entry is written to a temporary file in the same folder, flushed (fsync) and
// renamed over its final name, then the folder is flushed: a reader sees the old file or the
// whole new one, never a part, also when the writer is killed. Temporary files of processes
// that no longer run are removed when a store opens the folder. Every read is checked (CRC-32 of
// the tokens and of the KV, the header against the store), so a damaged file is never served.
// Several processes may use one folder: writes never touch a file in place, and a process that
// finds an entry another one wrote (or replaced, or deleted) checks it like any other.
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readSync, readdirSync, readFileSync, unlinkSync } from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { DiskFullError, StoreIOError, type KvfocusError } from '../errors.js';
import { decodeEntry, EntryDefect, entryIdentity, parseEntryHead, type EntryBytes, type EntryIdentity } from './entry-file.js';

/** What store.json in an entry folder says. */
export interface StoreManifest {
  format: 'kvfocus.store';
  version: 1;
  fingerprint: string;
  prefixHash: string;
  prefixTokens: number[];
  model: { layers: number; kvHeads: number; headDim: number; pageSize: number; kvDtype: string };
}

export const MANIFEST_FILE = 'store.json';
export const ENTRY_SUFFIX = '.safetensors';
export const PREFIX_FILE = `prefix${ENTRY_SUFFIX}`;
const TMP_PREFIX = '.tmp-';

/** @internal The file operations the disk tier writes through (tests swap them to simulate a full disk). */
export interface DiskOps {
  open(file: string, flags: string): Promise<FileHandle>;
  rename(from: string, to: string): Promise<void>;
  unlink(file: string): Promise<void>;
}

const realOps: DiskOps = { open: (f, flags) => fsp.open(f, flags), rename: fsp.rename, unlink: fsp.unlink };

/** The folder (under a store's dir) of one model fingerprint and prefix. */
export function namespaceOf(fingerprint: string, prefixHash: string): string {
  return createHash('sha256').update(`${fingerprint}\n${prefixHash}`).digest('hex').slice(0, 24);
}

/** The file name of the entry stored under `id`. */
export function entryFileName(id: string): string {
  return createHash('sha256').update(id).digest('hex').slice(0, 40) + ENTRY_SUFFIX;
}

function ioError(e: unknown, file: string, doing: string): KvfocusError {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
    return new DiskFullError(`${doing} ${file}: the disk is full (${code}); the entry was not stored`, file, { cause: e });
  }
  return new StoreIOError(`${doing} ${file}: ${(e as Error)?.message ?? String(e)}`, file, { cause: e });
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class DiskTier {
  readonly folder: string;
  readonly #ops: DiskOps;

  constructor(dir: string, namespace: string, ops?: DiskOps) {
    this.folder = path.join(path.resolve(dir), namespace);
    this.#ops = ops ?? realOps;
  }

  /** Creates the folder and its store.json, and removes temporary files left by dead writers. */
  async init(manifest: StoreManifest): Promise<void> {
    try {
      await fsp.mkdir(this.folder, { recursive: true });
    } catch (e) {
      throw ioError(e, this.folder, 'creating');
    }
    const file = path.join(this.folder, MANIFEST_FILE);
    if (!existsSync(file)) await this.#writeAtomic(file, [Buffer.from(JSON.stringify(manifest, null, 1) + '\n')]);
    for (const name of readdirSync(this.folder)) {
      const m = /^\.tmp-(\d+)-/.exec(name);
      if (m && !processAlive(Number(m[1]))) await this.#ops.unlink(path.join(this.folder, name)).catch(() => {});
    }
  }

  fileOf(id: string): string {
    return path.join(this.folder, id === '' ? PREFIX_FILE : entryFileName(id));
  }

  /** Entry files in the folder (not the prefix, not temporary files). */
  entryFiles(): string[] {
    try {
      return readdirSync(this.folder)
        .filter((n) => n.endsWith(ENTRY_SUFFIX) && n !== PREFIX_FILE && !n.startsWith(TMP_PREFIX))
        .map((n) => path.join(this.folder, n));
    } catch (e) {
      throw ioError(e, this.folder, 'listing');
    }
  }

  /** Writes the entry under `id` atomically (a typed error, DiskFullError when full, and nothing changed on failure). */
  async write(id: string, e: EntryBytes): Promise<number> {
    return this.#writeAtomic(this.fileOf(id), [e.head, e.tokens, e.kv]);
  }

  async #writeAtomic(file: string, parts: Buffer[]): Promise<number> {
    const tmp = path.join(this.folder, `${TMP_PREFIX}${process.pid}-${randomBytes(6).toString('hex')}${ENTRY_SUFFIX}`);
    let fh: FileHandle | undefined;
    let bytes = 0;
    try {
      fh = await this.#ops.open(tmp, 'wx');
      for (const p of parts) {
        // writev may write part of the data (a full disk reports itself on the next call).
        for (let off = 0; off < p.length; ) {
          const { bytesWritten } = await fh.write(p, off, p.length - off);
          if (bytesWritten <= 0) throw Object.assign(new Error('no bytes written'), { code: 'EIO' });
          off += bytesWritten;
        }
        bytes += p.length;
      }
      await fh.sync();
      await fh.close();
      fh = undefined;
      await this.#ops.rename(tmp, file);
    } catch (e) {
      await fh?.close().catch(() => {});
      await this.#ops.unlink(tmp).catch(() => {});
      throw ioError(e, file, 'writing');
    }
    await syncFolder(this.folder);
    return bytes;
  }

  /** Removes the entry's file (false when there was none). */
  async remove(id: string): Promise<boolean> {
    return this.removeFile(this.fileOf(id));
  }

  /** remove(), synchronously. */
  removeSync(id: string): boolean {
    return this.removeFileSync(this.fileOf(id));
  }

  removeFileSync(file: string): boolean {
    try {
      unlinkSync(file);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw ioError(e, file, 'removing');
    }
  }

  async removeFile(file: string): Promise<boolean> {
    try {
      await this.#ops.unlink(file);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw ioError(e, file, 'removing');
    }
  }

  /**
   * The header and tokens of the file (its KV is not read): null when there is no such file,
   * EntryDefect when it is damaged or not an entry. Synchronous: a few KB per entry.
   */
  identity(file: string): EntryIdentity | null {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(e, file, 'opening');
    }
    try {
      const size = fstatSync(fd).size;
      const read = (at: number, n: number): Buffer => {
        const b = Buffer.alloc(n);
        const got = readSync(fd, b, 0, n, at);
        return b.subarray(0, got);
      };
      let head = read(0, Math.min(size, 64 << 10));
      if (head.length >= 8) {
        const need = 8 + Number(head.readBigUInt64LE(0));
        if (need > head.length && need <= size && need <= (1 << 20) + 8) head = read(0, need);
      }
      const p = parseEntryHead(head, size, file);
      const tokens = read(p.tokensAt, p.tokensBytes);
      if (tokens.length !== p.tokensBytes) throw new EntryDefect(`${file}: truncated tokens`, 'corrupt');
      return entryIdentity(p, tokens, size, file);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * The whole entry, every checksum checked: null when there is no such file; EntryDefect when
   * it is damaged or not an entry. (The caller compares the identity with what it expects: the
   * file may hold an entry another process put under the same id since.)
   */
  async load(file: string): Promise<{ identity: EntryIdentity; kv: Uint8Array } | null> {
    let bytes: Buffer;
    let fh: FileHandle | undefined;
    try {
      // One read of the whole file into one buffer (readFile reads in 512 KiB pieces).
      fh = await fsp.open(file, 'r');
      const { size } = await fh.stat();
      bytes = Buffer.allocUnsafe(size);
      for (let off = 0; off < size; ) {
        const { bytesRead } = await fh.read(bytes, off, size - off, off);
        if (bytesRead === 0) {
          bytes = bytes.subarray(0, off); // shrank meanwhile: checked as truncated below
          break;
        }
        off += bytesRead;
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw ioError(e, file, 'reading');
    } finally {
      await fh?.close().catch(() => {});
    }
    return decodeEntry(bytes, file);
  }
}

async function syncFolder(folder: string): Promise<void> {
  // The rename is durable once the folder is flushed; some file systems refuse to: not fatal.
  const fh = await fsp.open(folder, 'r').catch(() => undefined);
  await fh?.sync().catch(() => {});
  await fh?.close().catch(() => {});
}

/** Every entry folder under a store dir (those holding a store.json), with their manifests. */
export function storeFolders(dir: string): Array<{ folder: string; manifest: StoreManifest | null }> {
  const out: Array<{ folder: string; manifest: StoreManifest | null }> = [];
  for (const name of readdirSync(dir)) {
    const folder = path.join(dir, name);
    const file = path.join(folder, MANIFEST_FILE);
    if (!existsSync(file)) continue;
    let manifest: StoreManifest | null = null;
    try {
      const m = JSON.parse(readFileSync(file, 'utf8'));
      if (m?.format === 'kvfocus.store') manifest = m;
    } catch {
      manifest = null;
    }
    out.push({ folder, manifest });
  }
  return out;
}
