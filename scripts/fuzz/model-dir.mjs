#!/usr/bin/env node
// Fuzzes loadModel() with hostile model directories. Each case copies a valid directory
// (models/ by default), applies one seeded mutation (JSON fields and nesting, safetensors
// headers, tokenizer and chat template content, special files, links), then loads it and
// generates a few tokens in a child process (load-child.mjs) under a timeout, a V8 heap limit and
// ulimits. Acceptable ends: a clean load or a typed kvfocus error. Anything else is a finding: a
// crash, a signal, a timeout, an untyped error, an unhandled rejection, the memory limit, a file
// outside the directory read (a canary's text in a message or a rendered template), or a case
// that must load (an HF-cache layout) or must be refused (a link outside) ending otherwise.
//
//   node scripts/fuzz/model-dir.mjs --seed 1 --cases 150      # a run
//   node scripts/fuzz/model-dir.mjs --seed 1 --case 17 --keep # replay case 17, keep its folder
//
// Cases depend only on (seed, index), so a finding printed by one run replays with --case.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const CHILD = path.join(HERE, 'load-child.mjs');

// --- seeded choices ------------------------------------------------------------------------------

/** mulberry32: a small, fast 32-bit generator; the same seed gives the same cases everywhere. */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    pick: (list) => list[Math.floor(next() * list.length)],
  };
}

const JSON_FILES = ['config.json', 'tokenizer_config.json', 'generation_config.json', 'tokenizer.json'];
const ALL_FILES = [...JSON_FILES, 'model.safetensors', 'chat_template.jinja'];

const HOSTILE_VALUES = [
  null, true, false, 0, -1, 1, 2, 3, 0.5, -0.0, 1e6, 2 ** 31, 2 ** 32, 2 ** 53, 1e308, -1e308, '', 'x', '1', 'silu',
  'LlamaForCausalLM', [], [null], [1, 2, 3], [[]], {}, { type: null }, { a: { b: { c: null } } }, 'x'.repeat(10_000),
];

// Large numbers where they size things: the layers, the vocabulary, the widths.
const SIZE_FIELDS = ['num_hidden_layers', 'vocab_size', 'hidden_size', 'intermediate_size', 'num_attention_heads', 'num_key_value_heads', 'head_dim', 'max_position_embeddings'];
const SIZE_VALUES = [0, -1, 1, 3, 1e6, 2 ** 31, 2 ** 32, 2 ** 53, 1e300, 1.5];

const TEMPLATES = [
  '{% for x in range(10**9) %}{{ x }}{% endfor %}',
  '{% for x in range(10**7) %}{% endfor %}',
  '{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}',
  "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
  '{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}',
  '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}',
  "{{ 'a\\nb\\nc'|indent(10**8) }}",
  "{{ messages|tojson(indent=10**8) }}",
  "{{ raise_exception('no system role') }}",
  '{% for %}',
  '{{ messages[0].content }}',
  "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
  '{{ bos_token }}{% for m in messages %}{{ m.content|upper }}{% endfor %}',
  '{' .repeat(5000),
];

const DECODERS = [
  { type: 'Sequence', decoders: [null] },
  { type: 'Sequence', decoders: [{ type: 'ByteLevel' }, null] },
  { type: 'Sequence', decoders: 'ByteLevel' },
  { type: 'Sequence' },
  { type: 'Nope' },
  { type: null },
  [],
  'ByteLevel',
  { type: 'Replace', pattern: { Regex: '(' }, content: '' },
  { type: 'Replace', pattern: { String: '' }, content: 'x' },
  { type: 'Strip', content: 'ab', start: 1e9, stop: -1 },
  { type: 'Metaspace', replacement: null },
  { type: 'WordPiece', prefix: null },
  { type: 'ByteFallback' },
  { type: 'Fuse' },
];

const POST_PROCESSORS = [
  { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<zz>', type_id: 0 } }], pair: [], special_tokens: {} },
  { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }], pair: [], special_tokens: { '<s>': { id: '<s>' } } },
  { type: 'TemplateProcessing', single: null, pair: null, special_tokens: null },
  { type: 'TemplateProcessing', single: [{ Sequence: { id: 'C', type_id: 0 } }], pair: [], special_tokens: {} },
  { type: 'BertProcessing', sep: null, cls: null },
  { type: 'RobertaProcessing' },
  { type: 'Sequence', processors: [null] },
  { type: 'Nope' },
  null,
];

