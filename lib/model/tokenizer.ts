// Text <-> token ids for a Hugging Face model folder: tokenizer.json (+ tokenizer_config.json for
// special tokens and the chat template).
//
// Encoding runs on @huggingface/tokenizers, HF's pure-TypeScript port: no native binary to ship,
// and synchronous. test/model/tokenizer.test.ts holds it to the Rust `tokenizers` library on
// byte-level BPE (GPT-2, Llama 3, Qwen2 style) and SentencePiece-style BPE with byte fallback
// (Llama 2, Mistral style). Where the port differed we adapt around it:
//  - A GPT-2-style ByteLevel pre-tokenizer with its built-in regex uses JavaScript's \s, which
//    differs from Oniguruma's (U+0085 is a space to Rust, U+FEFF is not); we hand the port the
//    equivalent Split + ByteLevel pair, whose regex it translates with Oniguruma semantics.
//  - Decoding is ours (decoders.ts) for the decoder types those models use, because the port's
//    ByteFallback decoder drops U+FEFF and counts replacement characters differently.
//  - Added tokens with single_word are refused: the port ignores the flag.
// Remaining known differences, none met by these model families' files:
//  - Added tokens with lstrip/rstrip strip JavaScript whitespace (includes U+FEFF, excludes
//    U+0085) where Rust strips Unicode White_Space.
//  - A BPE model with neither byte_fallback nor unk_token: Rust drops characters missing from
//    the vocabulary before merging ("a🦙b" -> "ab"), the port merges around them ("a", "b").
//
// tokenizer_config.json does not change encoding here: tokenizer.json alone defines it, as in the
// Rust library. (transformers' Python layer can rebuild the Llama post-processor from
// add_bos_token/add_eos_token; checkpoints saved by transformers carry the result in
// tokenizer.json.) Decoding never applies clean_up_tokenization_spaces: it is not prefix-stable,
// so streamed text would disagree with the final text.

import * as path from 'node:path';
import type { Tokenizer as PortTokenizer } from '@huggingface/tokenizers' with { 'resolution-mode': 'import' };
import { InvalidArgumentError, KvfocusError, ModelFormatError, UnsupportedError } from '../errors.js';
import { checkOptions, optionNames } from '../validate.js';
import { ChatTemplate } from './chat-template.js';
import { checkDecoderConfig, createDecoder } from './decoders.js';
import { describeValue, isJsonObject, readJsonFile, readOptionalJsonFile, type JsonObject } from './json-file.js';
import { modelFileExists, readModelFile } from './model-files.js';

export interface EncodeOptions {
  /** Apply tokenizer.json's post-processor (e.g. prepend BOS). Default true, as in transformers. */
  readonly addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out added tokens marked special in tokenizer.json. Default false. */
  readonly skipSpecialTokens?: boolean;
}

