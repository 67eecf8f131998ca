// Byte-level BPE training (GPT-2 style), shared by the test fixtures' tokenizers
// (scripts/fixtures/make-fixtures.mjs) and the embedded model's (scripts/train/make-tokenizer.mjs).

/** GPT-2's pre-tokenization regex (what tokenizers' ByteLevel pre-tokenizer with use_regex does). */
export const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/**
 * GPT-2's reversible map from the 256 byte values to printable characters, so that byte-level
 * tokens are ordinary strings (a space becomes "Ġ", a newline "Ċ").
 */
export function bytesToUnicode() {
  const printable = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const chars = new Array(256);
  for (const b of printable) chars[b] = String.fromCodePoint(b);
  let next = 256;
  for (let b = 0; b < 256; b++) if (chars[b] === undefined) chars[b] = String.fromCodePoint(next++);
  return chars;
}

/** Byte b -> its byte-level character. */
export const BYTE_CHARS = bytesToUnicode();
const encoder = new TextEncoder();

/** Pre-tokens of a text, each as byte-level characters. */
export function pretokenize(text) {
  return (text.match(GPT2_SPLIT) ?? []).map((piece) => Array.from(encoder.encode(piece), (b) => BYTE_CHARS[b]).join(''));
}

/**
 * Learns merges on `texts` until `newTokens` distinct merged tokens exist, or no pair occurs
 * `minCount` times. The most frequent pair merges first; ties go to the lexicographically
 * smallest pair, so training is deterministic. `mergeable(a, b)` can forbid merges (e.g. of
 * digits). Returns the merges by rank and the new tokens in the order they appeared.
 */
export function learnMerges(texts, { newTokens, minCount = 1, mergeable = () => true }) {
  const freq = new Map();
  for (const text of texts) for (const w of pretokenize(text)) freq.set(w, (freq.get(w) ?? 0) + 1);
  const words = [...freq.entries()].map(([w, f]) => ({ symbols: [...w], f }));
  const known = new Set(BYTE_CHARS);
  const merges = [];
  const tokens = [];
  while (tokens.length < newTokens) {
    const pairs = new Map();
    for (const { symbols, f } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        if (!mergeable(symbols[i], symbols[i + 1])) continue;
        // Byte-level symbols never contain U+0000, so the key is unambiguous.
        const key = `${symbols[i]}\u0000${symbols[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + f);
      }
    }
    let best = null;
    let bestCount = 0;
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === null || bestCount < minCount) break;
    const [a, b] = best.split('\u0000');
    const merged = a + b;
    merges.push([a, b]);
    if (!known.has(merged)) {
      known.add(merged);
      tokens.push(merged);
    }
    for (const w of words) {
      const s = w.symbols;
      if (s.length < 2) continue;
      const out = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(merged);
          i++;
        } else out.push(s[i]);
      }
      w.symbols = out;
    }
  }
  return { merges, tokens };
}

/**
 * The "model" block of a tokenizer.json for a byte-level BPE: `vocab` maps token -> id, `merges`
 * by rank, as "a b" strings or [a, b] pairs (tokenizers reads both).
 */
export function bpeModelJson(vocab, merges) {
  return {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
    vocab,
    merges,
  };
}