const PRE_TOKENIZERS = [
  { type: 'Split', pattern: { Regex: '(' }, behavior: 'Isolated', invert: false },
  { type: 'Split', pattern: null, behavior: 'Isolated' },
  { type: 'Sequence', pretokenizers: [null] },
  { type: 'Sequence', pretokenizers: 'x' },
  { type: 'Metaspace', replacement: '' },
  { type: 'Nope' },
  null,
];

const NORMALIZERS = [{ type: 'Sequence', normalizers: [null] }, { type: 'Replace', pattern: { Regex: '[' }, content: '' }, { type: 'Nope' }, { type: 'NFKC' }, null];

const MODEL_TYPES = ['BPE', 'Unigram', 'WordPiece', 'WordLevel', 'Nope', null];

const SPECIAL_KINDS = ['fifo', 'dev-zero', 'dev-null', 'directory', 'empty', 'dangling-link', 'link-loop', 'link-outside', 'link-proc-environ', 'link-outside-copy', 'link-inside'];

function nested(depth) {
  return `${'['.repeat(depth)}${']'.repeat(depth)}`;
}

/** A JSON value's paths (arrays and objects, a few levels down), skipping vocab and merges,
 * which hold thousands of entries and say little more one entry at a time. */
function jsonPaths(value, prefix = [], depth = 0, out = []) {
  if (depth > 3 || value === null || typeof value !== 'object') return out;
  const keys = Array.isArray(value) ? value.slice(0, 4).map((_, i) => i) : Object.keys(value);
  for (const key of keys) {
    out.push([...prefix, key]);
    if (key !== 'vocab' && key !== 'merges') jsonPaths(value[key], [...prefix, key], depth + 1, out);
  }
  return out;
}

function setPath(root, keys, value) {
  let node = root;
  for (const key of keys.slice(0, -1)) node = node[key];
  const last = keys.at(-1);
  if (value === undefined) {
    if (Array.isArray(node)) node.splice(last, 1);
    else delete node[last];
  } else {
    node[last] = value;
  }
}

/** The mutation of case `index` of `seed`: plain data, printed with every finding. */
export function makeCase(seed, index, baseDir = path.join(ROOT, 'models')) {
  const r = rng((seed * 1_000_003 + index * 7919) >>> 0);
  const kinds = ['json-value', 'json-delete', 'json-nesting', 'json-bytes', 'config-size', 'safetensors', 'decoder', 'post-processor', 'pre-tokenizer', 'normalizer', 'tokenizer-model', 'chat-template', 'special-file', 'hf-cache'];
  const kind = r.pick(kinds);
  switch (kind) {
    case 'json-value':
    case 'json-delete':
    case 'json-nesting': {
      const file = r.pick(JSON_FILES);
      const json = JSON.parse(readFileSync(path.join(baseDir, file), 'utf8'));
      const paths = jsonPaths(json);
      const at = paths.length > 0 ? r.pick(paths) : [];
      if (kind === 'json-delete') return { kind, file, path: at };
      if (kind === 'json-nesting') return { kind, file, path: at, depth: r.pick([10, 65, 1000, 100_000]) };
      return { kind, file, path: at, value: r.pick(HOSTILE_VALUES) };
    }
    case 'json-bytes': {
      const file = r.pick(JSON_FILES);
      const how = r.pick(['truncate', 'flip', 'bom', 'nul', 'invalid-utf8']);
      return { kind, file, how, at: r.next(), count: 1 + r.int(8), noise: r.int(2 ** 31) };
    }
    case 'config-size':
      return { kind, file: 'config.json', field: r.pick(SIZE_FIELDS), value: r.pick(SIZE_VALUES) };
    case 'safetensors': {
      const how = r.pick(['length', 'truncate', 'header-flip', 'dtype', 'shape', 'offsets', 'nesting', 'not-json', 'empty-header', 'many-tensors']);
      return { kind, file: 'model.safetensors', how, at: r.next(), value: r.pick(HOSTILE_VALUES), length: r.pick([0, 1, 7, 2 ** 31, 2 ** 53, 99_999_999, 100_000_001]), noise: r.int(2 ** 31) };
    }
    case 'decoder':
      return { kind, file: 'tokenizer.json', value: r.pick(DECODERS) };
    case 'post-processor':
      return { kind, file: 'tokenizer.json', value: r.pick(POST_PROCESSORS) };
    case 'pre-tokenizer':
      return { kind, file: 'tokenizer.json', value: r.pick(PRE_TOKENIZERS) };
    case 'normalizer':
      return { kind, file: 'tokenizer.json', value: r.pick(NORMALIZERS) };
    case 'tokenizer-model':
      return { kind, file: 'tokenizer.json', value: r.pick(MODEL_TYPES) };
    case 'chat-template':
      return { kind, file: r.pick(['tokenizer_config.json', 'chat_template.jinja']), template: r.pick(TEMPLATES) };
    case 'special-file': {
      const special = r.pick(SPECIAL_KINDS);
      // Must be refused unless it stays inside, or an optional file is simply empty of meaning.
      return { kind, file: r.pick(ALL_FILES), special };
    }
    case 'hf-cache':
      return { kind, variant: r.pick(['valid', 'valid', 'other-repo', 'blob-links-outside', 'absolute-blob-link']), file: r.pick(ALL_FILES.filter((f) => f !== 'chat_template.jinja')) };
  }
  throw new Error(`unknown kind ${kind}`);
}