export interface ChatMessage {
  readonly role: string;
  readonly content: unknown;
  readonly [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** End with the header of an assistant turn, so the model writes the reply. Default false. */
  readonly addGenerationPrompt?: boolean;
  /** Which of several named templates (tokenizer_config.json lists them); default "default". */
  readonly templateName?: string;
  /** Tool schemas, passed to the template as `tools`. */
  readonly tools?: readonly unknown[];
  /** Retrieved documents, passed to the template as `documents`. */
  readonly documents?: readonly unknown[];
  /** Further template variables, as transformers' apply_chat_template(**kwargs). */
  readonly variables?: Readonly<Record<string, unknown>>;
}

/** Files and loader settings that Tokenizer.fromJSON takes in place of a folder. */
export interface TokenizerSource {
  readonly tokenizer: unknown;
  readonly tokenizerConfig?: unknown;
  /** A chat template that overrides tokenizer_config.json's (chat_template.jinja, for example). */
  readonly chatTemplate?: string;
  /** The file chatTemplate came from, for error messages. */
  readonly chatTemplateFile?: string;
  /** Paths used in error messages. */
  readonly tokenizerFile?: string;
  readonly tokenizerConfigFile?: string;
}

type TokenizersModule = typeof import('@huggingface/tokenizers', { with: { 'resolution-mode': 'import' } });
type JinjaModule = typeof import('@huggingface/jinja', { with: { 'resolution-mode': 'import' } });

// Both packages are ESM; a dynamic import is how a CommonJS build loads them.
let modules: Promise<[TokenizersModule, JinjaModule]> | undefined;
function loadModules(): Promise<[TokenizersModule, JinjaModule]> {
  modules ??= Promise.all([import('@huggingface/tokenizers'), import('@huggingface/jinja')]);
  return modules;
}

const ENCODE_OPTIONS = optionNames<EncodeOptions>({ addSpecialTokens: true });
const DECODE_OPTIONS = optionNames<DecodeOptions>({ skipSpecialTokens: true });
const CHAT_TEMPLATE_OPTIONS = optionNames<ChatTemplateOptions>({ addGenerationPrompt: true, templateName: true, tools: true, documents: true, variables: true });

/** Encoded once at load to exercise every part of the pipeline: letters, digits, punctuation,
 * spaces, and characters outside ASCII (byte fallback). */
const TRIAL_TEXT = 'Hello, world! 123 \u00e9\u4e2d\u{1F999}';

const GPT2_PRETOKENIZER_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

interface AddedTokenEntry {
  readonly id: number;
  readonly content: string;
  readonly special: boolean;
}

export class Tokenizer {
  readonly #port: PortTokenizer;
  /** id -> token string; holes where the vocabulary has no id. */
  readonly #tokens: (string | undefined)[];
  readonly #ids: ReadonlyMap<string, number>;
  readonly #special: ReadonlySet<number>;
  readonly #decode: (tokens: string[]) => string;
  readonly #templates: ReadonlyMap<string, ChatTemplate>;
  readonly #file: string;
  readonly #specialTokenStrings: Readonly<Record<string, string | null>>;

  /** One past the largest token id. */
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  readonly unkTokenId: number | null;
  /** Ids of the added tokens tokenizer.json marks special. */
  readonly specialTokenIds: ReadonlySet<number>;

  private constructor(init: {
    port: PortTokenizer;
    tokens: (string | undefined)[];
    ids: Map<string, number>;
    special: Set<number>;
    decode: (tokens: string[]) => string;
    templates: Map<string, ChatTemplate>;
    file: string;
    specialTokens: Record<'bos' | 'eos' | 'pad' | 'unk', { text: string | null; id: number | null }>;
  }) {
    this.#port = init.port;
    this.#tokens = init.tokens;
    this.#ids = init.ids;
    this.#special = init.special;
    this.#decode = init.decode;
    this.#templates = init.templates;
    this.#file = init.file;
    this.vocabSize = init.tokens.length;
    this.specialTokenIds = init.special;
    const { bos, eos, pad, unk } = init.specialTokens;
    this.bosTokenId = bos.id;
    this.eosTokenId = eos.id;
    this.padTokenId = pad.id;
    this.unkTokenId = unk.id;
    this.#specialTokenStrings = { bos_token: bos.text, eos_token: eos.text, pad_token: pad.text, unk_token: unk.text };
  }

  /**
   * Loads tokenizer.json and, when present, tokenizer_config.json from a model folder. A
   * chat_template.jinja file (how recent transformers save templates) overrides the config's.
   */
  static async load(dir: string): Promise<Tokenizer> {
    const folder = path.resolve(dir);
    const tokenizerFile = path.join(folder, 'tokenizer.json');
    const tokenizerConfigFile = path.join(folder, 'tokenizer_config.json');
    const templateFile = path.join(folder, 'chat_template.jinja');
    const [tokenizer, tokenizerConfig, chatTemplate] = await Promise.all([
      readJsonFile(tokenizerFile, { dir: folder }),
      readOptionalJsonFile(tokenizerConfigFile, { dir: folder }),
      modelFileExists(templateFile).then(async (exists) => (exists ? (await readModelFile(templateFile, { dir: folder })).toString('utf8') : undefined)),
    ]);
    return Tokenizer.fromJSON({
      tokenizer,
      tokenizerConfig,
      tokenizerFile,
      tokenizerConfigFile,
      ...(chatTemplate === undefined ? {} : { chatTemplate, chatTemplateFile: templateFile }),
    });
  }

