// The Tokenizer (pure TypeScript at runtime) against Hugging Face's Rust `tokenizers` library on
// tokenizer.json files in the styles of GPT-2, Llama 3, Qwen2, Llama 2 and Mistral.

import { cpSync, mkdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Tokenizer as RustTokenizer } from 'tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, ModelFormatError, UnsupportedError } from '../../lib/errors.js';
import { Tokenizer } from '../../lib/model/tokenizer.js';
import { expectModelFormatError, makeTempDir, writeFile, writeJson } from './helpers.js';
import { buildTokenizerFixtures, TOKENIZER_STYLES, type TokenizerStyle } from './tokenizer-fixtures.js';

const temp = makeTempDir('kvfocus-tokenizer-');
afterAll(temp.cleanup);

let dirs: Record<TokenizerStyle, string>;
const ours = {} as Record<TokenizerStyle, Tokenizer>;
const rust = {} as Record<TokenizerStyle, RustTokenizer>;

beforeAll(async () => {
  dirs = buildTokenizerFixtures(temp.dir);
  for (const style of TOKENIZER_STYLES) {
    ours[style] = await Tokenizer.load(dirs[style]);
    rust[style] = RustTokenizer.fromFile(path.join(dirs[style], 'tokenizer.json'));
  }
}, 60_000);

/** Texts meant to break tokenizers: whitespace runs, every script, emoji sequences, special tokens. */
const CORPUS: readonly string[] = [
  '', ' ', 'a', 'Hello, world!', '  leading spaces', 'trailing spaces   ', 'multiple     spaces in   between',
  '\n', '\n\n\n', 'line1\nline2\r\nline3\r\rx', '\t tab\tseparated\t\t', "don't I'LL it'S we'Ve",
  'numbers 1234567 and 3.14159 and 007', 'The quick brown fox jumps over the lazy dog.',
  '日本語のテキスト', '中文文本，标点。', '한국어', 'Привет мир', 'Naïve café', 'e\u0301 vs é (NFC matters)',
  'Emoji 😀👋🏽🚀❤️', 'family 👨‍👩‍👧‍👦 flag 🇫🇷', 'unseen 🦙🧬 and 𝕳𝖊𝖑𝖑𝖔 𝟙𝟚𝟛', 'zero\u200bwidth', 'مرحبا بالعالم',
  '  \n  \n', 'x  \n', '    def main():\n        return 1', '<|endoftext|>', 'abc<|endoftext|>def',
  'hi <|im_start|>user\nhello<|im_end|>\n', '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>',
  '<s>x</s>', ' <s> x </s> ', '<|endoftext', '<unk>', '\u0000ctrl\u0007', 'ﬁ ligature ① Ⅻ',
  'next line\u0085\'s and bom\ufeff\'s and nbsp\u00a0x', 'A'.repeat(50), ' '.repeat(17) + 'x', 'lone \ud800 surrogate',
];

/** Deterministic pseudo-random texts stitched from pieces that stress the same corners. */
function fuzzTexts(count: number, seed: number): string[] {
  const pieces = ['the', ' fox', ' ', '   ', '\n', '\r\n', '\t', "'s", "'LL", '123', '4567', '.', '!?', '—', 'é', 'e\u0301', 'ß', 'İ', '日本', '한', 'мир',
    '😀', '👋🏽', '👨‍👩‍👧', '🇫🇷', '\u200b', '\u00a0', '\u0085', '\ufeff', '\u2028', '\u3000', 'ﬁ', '<|endoftext|>', '<|im_start|>', '<|eot_id|>',
    '<s>', '</s>', '▁', '▁▁x', 'Ġ', '\\', '{', '\u0301', '\ufffd'];
  let state = seed;
  const next = (n: number): number => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return Math.floor((state / 2147483648) * n);
  };
  return Array.from({ length: count }, () => Array.from({ length: 1 + next(10) }, () => pieces[next(pieces.length)]!).join(''));
}