/** What the case must end in: 'loaded', 'typed', or 'either' (a clean load or a typed error). */
function expectedOutcome(c) {
  if (c.kind === 'hf-cache') return c.variant === 'valid' || c.variant === 'absolute-blob-link' ? 'loaded' : 'typed';
  if (c.kind === 'special-file') {
    if (c.special === 'link-inside') return 'loaded';
    // A missing optional file is fine; the others are in the way of a required file, or are
    // links/devices that must be refused wherever they stand.
    if (['fifo', 'dev-zero', 'dev-null', 'directory', 'dangling-link', 'link-loop', 'link-outside', 'link-proc-environ', 'link-outside-copy'].includes(c.special)) return 'typed';
  }
  return 'either';
}

// --- building a case's directory -----------------------------------------------------------------

function writeJson(file, value) {
  writeFileSync(file, JSON.stringify(value));
}

function mutateJson(file, fn) {
  const json = JSON.parse(readFileSync(file, 'utf8'));
  const out = fn(json);
  writeJson(file, out === undefined ? json : out);
}

function mutateSafetensors(file, c) {
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const headerText = bytes.subarray(8, 8 + n).toString('utf8');
  const data = bytes.subarray(8 + n);
  const rebuild = (text) => {
    const header = Buffer.from(text, 'utf8');
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(header.length));
    return Buffer.concat([length, header, data]);
  };
  const header = JSON.parse(headerText);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const name = names[Math.floor(c.at * names.length)];
  switch (c.how) {
    case 'length': {
      const out = Buffer.from(bytes);
      out.writeBigUInt64LE(BigInt(c.length));
      return out;
    }
    case 'truncate':
      return bytes.subarray(0, Math.floor(c.at * bytes.length));
    case 'header-flip': {
      const out = Buffer.from(bytes);
      const r = rng(c.noise);
      for (let i = 0; i < 4; i++) out[8 + r.int(n)] = r.int(256);
      return out;
    }
    case 'dtype':
      header[name].dtype = c.value;
      return rebuild(JSON.stringify(header));
    case 'shape':
      header[name].shape = Array.isArray(c.value) ? c.value : [c.value, 1];
      return rebuild(JSON.stringify(header));
    case 'offsets':
      header[name].data_offsets = Array.isArray(c.value) ? c.value : [0, c.value];
      return rebuild(JSON.stringify(header));
    case 'nesting':
      header[name] = 'NEST';
      return rebuild(JSON.stringify(header).replace('"NEST"', nested(100_000)));
    case 'not-json':
      return rebuild(`{"a": ${headerText}`);
    case 'empty-header':
      return rebuild('{}');
    case 'many-tensors': {
      for (let i = 0; i < 50_000; i++) header[`model.layers.${i}.x`] = { dtype: 'F32', shape: [0], data_offsets: [0, 0] };
      return rebuild(JSON.stringify(header));
    }
  }
  throw new Error(`unknown safetensors mutation ${c.how}`);
}