  /** Builds a tokenizer from already parsed files. */
  static async fromJSON(source: TokenizerSource): Promise<Tokenizer> {
    const tokenizerFile = source.tokenizerFile ?? 'tokenizer.json';
    const configFile = source.tokenizerConfigFile ?? 'tokenizer_config.json';
    const fail = (detail: string): ModelFormatError => new ModelFormatError(`${path.basename(tokenizerFile)}: ${detail}`, tokenizerFile);
    const json = source.tokenizer;
    if (!isJsonObject(json)) throw fail(`must be a JSON object, got ${describeValue(json)}`);
    const model = json['model'];
    if (!isJsonObject(model)) throw fail(`model must be an object, got ${describeValue(model)}`);
    const config = source.tokenizerConfig ?? {};
    if (!isJsonObject(config)) {
      throw new ModelFormatError(`${path.basename(configFile)}: must be a JSON object, got ${describeValue(config)}`, configFile);
    }

    const added = readAddedTokens(json, fail);
    const { tokens, ids } = buildVocabulary(model, added, fail);
    const special = new Set(added.filter((t) => t.special).map((t) => t.id));

    // A decoder that cannot decode would only fail inside generation, token by token.
    const decoderProblem = checkDecoderConfig(json['decoder']);
    if (decoderProblem !== null) throw fail(decoderProblem);

    const [tokenizers, jinja] = await loadModules();
    let port: PortTokenizer;
    try {
      // An empty config: the port would otherwise apply transformers-only settings from
      // tokenizer_config.json (remove_space, lowercasing, clean-up), which Rust does not.
      port = new tokenizers.Tokenizer(adaptForPort(json), {});
    } catch (error) {
      throw fail(`cannot be loaded (${(error as Error).message})`);
    }
    const portDecoder = port.decoder;
    const decode = createDecoder(json['decoder']) ?? ((list: string[]) => (portDecoder === null ? list.join(' ') : portDecoder.decode(list)));
    // Parts the port only runs when used (post-processor, pre-tokenizer, decoder) are tried now,
    // so a broken tokenizer.json fails the load, not a later request.
    try {
      port.encode(TRIAL_TEXT, { add_special_tokens: true });
    } catch (error) {
      throw fail(`cannot encode text (${(error as Error).message})`);
    }
    try {
      decode(tokens.slice(0, 256).filter((t): t is string => t !== undefined));
    } catch (error) {
      throw fail(`cannot decode tokens (${(error as Error).message})`);
    }

    const configFail = (field: string, detail: string): ModelFormatError =>
      new ModelFormatError(`${path.basename(configFile)}: ${field} ${detail}`, configFile);
    // Generation depends on bos and eos, so they must exist. transformers adds a missing pad or
    // unk token to the vocabulary on load; we only need their ids when they exist.
    const specialToken = (field: string, required: boolean): { text: string | null; id: number | null } => {
      const text = specialTokenText(config[field], field, configFail);
      if (text === null) return { text, id: null };
      const id = ids.get(text) ?? null;
      if (id === null && required) throw configFail(field, `${describeValue(text)} is not a token of ${path.basename(tokenizerFile)}`);
      return { text, id };
    };
    const specialTokens = {
      bos: specialToken('bos_token', true),
      eos: specialToken('eos_token', true),
      pad: specialToken('pad_token', false),
      unk: specialToken('unk_token', false),
    };

    const templateFile = source.chatTemplate === undefined ? configFile : (source.chatTemplateFile ?? 'chat_template.jinja');
    const templateFail = (field: string, detail: string): ModelFormatError => new ModelFormatError(`${path.basename(templateFile)}: ${field} ${detail}`, templateFile);
    const templates = readChatTemplates(source.chatTemplate ?? config['chat_template'], jinja, templateFile, templateFail);
    return new Tokenizer({ port, tokens, ids, special, decode, templates, specialTokens, file: tokenizerFile });
  }

