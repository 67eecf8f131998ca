// Reading the JSON files of a model directory. Every failure names the file, so a user who
// points loadModel() at the wrong folder learns which file is missing or broken.

import * as path from 'node:path';
import { ModelFormatError } from '../errors.js';
import { modelFileExists, readModelFile } from './model-files.js';

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

/** Deepest nesting of arrays and objects accepted. HF files nest a few levels; a file nested
 * thousands deep parses, but then overflows the stack of whatever walks it (JSON.stringify in
 * messages, the tokenizer's recursive builders) with an untyped RangeError. */
export const MAX_JSON_DEPTH = 64;

/** The first nesting depth past `limit` in JSON text, or -1. Strings are skipped, so brackets
 * inside them do not count. */
function nestingPastLimit(text: string, limit: number): number {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // Skip to the closing quote, past escapes.
      for (i++; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c) i++;
        else if (d === 0x22) break;
      }
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return i;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
  return -1;
}

/** Parses JSON text from `file` (named in errors): bad JSON or too deep nesting is a
 * ModelFormatError. `what` prefixes the detail ("header" for a safetensors header). */
export function parseJsonText(text: string, file: string, what = ''): unknown {
  const name = path.basename(file);
  const subject = what ? `${name}: ${what}` : name;
  const at = nestingPastLimit(text, MAX_JSON_DEPTH);
  if (at >= 0) throw new ModelFormatError(`${subject} nests arrays and objects more than ${MAX_JSON_DEPTH} deep (at byte ${at})`, file);
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    // V8's message quotes a few characters of the text: of this file only, never of another.
    throw new ModelFormatError(`${subject}${what ? ' is not valid JSON' : ': invalid JSON'} (${(error as Error).message})`, file);
  }
}

/**
 * Reads and parses a JSON file of a model directory (see model-files.ts: regular files inside the
 * directory only, size-limited); a missing file, bad UTF-8, bad JSON or too deep nesting is a
 * ModelFormatError. `dir` is the model directory (default: the file's folder).
 */
export async function readJsonFile(file: string, options: { dir?: string } = {}): Promise<unknown> {
  const name = path.basename(file);
  const bytes = await readModelFile(file, options);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelFormatError(`${name}: not valid UTF-8`, file);
  }
  return parseJsonText(text, file);
}

/** Like readJsonFile, but a missing file gives `undefined` (for optional files). */
export async function readOptionalJsonFile(file: string, options: { dir?: string } = {}): Promise<unknown> {
  if (!(await modelFileExists(file))) return undefined;
  return readJsonFile(file, options);
}

/** True when something exists at `file`; see modelFileExists. */
export async function fileExists(file: string): Promise<boolean> {
  return modelFileExists(file);
}