function mutateBytes(file, c) {
  const bytes = readFileSync(file);
  const at = Math.floor(c.at * bytes.length);
  const r = rng(c.noise);
  switch (c.how) {
    case 'truncate':
      return writeFileSync(file, bytes.subarray(0, at));
    case 'flip': {
      const out = Buffer.from(bytes);
      for (let i = 0; i < c.count; i++) out[r.int(out.length)] = r.int(256);
      return writeFileSync(file, out);
    }
    case 'bom':
      return writeFileSync(file, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), bytes]));
    case 'nul':
      return writeFileSync(file, Buffer.concat([bytes.subarray(0, at), Buffer.from([0]), bytes.subarray(at)]));
    case 'invalid-utf8':
      return writeFileSync(file, Buffer.concat([bytes.subarray(0, at), Buffer.from([0xc3, 0x28]), bytes.subarray(at)]));
  }
}

function replaceWithSpecial(file, special, outside) {
  rmSync(file, { force: true, recursive: true });
  switch (special) {
    case 'fifo':
      return execFileSync('mkfifo', [file]);
    case 'dev-zero':
      return symlinkSync('/dev/zero', file);
    case 'dev-null':
      return symlinkSync('/dev/null', file);
    case 'directory':
      return mkdirSync(file);
    case 'empty':
      return writeFileSync(file, '');
    case 'dangling-link':
      return symlinkSync(path.join(path.dirname(file), 'no-such-file'), file);
    case 'link-loop':
      symlinkSync(`${file}.b`, file);
      return symlinkSync(file, `${file}.b`);
    case 'link-outside':
      return symlinkSync(outside.secret, file);
    case 'link-proc-environ':
      return symlinkSync('/proc/self/environ', file);
    case 'link-outside-copy':
      return symlinkSync(path.join(outside.copy, path.basename(file)), file);
    case 'link-inside': {
      const inner = path.join(path.dirname(file), 'inner');
      mkdirSync(inner, { recursive: true });
      const target = path.join(inner, path.basename(file));
      writeFileSync(target, outside.original(path.basename(file)));
      return symlinkSync(path.join('inner', path.basename(file)), file);
    }
  }
  throw new Error(`unknown special file ${special}`);
}

/** Lays out an HF hub cache: hub/models--org--name/{blobs/<sha256>, snapshots/<rev>/<file> ->
 * ../../blobs/<sha256>}. Returns the snapshot folder. */
function hfCache(work, baseDir, c, outside) {
  const repo = path.join(work, 'hub', 'models--org--name');
  const blobs = path.join(repo, 'blobs');
  const snapshot = path.join(repo, 'snapshots', '0123456789abcdef');
  const other = path.join(work, 'hub', 'models--other--repo', 'blobs');
  mkdirSync(blobs, { recursive: true });
  mkdirSync(snapshot, { recursive: true });
  mkdirSync(other, { recursive: true });
  for (const name of modelFiles(baseDir)) {
    const bytes = readFileSync(path.join(baseDir, name));
    const sha = createHash('sha256').update(bytes).digest('hex');
    const link = path.join(snapshot, name);
    if (name === c.file && c.variant === 'other-repo') {
      writeFileSync(path.join(other, sha), bytes);
      symlinkSync(path.join('..', '..', '..', 'models--other--repo', 'blobs', sha), link);
      continue;
    }
    if (name === c.file && c.variant === 'blob-links-outside') {
      symlinkSync(outside.secret, path.join(blobs, sha));
    } else {
      writeFileSync(path.join(blobs, sha), bytes);
    }
    symlinkSync(c.variant === 'absolute-blob-link' && name === c.file ? path.join(blobs, sha) : path.join('..', '..', 'blobs', sha), link);
  }
  return snapshot;
}

/** The model's own files (models/ also holds models/deep/, another model, which is not copied). */
function modelFiles(dir) {
  return readdirSync(dir).filter((name) => statSync(path.join(dir, name)).isFile());
}

function copyModelFiles(from, to) {
  mkdirSync(to, { recursive: true });
  for (const name of modelFiles(from)) cpSync(path.join(from, name), path.join(to, name));
}

