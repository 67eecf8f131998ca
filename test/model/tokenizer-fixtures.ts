// Small tokenizer.json files in the styles of the models kvfocus runs, trained here with the Rust
// `tokenizers` library's BPE trainer on a short multilingual corpus, then completed by hand the
// way the real files are laid out (full byte alphabet, added special tokens, post-processor,
// decoder). They are small, but every component is the real one: the pre-tokenizer regexes of
// Llama 3 and Qwen2, ignore_merges, NFC, Metaspace, byte fallback and the Llama 2 decoder chain.

import { mkdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import {
  BPE,
  Tokenizer as RustTokenizer,
  byteLevelPreTokenizer,
  metaspacePreTokenizer,
  nfcNormalizer,
  sequencePreTokenizer,
  splitPreTokenizer,
} from 'tokenizers';
import { writeFile, writeJson } from './helpers.js';

export type TokenizerStyle = 'gpt2' | 'llama3' | 'qwen2' | 'llama2' | 'mistral';
export const TOKENIZER_STYLES: readonly TokenizerStyle[] = ['gpt2', 'llama3', 'qwen2', 'llama2', 'mistral'];

export const TRAINING_CORPUS = `The quick brown fox jumps over the lazy dog. Hello, world! Don't stop; it's what we'll do.
In 2024, researchers measured 1234567 tokens at 3.14159 per second -- roughly.
    def main():
        return {"key": [1, 2, 3]}  # code with    spaces
Naïve café résumé coöperate — “quotes” and ‘apostrophes’…
日本語のテキストと中文文本。한국어 텍스트. Привет, мир! Γειά σου κόσμε.
Emoji: 😀 👋🏽 🚀 ❤️ and tabs\tand\r\nnewlines\n\nparagraphs.
`.repeat(20);

export const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
export const QWEN2_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** Official chat templates (tokenizer_config.json of the Instruct models). */
export const LLAMA3_CHAT_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
export const QWEN2_CHAT_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
export const MISTRAL_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

type Merge = [string, string];
type Json = Record<string, unknown>;

/** GPT-2's bytes_to_unicode(): byte -> printable stand-in character. */
function byteAlphabet(): string[] {
  const chars: string[] = [];
  let extra = 0;
  for (let byte = 0; byte < 256; byte++) {
    const printable = (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
    chars.push(String.fromCodePoint(printable ? byte : 256 + extra++));
  }
  return chars;
}

function trainMerges(workDir: string, configure: (tokenizer: RustTokenizer) => void): Merge[] {
  const tokenizer = new RustTokenizer(BPE.empty());
  configure(tokenizer);
  tokenizer.train([path.join(workDir, 'corpus.txt')]);
  const saved = path.join(workDir, 'trained.json');
  tokenizer.save(saved);
  const model = (JSON.parse(readFileSync(saved, 'utf8')) as { model: { merges: Array<string | Merge> } }).model;
  return model.merges.map((m) => (Array.isArray(m) ? m : (m.split(' ') as Merge)));
}

function bpeModel(vocab: Record<string, number>, merges: Merge[], extra: Json = {}): Json {
  return {
    type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
    fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges, ...extra,
  };
}

/** Byte alphabet first (ids 0-255, in byte order), then one token per merge. */
function byteLevelVocab(merges: Merge[]): Record<string, number> {
  const vocab: Record<string, number> = {};
  let id = 0;
  for (const char of byteAlphabet()) vocab[char] = id++;
  for (const [a, b] of merges) if (!(a + b in vocab)) vocab[a + b] = id++;
  return vocab;
}

function specialTokens(contents: readonly string[], firstId: number): Json[] {
  return contents.map((content, i) => ({ id: firstId + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
}

const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };

function gpt2(merges: Merge[]): Json {
  const vocab = byteLevelVocab(merges);
  return {
    version: '1.0', truncation: null, padding: null, normalizer: null,
    added_tokens: specialTokens(['<|endoftext|>'], Object.keys(vocab).length),
    pre_tokenizer: BYTE_LEVEL,
    post_processor: { ...BYTE_LEVEL, add_prefix_space: true, trim_offsets: false },
    decoder: { ...BYTE_LEVEL, add_prefix_space: true },
    model: bpeModel(vocab, merges),
  };
}

export const LLAMA3_SPECIAL = ['<|begin_of_text|>', '<|end_of_text|>', '<|reserved_special_token_0|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'];

function llama3(merges: Merge[]): Json {
  const vocab = byteLevelVocab(merges);
  const bos = Object.keys(vocab).length;
  return {
    version: '1.0', truncation: null, padding: null, normalizer: null,
    added_tokens: specialTokens(LLAMA3_SPECIAL, bos),
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: LLAMA3_PATTERN }, behavior: 'Isolated', invert: false },
      { ...BYTE_LEVEL, use_regex: false },
    ] },
    post_processor: { type: 'Sequence', processors: [
      { ...BYTE_LEVEL, add_prefix_space: true, trim_offsets: false },
      {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [bos], tokens: ['<|begin_of_text|>'] } },
      },
    ] },
    decoder: { ...BYTE_LEVEL, add_prefix_space: true },
    model: bpeModel(vocab, merges, { ignore_merges: true }),
  };
}

