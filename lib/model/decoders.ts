// Token strings -> text, as the `decoder` section of tokenizer.json describes, with the exact
// semantics of Hugging Face's Rust `tokenizers` (src/decoders/*.rs).
//
// Why not the pure-TS port's decoders: its ByteFallback decoder drops a decoded U+FEFF and
// replaces invalid byte runs the WHATWG way (one U+FFFD per maximal subpart) where Rust emits one
// U+FFFD per byte token. Streaming decode works on exactly such partial byte runs, so we decode
// ourselves for the decoder types Llama, Mistral and Qwen2 use and leave others to the port.

import { describeValue, isJsonObject, type JsonObject } from './json-file.js';

/** Rust's Decoder::decode_chain: tokens in, tokens out; the caller joins the result. */
type DecodeChain = (tokens: string[]) => string[];

/** A tokenizer.json decoder as one function, or null when kvfocus does not implement its type. */
export function createDecoder(config: unknown): ((tokens: string[]) => string) | null {
  if (config === null || config === undefined) {
    return (tokens) => tokens.join(' '); // what Rust does when tokenizer.json has no decoder
  }
  const chain = createChain(config);
  return chain === null ? null : (tokens) => chain(tokens).join('');
}

/**
 * What is wrong with a tokenizer.json `decoder` section, or null. Checks the shape only: an
 * object with a string `type`, and a Sequence's `decoders` a list of such objects. (The port
 * builds a Sequence holding null without complaint and fails on the first decode.)
 */
export function checkDecoderConfig(config: unknown, where = 'decoder'): string | null {
  if (config === null || config === undefined) return null;
  if (!isJsonObject(config) || typeof config['type'] !== 'string') {
    return `${where} must be an object with a string type, got ${describeValue(config)}`;
  }
  if (config['type'] !== 'Sequence') return null;
  const parts = config['decoders'];
  if (!Array.isArray(parts)) return `${where}.decoders must be a list of decoders, got ${describeValue(parts)}`;
  for (let i = 0; i < parts.length; i++) {
    if (parts[i] === null || parts[i] === undefined) return `${where}.decoders[${i}] must be a decoder, got null`;
    const problem = checkDecoderConfig(parts[i], `${where}.decoders[${i}]`);
    if (problem !== null) return problem;
  }
  return null;
}

function createChain(config: unknown): DecodeChain | null {
  if (!isJsonObject(config)) return null;
  switch (config['type']) {
    case 'ByteLevel':
      return byteLevel;
    case 'ByteFallback':
      return byteFallback;
    case 'Fuse':
      return (tokens) => [tokens.join('')];
    case 'Strip':
      return strip(config);
    case 'Replace':
      return replace(config);
    case 'Metaspace':
      return metaspace(config);
    case 'Sequence': {
      const parts = Array.isArray(config['decoders']) ? config['decoders'].map(createChain) : [null];
      if (parts.some((part) => part === null)) return null;
      return (tokens) => (parts as DecodeChain[]).reduce((current, part) => part(current), tokens);
    }
    default:
      return null;
  }
}

/** GPT-2's printable stand-ins for bytes: byte b <-> code point, built as in bytes_to_unicode(). */
const BYTE_OF_CHAR: ReadonlyMap<string, number> = (() => {
  const map = new Map<string, number>();
  let extra = 0;
  for (let byte = 0; byte < 256; byte++) {
    const printable = (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
    map.set(String.fromCodePoint(printable ? byte : 256 + extra++), byte);
  }
  return map;
})();

const encoder = new TextEncoder();
// Lossy like Rust's String::from_utf8_lossy; a U+FEFF is text here, not a byte-order mark.
const lossyUtf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** All tokens to bytes (a token with any char outside the byte alphabet passes through as its
 * own UTF-8), then one lossy UTF-8 decode of the whole run. */
function byteLevel(tokens: string[]): string[] {
  const bytes: number[] = [];
  for (const token of tokens) {
    const mapped: number[] = [];
    let allMapped = true;
    for (const char of token) {
      const byte = BYTE_OF_CHAR.get(char);
      if (byte === undefined) {
        allMapped = false;
        break;
      }
      mapped.push(byte);
    }
    if (allMapped) bytes.push(...mapped);
    else bytes.push(...encoder.encode(token));
  }
  return [lossyUtf8.decode(Uint8Array.from(bytes))];
}

/** Rust parses <0xXY> with u8::from_str_radix, which also takes a leading '+'. */
const BYTE_TOKEN = /^<0x([0-9a-fA-F]{2}|\+[0-9a-fA-F])>$/;

/** Runs of <0xXY> tokens become their UTF-8 text, or one U+FFFD per byte if the run is invalid. */
function byteFallback(tokens: string[]): string[] {
  const out: string[] = [];
  let run: number[] = [];
  const flush = (): void => {
    if (run.length === 0) return;
    try {
      out.push(strictUtf8.decode(Uint8Array.from(run)));
    } catch {
      for (let i = 0; i < run.length; i++) out.push('\uFFFD');
    }
    run = [];
  };
  for (const token of tokens) {
    const match = BYTE_TOKEN.exec(token);
    if (match !== null) {
      run.push(parseInt(match[1]!, 16));
    } else {
      flush();
      out.push(token);
    }
  }
  flush();
  return out;
}

/** Removes up to `start` leading and `stop` trailing `content` chars from each token. */
function strip(config: JsonObject): DecodeChain | null {
  const content = config['content'];
  const start = config['start'];
  const stop = config['stop'];
  if (typeof content !== 'string' || [...content].length !== 1 || typeof start !== 'number' || typeof stop !== 'number') return null;
  return (tokens) =>
    tokens.map((token) => {
      const chars = [...token];
      let startCut = 0;
      while (startCut < Math.min(start, chars.length) && chars[startCut] === content) startCut++;
      let stopCut = chars.length;
      while (chars.length - stopCut < Math.min(stop, chars.length - startCut) && chars[stopCut - 1] === content) stopCut--;
      return chars.slice(startCut, stopCut).join('');
    });
}

/** Literal string replacement in each token. Regex patterns are left to the port. */
function replace(config: JsonObject): DecodeChain | null {
  const pattern = config['pattern'];
  const content = config['content'];
  if (!isJsonObject(pattern) || typeof pattern['String'] !== 'string' || typeof content !== 'string') return null;
  const needle = pattern['String'];
  if (needle.length === 0) return null;
  return (tokens) => tokens.map((token) => token.split(needle).join(content));
}

/** The replacement char (default '▁') becomes a space, except that in the first token it is
 * dropped altogether unless prepend_scheme is "never". */
function metaspace(config: JsonObject): DecodeChain | null {
  const replacement = config['replacement'] ?? '\u2581';
  if (typeof replacement !== 'string' || [...replacement].length !== 1) return null;
  // Older files carry add_prefix_space instead of prepend_scheme.
  const scheme = config['prepend_scheme'] ?? (config['add_prefix_space'] === false ? 'never' : 'always');
  const dropInFirst = scheme !== 'never';
  return (tokens) => tokens.map((token, i) => token.split(replacement).join(i === 0 && dropInFirst ? '' : ' '));
}