/** Builds the case's model directory under `work`; returns its path. */
export function buildCase(c, work, baseDir = path.join(ROOT, 'models'), canary = 'KVFOCUS-CANARY') {
  const outside = {
    secret: path.join(work, 'outside', 'secret.txt'),
    copy: path.join(work, 'outside', 'copy'),
    original: (name) => (name === 'chat_template.jinja' ? '{{ messages[0].content }}' : readFileSync(path.join(baseDir, name))),
  };
  mkdirSync(outside.copy, { recursive: true });
  // Starts with the canary, so an error that quotes a file's first bytes shows it.
  writeFileSync(outside.secret, `${canary} {"not": "a model file"}\n`);
  copyModelFiles(baseDir, outside.copy);
  if (c.kind === 'hf-cache') return hfCache(work, baseDir, c, outside);

  const dir = path.join(work, 'model');
  copyModelFiles(baseDir, dir);
  const file = path.join(dir, c.file ?? 'config.json');
  switch (c.kind) {
    case 'json-value':
      mutateJson(file, (json) => (c.path.length === 0 ? c.value : setPath(json, c.path, c.value)));
      break;
    case 'json-delete':
      mutateJson(file, (json) => (c.path.length === 0 ? {} : setPath(json, c.path, undefined)));
      break;
    case 'json-nesting': {
      const json = JSON.parse(readFileSync(file, 'utf8'));
      if (c.path.length === 0) writeFileSync(file, nested(c.depth));
      else {
        setPath(json, c.path, 'NEST');
        writeFileSync(file, JSON.stringify(json).replace('"NEST"', nested(c.depth)));
      }
      break;
    }
    case 'json-bytes':
      mutateBytes(file, c);
      break;
    case 'config-size':
      mutateJson(file, (json) => void (json[c.field] = c.value));
      break;
    case 'safetensors':
      writeFileSync(file, mutateSafetensors(file, c));
      break;
    case 'decoder':
      mutateJson(file, (json) => void (json.decoder = c.value));
      break;
    case 'post-processor':
      mutateJson(file, (json) => void (json.post_processor = c.value));
      break;
    case 'pre-tokenizer':
      mutateJson(file, (json) => void (json.pre_tokenizer = c.value));
      break;
    case 'normalizer':
      mutateJson(file, (json) => void (json.normalizer = c.value));
      break;
    case 'tokenizer-model':
      mutateJson(file, (json) => void (json.model.type = c.value));
      break;
    case 'chat-template':
      if (c.file === 'chat_template.jinja') writeFileSync(file, c.template);
      else mutateJson(file, (json) => void (json.chat_template = c.template));
      break;
    case 'special-file':
      replaceWithSpecial(file, c.special, outside);
      break;
    default:
      throw new Error(`unknown case kind ${c.kind}`);
  }
  return dir;
}

// --- running a case ------------------------------------------------------------------------------

/**
 * Runs case `c` in a child process. Returns { ok, outcome, detail, ms }: ok is false for a
 * finding. Limits: `timeoutMs` wall clock (SIGKILL), `heapMb` V8 heap, and ulimits on CPU time
 * and address space.
 */
