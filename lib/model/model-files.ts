// Opening the files of a model directory. A model directory is input from outside (people
// download checkpoints and point services at them), so every file is opened the same guarded way:
//  - its real path must lie inside the model directory, or inside the blobs folder of the same
//    repository when the directory is a Hugging Face cache snapshot
//    (models--org--name/snapshots/<rev>/file -> ../../blobs/<sha>); a link to anything else
//    (/proc/self/environ, ~/.ssh/id_rsa) is refused by name, before a byte of it is read;
//  - it must be a regular file: O_NONBLOCK keeps a FIFO from blocking the open, and fstat on the
//    open descriptor refuses FIFOs, devices (/dev/zero) and directories;
//  - it must fit the size limit of its kind, so a huge file cannot exhaust memory.
// Every failure is a ModelFormatError naming the file.

import { constants, type Stats } from 'node:fs';
import { lstat, open, realpath, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { ModelFormatError } from '../errors.js';

const MiB = 1024 * 1024;

/** Largest accepted size per file name. Real files are far smaller: config.json is a few KB,
 * tokenizer.json of a 256k-token vocabulary about 35 MB. */
export const MODEL_FILE_LIMITS: Readonly<Record<string, number>> = {
  'config.json': 1 * MiB,
  'generation_config.json': 1 * MiB,
  'tokenizer_config.json': 16 * MiB,
  'tokenizer.json': 64 * MiB,
  'model.safetensors.index.json': 32 * MiB,
  'chat_template.jinja': 1 * MiB,
};
/** Any other JSON file read from a model directory. */
export const DEFAULT_FILE_LIMIT = 16 * MiB;

export function fileLimit(file: string): number {
  return MODEL_FILE_LIMITS[path.basename(file)] ?? DEFAULT_FILE_LIMIT;
}

function formatError(file: string, detail: string): ModelFormatError {
  return new ModelFormatError(`${path.basename(file)}: ${detail}`, file);
}

function errnoOf(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? String(error);
}

/** The real folders a model directory's files may resolve into. */
async function allowedRoots(dir: string): Promise<string[]> {
  let root: string;
  try {
    root = await realpath(dir);
  } catch (error) {
    throw new ModelFormatError(`${dir}: the model directory cannot be opened (${errnoOf(error)})`, dir);
  }
  const roots = [root];
  const snapshots = path.dirname(root);
  const repo = path.dirname(snapshots);
  if (path.basename(snapshots) === 'snapshots' && path.basename(repo).startsWith('models--')) {
    // Only the same repository's blobs: a snapshot linking into another repository's cache is
    // as much "outside" as any other file.
    roots.push(await realpath(path.join(repo, 'blobs')).catch(() => path.join(repo, 'blobs')));
  }
  return roots;
}

function isInside(root: string, target: string): boolean {
  const relative = path.relative(root, target);
  return relative !== '' && relative !== '..' && !relative.startsWith(`..${path.sep}`) && !path.isAbsolute(relative);
}

/**
 * The real path of `file`, checked to lie inside `dir` (or its HF cache blobs). `dir` is the
 * model directory (default: the file's folder).
 */
export async function resolveModelFile(file: string, dir = path.dirname(file)): Promise<string> {
  const absolute = path.resolve(file);
  let real: string;
  try {
    real = await realpath(absolute);
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'ELOOP') throw formatError(absolute, 'is a loop of symbolic links');
    if (code === 'ENOENT') {
      const isLink = await lstat(absolute).then((s) => s.isSymbolicLink(), () => false);
      throw formatError(absolute, isLink ? 'is a symbolic link to a missing file' : `file not found at ${absolute}`);
    }
    throw formatError(absolute, `cannot be opened (${code})`);
  }
  const roots = await allowedRoots(dir);
  if (!roots.some((root) => isInside(root, real))) {
    throw formatError(absolute, `resolves outside the model directory (to ${real}); only files inside ${roots.join(' or ')} are read`);
  }
  return real;
}

function kindOf(stats: Stats): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  return 'not a regular file';
}

export interface OpenModelFile {
  readonly handle: FileHandle;
  /** The path after links, checked to lie inside the model directory. */
  readonly realPath: string;
  readonly size: number;
}

/**
 * Opens a regular file of a model directory for reading. `limit` bounds its size (bytes);
 * Infinity for files that are memory-mapped rather than read (the safetensors data).
 */
export async function openModelFile(file: string, options: { dir?: string; limit?: number } = {}): Promise<OpenModelFile> {
  const absolute = path.resolve(file);
  const realPath = await resolveModelFile(absolute, options.dir);
  let handle: FileHandle;
  try {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    handle = await open(realPath, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    throw formatError(absolute, `cannot be opened (${errnoOf(error)})`);
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw formatError(absolute, `is ${kindOf(stats)}; model files must be regular files`);
    const limit = options.limit ?? fileLimit(absolute);
    if (stats.size > limit) throw formatError(absolute, `is ${stats.size} bytes, over the ${limit}-byte limit for this file`);
    return { handle, realPath, size: stats.size };
  } catch (error) {
    await handle.close();
    throw error instanceof ModelFormatError ? error : formatError(absolute, `cannot be read (${errnoOf(error)})`);
  }
}

/** Reads a whole model file (see openModelFile), at most its kind's size limit. */
export async function readModelFile(file: string, options: { dir?: string; limit?: number } = {}): Promise<Buffer> {
  const absolute = path.resolve(file);
  const limit = options.limit ?? fileLimit(absolute);
  const { handle, size } = await openModelFile(absolute, { ...options, limit });
  try {
    // One byte more than fstat said, to notice a file that grows while we read it.
    const buffer = Buffer.alloc(Math.min(size, limit) + 1);
    let done = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, done, buffer.length - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
      if (done === buffer.length) throw formatError(absolute, `grew while being read (past ${size} bytes)`);
    }
    return buffer.subarray(0, done);
  } catch (error) {
    throw error instanceof ModelFormatError ? error : formatError(absolute, `cannot be read (${errnoOf(error)})`);
  } finally {
    await handle.close();
  }
}

/** True when something exists at `file` (a file, a folder, a link, even a dangling one): what it
 * is gets checked when it is opened, so a FIFO or a bad link is refused, not taken as absent. */
export async function modelFileExists(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch {
    return false;
  }
}