  /** Token ids of `text`. */
  encode(text: string, options?: EncodeOptions | null): number[] {
    if (typeof text !== 'string') throw new InvalidArgumentError(`text must be a string, got ${describeValue(text)}`, 'text');
    const { addSpecialTokens = true } = checkOptions(options, ENCODE_OPTIONS);
    let ids: unknown[];
    try {
      ({ ids } = this.#port.encode(text, { add_special_tokens: addSpecialTokens }));
    } catch (error) {
      throw this.#failure('encode', error);
    }
    // The port maps a token string it cannot find to unk_token's id, which is undefined when the
    // model has none; an id array must hold ids only.
    return (ids as (number | undefined)[]).filter((id): id is number => typeof id === 'number');
  }

  /**
   * Text of `ids`. Ids with no token (e.g. the padding rows of an embedding larger than the
   * vocabulary) decode to nothing, as in the Rust library.
   */
  decode(ids: readonly number[], options?: DecodeOptions | null): string {
    const tokens = this.#tokensOf(ids, checkOptions(options, DECODE_OPTIONS).skipSpecialTokens ?? false);
    try {
      return this.#decode(tokens);
    } catch (error) {
      throw this.#failure('decode', error);
    }
  }

  // The port's errors are plain Errors; what fails in it is tokenizer.json's doing.
  #failure(what: string, error: unknown): KvfocusError {
    if (error instanceof KvfocusError) return error;
    return new ModelFormatError(`${path.basename(this.#file)}: cannot ${what} (${(error as Error)?.message ?? String(error)})`, this.#file);
  }

  /** Decodes token by token for streaming; see StreamDecoder. */
  createStreamDecoder(options?: DecodeOptions | null): StreamDecoder {
    return new StreamDecoder(this, checkOptions(options, DECODE_OPTIONS));
  }

  idToToken(id: number): string | undefined {
    return Number.isSafeInteger(id) && id >= 0 ? this.#tokens[id] : undefined;
  }

  tokenToId(token: string): number | undefined {
    return this.#ids.get(token);
  }

  isSpecial(id: number): boolean {
    return this.#special.has(id);
  }

  /** True when tokenizer_config.json (or chat_template.jinja) provides a chat template. */
  get hasChatTemplate(): boolean {
    return this.#templates.size > 0;
  }

  /**
   * Renders `messages` with the model's chat template, as transformers' apply_chat_template with
   * tokenize=False. The result already contains the special tokens the template writes (BOS
   * included, for Llama), so encode it with { addSpecialTokens: false }, as transformers does.
   */
  applyChatTemplate(messages: readonly ChatMessage[], chatOptions?: ChatTemplateOptions | null): string {
    const options = checkOptions(chatOptions, CHAT_TEMPLATE_OPTIONS);
    if (!Array.isArray(messages)) throw new InvalidArgumentError(`messages must be an array, got ${describeValue(messages)}`, 'messages');
    messages.forEach((message: unknown, i) => {
      if (!isJsonObject(message) || typeof message['role'] !== 'string') {
        throw new InvalidArgumentError(`messages[${i}] must be an object with a string role, got ${describeValue(message)}`, 'messages');
      }
    });
    if (this.#templates.size === 0) throw new UnsupportedError('this tokenizer has no chat template (tokenizer_config.json has no chat_template)');
    // As transformers: a single template needs no name; of several, "default" unless named.
    const only = this.#templates.size === 1 ? [...this.#templates.keys()][0] : undefined;
    const name = options.templateName ?? only ?? 'default';
    const template = this.#templates.get(name);
    if (template === undefined) {
      throw new InvalidArgumentError(`no chat template named ${describeValue(name)}; available: ${[...this.#templates.keys()].join(', ')}`, 'templateName');
    }
    // Bounded in time and memory (chat-template.ts): the template comes with the checkpoint.
    return template.render({
      ...this.#specialTokenStrings,
      ...options.variables,
      messages,
      // null, not undefined: transformers passes None, and templates test `tools is not none`.
      tools: options.tools ?? null,
      documents: options.documents ?? null,
      add_generation_prompt: options.addGenerationPrompt ?? false,
    });
  }

  /** Same as applyChatTemplate followed by encode(..., { addSpecialTokens: false }). */
  encodeChat(messages: readonly ChatMessage[], options?: ChatTemplateOptions | null): number[] {
    return this.encode(this.applyChatTemplate(messages, options), { addSpecialTokens: false });
  }

  #tokensOf(ids: readonly number[], skipSpecial: boolean): string[] {
    const tokens: string[] = [];
    if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) throw new InvalidArgumentError(`ids must be an array of token ids, got ${describeValue(ids)}`, 'ids');
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      // String(): describeValue goes through JSON, which writes NaN and Infinity as null.
      if (!Number.isSafeInteger(id)) throw new InvalidArgumentError(`ids[${i}]: expected an integer token id but received ${typeof id === 'number' ? String(id) : describeValue(id)}`, 'ids');
      if (skipSpecial && this.#special.has(id)) continue;
      const token = id >= 0 ? this.#tokens[id] : undefined;
      if (token !== undefined) tokens.push(token);
    }
    return tokens;
  }
}

/**
 * Turns a stream of token ids into a stream of text pieces whose concatenation equals
 * decode(all ids). A token that ends inside a multi-byte character (byte-level BPE, byte
 * fallback) yields '' until the character is complete. When the ids spell invalid UTF-8 through
 * byte-fallback tokens, only the placement of U+FFFD may differ from decode(): Rust's ByteFallback
 * turns a whole byte run into U+FFFDs when any byte of it is invalid, after its start was shown.
 *
 * Method (as in text-generation-inference and Rust tokenizers' DecodeStream): decode a window
 * that starts a few tokens back, at `prefixOffset`, with and without the new tokens; the new
 * text is what the longer decode adds. Decoding from a token boundary rather than only the new
 * token keeps decoders that look at neighbours (leading-space stripping, Metaspace) right.
 */
export class StreamDecoder {
  readonly #tokenizer: Tokenizer;
  readonly #options: DecodeOptions;
  readonly #ids: number[] = [];
  #prefixOffset = 0;
  #readOffset = 0;