export async function runCase(c, options = {}) {
  const { timeoutMs = 30_000, heapMb = 384, keep = false, baseDir = path.join(ROOT, 'models') } = options;
  const work = mkdtempSync(path.join(tmpdir(), 'kvfocus-fuzz-'));
  const canary = `KVFOCUS-CANARY-${createHash('sha256').update(work).digest('hex').slice(0, 12)}`;
  const started = performance.now();
  try {
    let dir;
    try {
      dir = buildCase(c, work, baseDir, canary);
    } catch (error) {
      return { ok: false, outcome: 'harness', detail: `building the case failed: ${error.message}`, ms: 0 };
    }
    const cpuSeconds = Math.ceil(timeoutMs / 1000) + 5;
    // ulimit -v: 8 GiB of address space leaves room for V8's reservations but stops a runaway.
    const script = `ulimit -t ${cpuSeconds}; ulimit -v ${8 * 1024 * 1024}; exec "$@"`;
    const child = spawn('sh', ['-c', script, 'sh', process.execPath, `--max-old-space-size=${heapMb}`, CHILD, dir], {
      cwd: ROOT,
      env: { ...process.env, KVFOCUS_FUZZ_CANARY: canary, KVFOCUS_THREADS: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
    const [code, signal] = await new Promise((resolve) => child.on('close', (code, signal) => resolve([code, signal])));
    const ms = Math.round(performance.now() - started);
    const line = stdout.trim().split('\n').at(-1) ?? '';
    let result;
    try {
      result = JSON.parse(line);
    } catch {
      result = undefined;
    }
    const tail = stderr.trim().split('\n').slice(-3).join(' | ');
    if ((stdout + stderr).includes(canary) && result?.status !== 'leak') {
      return { ok: false, outcome: 'leak', detail: 'output holds the text of a file outside the directory', ms };
    }
    if (signal === 'SIGKILL' && ms >= timeoutMs) return { ok: false, outcome: 'timeout', detail: `killed after ${timeoutMs} ms`, ms };
    if (/heap out of memory|Reached heap limit|Allocation failed/i.test(stderr)) return { ok: false, outcome: 'memory limit', detail: tail, ms };
    if (signal) return { ok: false, outcome: `signal ${signal}`, detail: tail, ms };
    if (result === undefined) return { ok: false, outcome: `crash (exit ${code})`, detail: tail || stdout.slice(-300), ms };
    if (result.status === 'unhandled') return { ok: false, outcome: 'unhandled rejection', detail: `${result.name}: ${result.message}`, ms };
    if (result.status === 'untyped') return { ok: false, outcome: 'untyped error', detail: `${result.stage}: ${result.name}: ${result.message}`, ms };
    if (result.status === 'leak' || result.leak) return { ok: false, outcome: 'leak', detail: result.message, ms };
    const outcome = result.status === 'loaded' ? 'loaded' : 'typed';
    const expected = expectedOutcome(c);
    const detail = result.status === 'loaded' ? 'loaded' : `${result.stage}: ${result.name}: ${result.message}`;
    if (expected !== 'either' && expected !== outcome) {
      return { ok: false, outcome: `expected ${expected === 'loaded' ? 'a clean load' : 'a typed error'}`, detail, ms };
    }
    return { ok: true, outcome, detail, ms };
  } finally {
    if (keep) process.stderr.write(`kept ${work}\n`);
    else rmSync(work, { recursive: true, force: true });
  }
}

/** Runs cases `first`..`first + cases - 1` of `seed`; `jobs` at a time. */
export async function fuzz({ seed = 1, cases = 150, first = 0, jobs = 1, log = () => {}, ...options } = {}) {
  const findings = [];
  const outcomes = {};
  const started = performance.now();
  let next = first;
  const worker = async () => {
    while (next < first + cases) {
      const index = next++;
      const c = makeCase(seed, index, options.baseDir);
      const r = await runCase(c, options);
      outcomes[r.outcome] = (outcomes[r.outcome] ?? 0) + 1;
      if (!r.ok) findings.push({ index, case: c, ...r });
      log(index, c, r);
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  const seconds = (performance.now() - started) / 1000;
  return { seed, cases, findings, outcomes, seconds, casesPerSecond: cases / seconds };
}

function parseArgs(argv) {
  const args = { seed: 1, cases: 150, jobs: 1, timeoutMs: 30_000, keep: false, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer`);
      return v;
    };
    if (a === '--seed') args.seed = value();
    else if (a === '--cases') args.cases = value();
    else if (a === '--case') args.case = value();
    else if (a === '--jobs') args.jobs = Math.max(1, value());
    else if (a === '--timeout') args.timeoutMs = value();
    else if (a === '--keep') args.keep = true;
    else if (a === '--verbose') args.verbose = true;
    else throw new Error(`unknown argument ${a}; usage: model-dir.mjs [--seed N] [--cases N | --case I] [--jobs N] [--timeout MS] [--keep] [--verbose]`);
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const replay = args.case !== undefined;
  const report = await fuzz({
    seed: args.seed,
    cases: replay ? 1 : args.cases,
    first: replay ? args.case : 0,
    jobs: args.jobs,
    timeoutMs: args.timeoutMs,
    keep: args.keep,
    log: (index, c, r) => {
      if (args.verbose || replay || !r.ok) {
        process.stdout.write(`${r.ok ? 'ok     ' : 'FINDING'} #${index} ${JSON.stringify(c).slice(0, 200)}\n        ${r.outcome}: ${String(r.detail).slice(0, 300)} (${r.ms} ms)\n`);
      }
    },
  });
  const counts = Object.entries(report.outcomes).map(([k, v]) => `${k} ${v}`).join(', ');
  process.stdout.write(
    `model-dir fuzz: seed ${report.seed}, ${report.cases} cases in ${report.seconds.toFixed(1)} s (${report.casesPerSecond.toFixed(2)} cases/s): ${counts}; ${report.findings.length} finding(s)\n`,
  );
  for (const f of report.findings) {
    process.stdout.write(`  replay: node scripts/fuzz/model-dir.mjs --seed ${report.seed} --case ${f.index}  # ${f.outcome}\n`);
  }
  process.exitCode = report.findings.length > 0 ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((error) => {
    process.stderr.write(`${error.stack ?? error}\n`);
    process.exitCode = 2;
  });
}