async function rustIds(style: TokenizerStyle, text: string, addSpecialTokens: boolean): Promise<number[]> {
  return (await rust[style].encode(text, null, { addSpecialTokens })).getIds();
}

describe.each(TOKENIZER_STYLES)('%s-style tokenizer.json, compared with Rust tokenizers', (style) => {
  it('encodes the corpus to the same ids, with and without special tokens', async () => {
    for (const text of CORPUS) {
      for (const addSpecialTokens of [true, false]) {
        expect(ours[style].encode(text, { addSpecialTokens }), JSON.stringify(text)).toEqual(await rustIds(style, text, addSpecialTokens));
      }
    }
  });

  it('encodes 400 generated texts to the same ids', async () => {
    for (const text of fuzzTexts(400, 1234)) {
      expect(ours[style].encode(text), JSON.stringify(text)).toEqual(await rustIds(style, text, true));
    }
  });

  it('decodes the encoded corpus to the same text, with and without special tokens', async () => {
    for (const text of CORPUS) {
      const ids = await rustIds(style, text, true);
      for (const skipSpecialTokens of [false, true]) {
        expect(ours[style].decode(ids, { skipSpecialTokens }), JSON.stringify(text)).toBe(await rust[style].decode(ids, skipSpecialTokens));
      }
    }
  });

  it('decodes random id sequences, including partial characters and unknown ids, to the same text', async () => {
    const tokenizer = ours[style];
    let state = 99;
    const next = (n: number): number => {
      state = (state * 1103515245 + 12345) % 2147483648;
      return Math.floor((state / 2147483648) * n);
    };
    const special = [...tokenizer.specialTokenIds];
    for (let i = 0; i < 300; i++) {
      const ids = Array.from({ length: 1 + next(6) }, () => {
        const r = next(100);
        if (r < 10) return special[next(special.length)]!;
        if (r < 55) return next(300); // byte tokens live low in these vocabularies
        if (r < 57) return tokenizer.vocabSize + next(5); // e.g. padding rows of a larger embedding
        return next(tokenizer.vocabSize);
      });
      for (const skipSpecialTokens of [false, true]) {
        expect(tokenizer.decode(ids, { skipSpecialTokens }), JSON.stringify(ids)).toBe(await rust[style].decode(ids, skipSpecialTokens));
      }
    }
  });

  it('streams the encoded corpus token by token to exactly the decoded text', () => {
    const tokenizer = ours[style];
    for (const text of [...CORPUS, ...fuzzTexts(100, 77)]) {
      const ids = tokenizer.encode(text);
      for (const skipSpecialTokens of [false, true]) {
        const whole = tokenizer.decode(ids, { skipSpecialTokens });
        const stream = tokenizer.createStreamDecoder({ skipSpecialTokens });
        let streamed = '';
        for (const id of ids) {
          streamed += stream.push(id);
          expect(whole.startsWith(streamed), JSON.stringify(text)).toBe(true);
          expect(streamed.endsWith('\uFFFD') && !whole.includes('\uFFFD')).toBe(false);
        }
        streamed += stream.flush();
        expect(streamed, JSON.stringify(text)).toBe(whole);
      }
    }
  });
});

// Byte-level BPE without a normalizer is lossless. NFC (Qwen2) and the SentencePiece-style space
// handling (a '▁' prepended after special tokens, leading spaces stripped) are lossy by design, in
// Rust too; the comparisons above cover those.
describe.each(['gpt2', 'llama3'] as const)('%s-style byte-level BPE', (style) => {
  it('round-trips text through encode and decode', () => {
    for (const text of CORPUS.filter((t) => !t.includes('\ud800'))) {
      expect(ours[style].decode(ours[style].encode(text, { addSpecialTokens: false })), JSON.stringify(text)).toBe(text);
    }
  });
});