function qwen2(merges: Merge[]): Json {
  const vocab = byteLevelVocab(merges);
  const plain = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: specialTokens(['<|endoftext|>', '<|im_start|>', '<|im_end|>'], Object.keys(vocab).length),
    normalizer: { type: 'NFC' },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: QWEN2_PATTERN }, behavior: 'Isolated', invert: false }, plain] },
    post_processor: plain,
    decoder: plain,
    model: bpeModel(vocab, merges),
  };
}

/** SentencePiece converted to BPE: <unk> <s> </s>, the 256 <0xXY> byte tokens, characters, merges. */
function sentencePieceVocab(merges: Merge[]): Record<string, number> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  let id = 3;
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = id++;
  const chars = new Set<string>();
  for (const [a, b] of merges) for (const c of a + b) chars.add(c);
  for (const c of [...chars].sort()) vocab[c] = id++;
  for (const [a, b] of merges) if (!(a + b in vocab)) vocab[a + b] = id++;
  return vocab;
}

const LLAMA2_DECODER = { type: 'Sequence', decoders: [
  { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
  { type: 'ByteFallback' },
  { type: 'Fuse' },
  { type: 'Strip', content: ' ', start: 1, stop: 0 },
] };

function llama2(merges: Merge[]): Json {
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [
      { id: 0, content: '<unk>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 1, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 2, content: '</s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: LLAMA2_DECODER,
    model: bpeModel(sentencePieceVocab(merges), merges, { unk_token: '<unk>', fuse_unk: true, byte_fallback: true }),
  };
}

/** Newer (legacy: false) conversions: a Metaspace pre-tokenizer that prepends only at the start. */
function mistral(merges: Merge[]): Json {
  return { ...llama2(merges), normalizer: null, pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false } };
}

const AddedToken = (content: string): Json => ({ __type: 'AddedToken', content, lstrip: false, normalized: false, rstrip: false, single_word: false });

const TOKENIZER_CONFIGS: Record<TokenizerStyle, Json> = {
  gpt2: { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>', clean_up_tokenization_spaces: true },
  llama3: { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>', clean_up_tokenization_spaces: true, chat_template: LLAMA3_CHAT_TEMPLATE },
  qwen2: { bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>', chat_template: QWEN2_CHAT_TEMPLATE },
  llama2: { bos_token: AddedToken('<s>'), eos_token: AddedToken('</s>'), unk_token: AddedToken('<unk>'), pad_token: null, legacy: false },
  mistral: { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', chat_template: MISTRAL_CHAT_TEMPLATE },
};

/**
 * Writes one folder per style under `root` (tokenizer.json + tokenizer_config.json) and returns
 * their paths. Training takes well under a second per style.
 */
export function buildTokenizerFixtures(root: string): Record<TokenizerStyle, string> {
  writeFile(root, 'corpus.txt', TRAINING_CORPUS);
  const byteLevelMerges = trainMerges(root, (t) => t.setPreTokenizer(byteLevelPreTokenizer(false, true)));
  const llama3Merges = trainMerges(root, (t) =>
    t.setPreTokenizer(sequencePreTokenizer([splitPreTokenizer(LLAMA3_PATTERN, 'isolated', false), byteLevelPreTokenizer(false, false)])),
  );
  const qwen2Merges = trainMerges(root, (t) => {
    t.setNormalizer(nfcNormalizer());
    t.setPreTokenizer(sequencePreTokenizer([splitPreTokenizer(QWEN2_PATTERN, 'isolated', false), byteLevelPreTokenizer(false, false)]));
  });
  const metaspaceMerges = trainMerges(root, (t) => t.setPreTokenizer(metaspacePreTokenizer('\u2581', 'always', true)));

  const files: Record<TokenizerStyle, Json> = {
    gpt2: gpt2(byteLevelMerges),
    llama3: llama3(llama3Merges),
    qwen2: qwen2(qwen2Merges),
    llama2: llama2(metaspaceMerges),
    mistral: mistral(metaspaceMerges),
  };
  const dirs = {} as Record<TokenizerStyle, string>;
  for (const style of TOKENIZER_STYLES) {
    const dir = path.join(root, style);
    mkdirSync(dir, { recursive: true });
    writeJson(dir, 'tokenizer.json', files[style]);
    writeJson(dir, 'tokenizer_config.json', TOKENIZER_CONFIGS[style]);
    dirs[style] = dir;
  }
  return dirs;
}
