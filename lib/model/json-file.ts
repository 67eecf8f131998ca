// Reading the JSON files of a model directory. Every failure names the file, so a user who
// points loadModel() at the wrong folder learns which file is missing or broken.

import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { ModelFormatError } from '../errors.js';

/** A JSON object as parsed, before validation. */
export type JsonObject = { readonly [key: string]: unknown };

export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Short, quoted rendering of a JSON value for error messages. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Reads and parses a JSON file; a missing file, bad UTF-8 or bad JSON is a ModelFormatError. */
export async function readJsonFile(file: string): Promise<unknown> {
  const name = path.basename(file);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'file not found' : `cannot be read (${code ?? String(error)})`;
    throw new ModelFormatError(`${name}: ${reason} at ${file}`, file);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelFormatError(`${name}: not valid UTF-8`, file);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new ModelFormatError(`${name}: invalid JSON (${(error as Error).message})`, file);
  }
}

/** Like readJsonFile, but a missing file gives `undefined` (for optional files). */
export async function readOptionalJsonFile(file: string): Promise<unknown> {
  if (!(await fileExists(file))) return undefined;
  return readJsonFile(file);
}

/** True when `file` exists and is a regular file (or a link to one). */
export async function fileExists(file: string): Promise<boolean> {
  try {
    return (await stat(file)).isFile();
  } catch {
    return false;
  }
}