describe('Tokenizer.decode', () => {
  it('keeps a U+FEFF that byte fallback decodes and writes one U+FFFD per invalid byte, as Rust does', () => {
    const llama2 = ours.llama2;
    const byte = (b: number): number => llama2.tokenToId(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)!;
    expect(llama2.decode([byte(0x41), byte(0xef), byte(0xbb), byte(0xbf)])).toBe('A\ufeff');
    // A run that is invalid as a whole: every byte becomes U+FFFD, even the valid 'c' (0x63).
    expect(llama2.decode([byte(0xe6), byte(0x97), byte(0x63)])).toBe('\uFFFD\uFFFD\uFFFD');
  });

  it('rejects ids that are not integers, and skips ids without a token', () => {
    expect(() => ours.llama3.decode([1, 2.5])).toThrow(InvalidArgumentError);
    expect(ours.llama3.decode([ours.llama3.vocabSize + 100, -1])).toBe('');
    expect(ours.llama3.decode([])).toBe('');
  });

  it('does not apply clean_up_tokenization_spaces, so decoding is lossless', () => {
    // tokenizer_config.json of the llama3 fixture sets clean_up_tokenization_spaces: true, which
    // transformers would use to turn "a , b" into "a, b".
    const ids = ours.llama3.encode('a , b .', { addSpecialTokens: false });
    expect(ours.llama3.decode(ids)).toBe('a , b .');
  });
});

describe('StreamDecoder', () => {
  it('holds back the bytes of a character split across tokens until it is complete', () => {
    for (const style of ['llama3', 'llama2'] as const) {
      const tokenizer = ours[style];
      // The llama emoji is not in the training corpus: its 4 UTF-8 bytes need several tokens.
      const emoji = tokenizer.encode('🦙', { addSpecialTokens: false });
      expect(emoji.length).toBeGreaterThanOrEqual(2);
      const stream = tokenizer.createStreamDecoder();
      const pieces = tokenizer.encode('🦙!', { addSpecialTokens: false }).map((id) => stream.push(id));
      const first = pieces.findIndex((piece) => piece !== '');
      expect(first).toBeGreaterThanOrEqual(1); // the partial bytes yield nothing...
      expect(pieces[first]).toBe('🦙'); // ...until the character is whole
      expect(pieces.join('') + stream.flush()).toBe('🦙!');
    }
  });

  it('flushes an incomplete character as the replacement character, like decode', () => {
    const tokenizer = ours.llama3;
    const ids = tokenizer.encode('🦙', { addSpecialTokens: false }).slice(0, 2);
    const stream = tokenizer.createStreamDecoder();
    expect(ids.map((id) => stream.push(id)).join('')).toBe('');
    expect(stream.flush()).toBe(tokenizer.decode(ids));
    expect(tokenizer.decode(ids)).toBe('\uFFFD');
  });
});

describe('special tokens', () => {
  it('reads bos, eos, pad and unk from tokenizer_config.json, in string or AddedToken form', () => {
    expect([ours.llama3.bosTokenId, ours.llama3.eosTokenId, ours.llama3.padTokenId]).toEqual([
      ours.llama3.tokenToId('<|begin_of_text|>'), ours.llama3.tokenToId('<|eot_id|>'), null,
    ]);
    expect([ours.qwen2.bosTokenId, ours.qwen2.eosTokenId, ours.qwen2.padTokenId]).toEqual([null, ours.qwen2.tokenToId('<|im_end|>'), ours.qwen2.tokenToId('<|endoftext|>')]);
    expect([ours.llama2.bosTokenId, ours.llama2.eosTokenId, ours.llama2.unkTokenId]).toEqual([1, 2, 0]);
  });

  it('marks the added tokens that tokenizer.json calls special', () => {
    expect(ours.llama2.specialTokenIds).toEqual(new Set([0, 1, 2]));
    expect(ours.llama2.isSpecial(1)).toBe(true);
    expect(ours.llama2.idToToken(1)).toBe('<s>');
    expect(ours.llama2.idToToken(3)).toBe('<0x00>');
  });

  it('adds BOS only when asked', () => {
    expect(ours.llama2.encode('hi')[0]).toBe(1);
    expect(ours.llama2.encode('hi', { addSpecialTokens: false })[0]).not.toBe(1);
  });
});