  constructor(tokenizer: Tokenizer, options: DecodeOptions = {}) {
    this.#tokenizer = tokenizer;
    this.#options = options;
  }

  /** Adds one token; returns the text it completes ('' while a character is still partial). */
  push(id: number): string {
    this.#ids.push(id);
    const prefix = this.#tokenizer.decode(this.#ids.slice(this.#prefixOffset, this.#readOffset), this.#options);
    const text = this.#tokenizer.decode(this.#ids.slice(this.#prefixOffset), this.#options);
    if (text.length <= prefix.length || text.endsWith('\uFFFD')) return '';
    this.#prefixOffset = this.#readOffset;
    this.#readOffset = this.#ids.length;
    return text.slice(prefix.length);
  }

  /** Returns whatever is held back at the end of the stream (incomplete bytes as U+FFFD). */
  flush(): string {
    const prefix = this.#tokenizer.decode(this.#ids.slice(this.#prefixOffset, this.#readOffset), this.#options);
    const text = this.#tokenizer.decode(this.#ids.slice(this.#prefixOffset), this.#options);
    this.#prefixOffset = this.#readOffset = this.#ids.length;
    return text.length > prefix.length ? text.slice(prefix.length) : '';
  }
}

function readAddedTokens(json: JsonObject, fail: (detail: string) => ModelFormatError): AddedTokenEntry[] {
  const list = json['added_tokens'] ?? [];
  if (!Array.isArray(list)) throw fail(`added_tokens must be a list, got ${describeValue(list)}`);
  return list.map((entry: unknown, i) => {
    if (!isJsonObject(entry) || typeof entry['content'] !== 'string' || !Number.isSafeInteger(entry['id']) || (entry['id'] as number) < 0) {
      throw fail(`added_tokens[${i}] must have a string content and a non-negative integer id, got ${describeValue(entry)}`);
    }
    if (entry['single_word'] === true) {
      throw new UnsupportedError(`tokenizer.json: added token ${describeValue(entry['content'])} has single_word: true, which kvfocus's tokenizer does not implement`);
    }
    return { id: entry['id'] as number, content: entry['content'], special: entry['special'] === true };
  });
}

function buildVocabulary(
  model: JsonObject,
  added: readonly AddedTokenEntry[],
  fail: (detail: string) => ModelFormatError,
): { tokens: (string | undefined)[]; ids: Map<string, number> } {
  const vocab = model['vocab'];
  const ids = new Map<string, number>();
  if (isJsonObject(vocab)) {
    // BPE, WordPiece, WordLevel: token -> id.
    for (const [token, id] of Object.entries(vocab)) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) throw fail(`model.vocab[${describeValue(token)}] must be a non-negative integer id, got ${describeValue(id)}`);
      ids.set(token, id);
    }
  } else if (Array.isArray(vocab)) {
    // Unigram: [token, score] by id.
    vocab.forEach((entry: unknown, id) => {
      if (!Array.isArray(entry) || typeof entry[0] !== 'string') throw fail(`model.vocab[${id}] must be [token, score], got ${describeValue(entry)}`);
      ids.set(entry[0], id);
    });
  } else {
    throw fail(`model.vocab must be an object or a list, got ${describeValue(vocab)}`);
  }
  for (const token of added) ids.set(token.content, token.id);
  const tokens: (string | undefined)[] = [];
  for (const [token, id] of ids) tokens[id] = token;
  // Added tokens win where they share an id with the model vocabulary, as in Rust.
  for (const token of added) tokens[token.id] = token.content;
  return { tokens, ids };
}