describe('applyChatTemplate', () => {
  it('renders the Llama 3 template with one BOS and the assistant header', async () => {
    const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: ' Hi! ' }];
    const prompt = ours.llama3.applyChatTemplate(messages, { addGenerationPrompt: true });
    expect(prompt).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const ids = ours.llama3.encodeChat(messages, { addGenerationPrompt: true });
    expect(ids).toEqual(await rustIds('llama3', prompt, false));
    expect(ids.filter((id) => id === ours.llama3.bosTokenId)).toHaveLength(1);
  });

  it('renders the Qwen2 ChatML template with its default system prompt', () => {
    expect(ours.qwen2.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true })).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    );
    expect(ours.qwen2.applyChatTemplate([{ role: 'user', content: 'Hi' }])).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n',
    );
  });

  it('renders the Mistral template and turns raise_exception into an InvalidArgumentError', () => {
    const chat = [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }, { role: 'user', content: 'Bye' }];
    expect(ours.mistral.applyChatTemplate(chat)).toBe('<s>[INST] Hi [/INST]Hello</s> [INST] Bye [/INST]');
    expect(() => ours.mistral.applyChatTemplate([{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }])).toThrow(
      /chat template failed: .*Conversation roles must alternate user\/assistant\/user\/assistant/,
    );
  });

  it('validates messages and explains a tokenizer without a template', () => {
    expect(() => ours.qwen2.applyChatTemplate([{ content: 'x' } as never])).toThrow(InvalidArgumentError);
    expect(() => ours.qwen2.applyChatTemplate('hi' as never)).toThrow('messages must be an array, got "hi"');
    expect(ours.llama2.hasChatTemplate).toBe(false);
    expect(() => ours.llama2.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(UnsupportedError);
  });

  it('trims blocks like transformers\' Jinja environment and passes tools as none when absent', async () => {
    const source = JSON.parse(readFileSync(path.join(dirs.qwen2, 'tokenizer.json'), 'utf8')) as unknown;
    const tokenizer = await Tokenizer.fromJSON({
      tokenizer: source,
      tokenizerConfig: {
        chat_template: [
          { name: 'default', template: "{% for message in messages %}\n    {% if message.role == 'user' %}\n{{ message.content }}\n    {% endif %}\n{% endfor %}" },
          { name: 'tool_use', template: '{% if tools is not none %}{{ tools | length }} tools{% else %}no tools{% endif %}' },
        ],
      },
    });
    // Expected strings are what Python's Jinja2 renders with trim_blocks and lstrip_blocks.
    expect(tokenizer.applyChatTemplate([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Yo' }])).toBe('Hi\n');
    expect(tokenizer.applyChatTemplate([], { templateName: 'tool_use' })).toBe('no tools');
    expect(tokenizer.applyChatTemplate([], { templateName: 'tool_use', tools: [{}, {}] })).toBe('2 tools');
    expect(() => tokenizer.applyChatTemplate([], { templateName: 'rag' })).toThrow('no chat template named "rag"; available: default, tool_use');
  });

  it('prefers chat_template.jinja next to tokenizer_config.json', async () => {
    const dir = path.join(temp.dir, 'jinja-file');
    cpSync(dirs.qwen2, dir, { recursive: true });
    writeFile(dir, 'chat_template.jinja', '{{ messages | length }} messages');
    const tokenizer = await Tokenizer.load(dir);
    expect(tokenizer.applyChatTemplate([{ role: 'user', content: 'x' }])).toBe('1 messages');
  });
});

describe('malformed tokenizer files', () => {
  let good: Record<string, unknown>;
  beforeAll(() => {
    good = JSON.parse(readFileSync(path.join(dirs.llama3, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  });
  let n = 0;
  async function folderWith(tokenizerJson: unknown, config?: unknown): Promise<string> {
    const dir = path.join(temp.dir, `bad-${n++}`);
    mkdirSync(dir);
    if (typeof tokenizerJson === 'string') writeFile(dir, 'tokenizer.json', tokenizerJson);
    else writeJson(dir, 'tokenizer.json', tokenizerJson);
    if (config !== undefined) writeJson(dir, 'tokenizer_config.json', config);
    return dir;
  }

  it('rejects a missing or unparsable tokenizer.json', async () => {
    const dir = path.join(temp.dir, 'empty');
    mkdirSync(dir);
    const file = path.join(dir, 'tokenizer.json');
    await expectModelFormatError(() => Tokenizer.load(dir), file, `tokenizer.json: file not found at ${file}`);
    const broken = await folderWith('{"model": {');
    await expectModelFormatError(() => Tokenizer.load(broken), path.join(broken, 'tokenizer.json'), /^tokenizer\.json: invalid JSON/);
  });

  it('rejects a tokenizer.json without a model or with a bad vocabulary', async () => {
    let dir = await folderWith({ ...good, model: undefined });
    await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer.json'), 'tokenizer.json: model must be an object, got nothing');
    dir = await folderWith({ ...good, model: { ...(good['model'] as object), vocab: { a: 'zero' } } });
    await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer.json'), 'tokenizer.json: model.vocab["a"] must be a non-negative integer id, got "zero"');
  });

  it('rejects malformed added tokens and refuses single_word ones', async () => {
    let dir = await folderWith({ ...good, added_tokens: [{ id: 'x', content: '<a>' }] });
    await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer.json'), /^tokenizer\.json: added_tokens\[0\] must have a string content and a non-negative integer id/);
    dir = await folderWith({ ...good, added_tokens: [{ id: 5, content: '<mask>', single_word: true, special: true }] });
    await expect(Tokenizer.load(dir)).rejects.toThrow(UnsupportedError);
  });

  it('rejects special tokens that are not in the vocabulary, and bad chat templates', async () => {
    let dir = await folderWith(good, { eos_token: '<|im_end|>' });
    await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer_config.json'), 'tokenizer_config.json: eos_token "<|im_end|>" is not a token of tokenizer.json');
    // A pad token that is not in the vocabulary is no error (transformers would add it).
    dir = await folderWith(good, { eos_token: '<|eot_id|>', pad_token: '<pad>' });
    expect((await Tokenizer.load(dir)).padTokenId).toBeNull();
    dir = await folderWith(good, { bos_token: 7 });
    await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer_config.json'), 'tokenizer_config.json: bos_token must be a token string or an object with content, got 7');
    dir = await folderWith(good, { chat_template: '{% for m in messages %}' });
    await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer_config.json'), /^tokenizer_config\.json: chat_template does not parse as a Jinja template/);
    dir = await folderWith(good, { chat_template: 42 });
    await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer_config.json'), 'tokenizer_config.json: chat_template must be a string or a list of named templates, got 42');
  });

  it('reports a pre-tokenizer the port cannot build as a format error', async () => {
    const dir = await folderWith({ ...good, pre_tokenizer: { type: 'NoSuchPreTokenizer' } });
    const error = await expectModelFormatError(() => Tokenizer.load(dir), path.join(dir, 'tokenizer.json'), /^tokenizer\.json: cannot be loaded \(/);
    expect(error).toBeInstanceOf(ModelFormatError);
  });

  it('rejects a text that is not a string', () => {
    expect(() => ours.gpt2.encode(42 as never)).toThrow('text must be a string, got 42');
  });
});