/** tokenizer.json with the pre-tokenizer rewrites described at the top of this file. */
function adaptForPort(json: JsonObject): JsonObject {
  const rewrite = (pre: unknown): unknown => {
    if (!isJsonObject(pre)) return pre;
    if (pre['type'] === 'Sequence' && Array.isArray(pre['pretokenizers'])) {
      return { ...pre, pretokenizers: pre['pretokenizers'].map(rewrite) };
    }
    if (pre['type'] === 'ByteLevel' && pre['use_regex'] !== false && pre['add_prefix_space'] !== true) {
      return {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: GPT2_PRETOKENIZER_REGEX }, behavior: 'Isolated', invert: false },
          { ...pre, use_regex: false },
        ],
      };
    }
    return pre;
  };
  return { ...json, pre_tokenizer: rewrite(json['pre_tokenizer']) };
}

/** bos_token etc. are a string, an AddedToken object ({ content, ... }) or null. */
function specialTokenText(value: unknown, field: string, fail: (field: string, detail: string) => ModelFormatError): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (isJsonObject(value) && typeof value['content'] === 'string') return value['content'];
  throw fail(field, `must be a token string or an object with content, got ${describeValue(value)}`);
}

function readChatTemplates(
  value: unknown,
  jinja: JinjaModule,
  file: string,
  fail: (field: string, detail: string) => ModelFormatError,
): Map<string, ChatTemplate> {
  const templates = new Map<string, ChatTemplate>();
  if (value === undefined || value === null) return templates;
  const compile = (name: string, source: unknown, field: string): void => {
    if (typeof source !== 'string') throw fail(field, `must be a template string, got ${describeValue(source)}`);
    try {
      templates.set(name, new ChatTemplate(new jinja.Template(source), file, jinja));
    } catch (error) {
      throw fail(field, `does not parse as a Jinja template (${(error as Error).message})`);
    }
  };
  if (typeof value === 'string') {
    compile('default', value, 'chat_template');
  } else if (Array.isArray(value)) {
    // Several named templates: [{ name: "default", template: "..." }, { name: "tool_use", ... }].
    value.forEach((entry: unknown, i) => {
      if (!isJsonObject(entry) || typeof entry['name'] !== 'string') throw fail(`chat_template[${i}]`, `must be { name, template }, got ${describeValue(entry)}`);
      compile(entry['name'], entry['template'], `chat_template[${i}].template`);
    });
  } else {
    throw fail('chat_template', `must be a string or a list of named templates, got ${describeValue(value)}`);
  }
  return templates;
}
