// A model directory is input from outside. Each hostile directory here (found by
// scripts/fuzz/model-dir.mjs) ends in a typed error or a normal load, in bounded time and memory,
// reads nothing outside the directory but an HF cache's blobs, and no message echoes another
// file's contents. Cases that would take the test process down if they regressed (V8 aborts,
// unbounded memory) run in a child process through the fuzz harness (test/fuzz.test.ts).
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { KvfocusError, loadModel, ModelFormatError } from '../../lib/index.js';
import type { NativeModel, NativeSequence } from '../../lib/binding.js';
import { Scheduler, SequenceState } from '../../lib/llm/scheduler.js';
import { readSafetensorsHeader, Tokenizer, type StreamDecoder } from '../../lib/model/index.js';
import { makeTempDir } from './helpers.js';

const MODELS = path.join(__dirname, '..', '..', 'models');
const CANARY = 'KVFOCUS-CANARY-not-a-model-file';

let cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A copy of the shipped model at <tmp>/model, and a secret file at <tmp>/outside/secret.txt. */
function copyModel(): { dir: string; secret: string; root: string } {
  const { dir: root, cleanup } = makeTempDir('kvfocus-hostile-');
  cleanups.push(cleanup);
  const dir = path.join(root, 'model');
  // The model's own files: models/ also holds another model in models/deep/.
  cpSync(MODELS, dir, { recursive: true, filter: (src) => src === MODELS || statSync(src).isFile() });
  mkdirSync(path.join(root, 'outside'));
  const secret = path.join(root, 'outside', 'secret.txt');
  writeFileSync(secret, `${CANARY} {"a": 1}\n`);
  return { dir, secret, root };
}

function editJson(file: string, edit: (json: Record<string, unknown>) => void): void {
  const json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(json);
  writeFileSync(file, JSON.stringify(json));
}

async function loadFailure(dir: string): Promise<ModelFormatError> {
  let caught: unknown;
  try {
    (await loadModel(dir, { device: 'cpu' })).dispose();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(ModelFormatError);
  expect((caught as Error).message).not.toContain(CANARY);
  return caught as ModelFormatError;
}

describe('special files are refused, never read or waited on', () => {
  it('config.json as a FIFO fails at once instead of hanging loadModel', async () => {
    const { dir } = copyModel();
    rmSync(path.join(dir, 'config.json'));
    execFileSync('mkfifo', [path.join(dir, 'config.json')]);
    const error = await loadFailure(dir);
    expect(error.file).toBe(path.join(dir, 'config.json'));
    expect(error.message).toMatch(/^config\.json: is a FIFO; model files must be regular files$/);
  }, 10_000);

  it('tokenizer.json linked to /dev/zero is refused, not read without end', async () => {
    const { dir } = copyModel();
    rmSync(path.join(dir, 'tokenizer.json'));
    symlinkSync('/dev/zero', path.join(dir, 'tokenizer.json'));
    const error = await loadFailure(dir);
    expect(error.message).toMatch(/^tokenizer\.json: resolves outside the model directory \(to \/dev\/zero\)/);
  }, 10_000);

  it('a directory where generation_config.json belongs is named as such', async () => {
    const { dir } = copyModel();
    rmSync(path.join(dir, 'generation_config.json'));
    mkdirSync(path.join(dir, 'generation_config.json'));
    expect((await loadFailure(dir)).message).toBe('generation_config.json: is a directory; model files must be regular files');
  });

  it('a file over its size limit is refused by name and limit', async () => {
    const { dir } = copyModel();
    writeFileSync(path.join(dir, 'config.json'), `{"pad": "${'x'.repeat(2 * 1024 * 1024)}"}`);
    expect((await loadFailure(dir)).message).toMatch(/^config\.json: is 2097163 bytes, over the 1048576-byte limit for this file$/);
  });
});

describe('links', () => {
  it('config.json linked outside the directory is refused without quoting the target', async () => {
    const { dir, secret } = copyModel();
    rmSync(path.join(dir, 'config.json'));
    symlinkSync(secret, path.join(dir, 'config.json'));
    const error = await loadFailure(dir);
    expect(error.file).toBe(path.join(dir, 'config.json'));
    expect(error.message).toMatch(/^config\.json: resolves outside the model directory/);
  });

  it('chat_template.jinja linked to /proc/self/environ is refused, not rendered into prompts', async () => {
    const { dir } = copyModel();
    symlinkSync('/proc/self/environ', path.join(dir, 'chat_template.jinja'));
    expect((await loadFailure(dir)).message).toMatch(/^chat_template\.jinja: resolves outside the model directory/);
  });

  it('a link loop is refused', async () => {
    const { dir } = copyModel();
    const file = path.join(dir, 'tokenizer_config.json');
    rmSync(file);
    symlinkSync(`${file}.b`, file);
    symlinkSync(file, `${file}.b`);
    expect((await loadFailure(dir)).message).toBe('tokenizer_config.json: is a loop of symbolic links');
  });

  it('links inside the directory are followed', async () => {
    const { dir } = copyModel();
    mkdirSync(path.join(dir, 'inner'));
    cpSync(path.join(dir, 'model.safetensors'), path.join(dir, 'inner', 'weights.safetensors'));
    rmSync(path.join(dir, 'model.safetensors'));
    symlinkSync(path.join('inner', 'weights.safetensors'), path.join(dir, 'model.safetensors'));
    (await loadModel(dir, { device: 'cpu' })).dispose();
  });

  /** hub/models--org--name/{blobs/<name>.blob, snapshots/rev/<name> -> ../../blobs/<name>.blob}. */
  function hfCache(): { snapshot: string; hub: string; secret: string } {
    const { root, secret } = copyModel();
    const hub = path.join(root, 'hub');
    const repo = path.join(hub, 'models--org--name');
    const snapshot = path.join(repo, 'snapshots', 'abc123');
    mkdirSync(path.join(repo, 'blobs'), { recursive: true });
    mkdirSync(snapshot, { recursive: true });
    for (const name of ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) {
      cpSync(path.join(MODELS, name), path.join(repo, 'blobs', `${name}.blob`));
      symlinkSync(path.join('..', '..', 'blobs', `${name}.blob`), path.join(snapshot, name));
    }
    return { snapshot, hub, secret };
  }

  it('an HF cache snapshot, whose files link into ../../blobs, loads', async () => {
    const model = await loadModel(hfCache().snapshot, { device: 'cpu' });
    expect(model.config.numLayers).toBe(2);
    model.dispose();
  });

  it("an HF cache snapshot linking into another repository's blobs is refused", async () => {
    const { snapshot, hub } = hfCache();
    const other = path.join(hub, 'models--other--repo', 'blobs');
    mkdirSync(other, { recursive: true });
    cpSync(path.join(MODELS, 'tokenizer.json'), path.join(other, 'x.blob'));
    rmSync(path.join(snapshot, 'tokenizer.json'));
    symlinkSync(path.join('..', '..', '..', 'models--other--repo', 'blobs', 'x.blob'), path.join(snapshot, 'tokenizer.json'));
    expect((await loadFailure(snapshot)).message).toMatch(/^tokenizer\.json: resolves outside the model directory/);
  });

  it('a blob that is itself a link outside is refused', async () => {
    const { snapshot, secret } = hfCache();
    const blob = path.join(snapshot, '..', '..', 'blobs', 'config.json.blob');
    rmSync(blob);
    symlinkSync(secret, blob);
    expect((await loadFailure(snapshot)).message).toMatch(/^config\.json: resolves outside the model directory/);
  });
});

describe('JSON', () => {
  it('nesting past the depth limit is a typed error, not a RangeError', async () => {
    const { dir } = copyModel();
    const file = path.join(dir, 'config.json');
    writeFileSync(file, readFileSync(file, 'utf8').replace('"attention_bias": false', `"attention_bias": ${'['.repeat(100_000)}${']'.repeat(100_000)}`));
    expect((await loadFailure(dir)).message).toMatch(/^config\.json nests arrays and objects more than 64 deep/);
  });

  it('a read error (EIO) is a ModelFormatError naming the file', async () => {
    const eio = Object.assign(new Error('i/o error'), { code: 'EIO' });
    const handle = { stat: async () => ({ size: 1000 }), read: async () => Promise.reject(eio) } as unknown as FileHandle;
    const caught = await readSafetensorsHeader('/models/model.safetensors', handle).catch((e: unknown) => e);
    expect(caught).toBeInstanceOf(ModelFormatError);
    expect((caught as Error).message).toBe('model.safetensors: cannot be read (EIO)');
  });
});

describe('config counts are checked against the tensors before allocating', () => {
  it('num_hidden_layers: 2**32 is refused by name', async () => {
    const { dir } = copyModel();
    editJson(path.join(dir, 'config.json'), (json) => (json['num_hidden_layers'] = 2 ** 32));
    expect((await loadFailure(dir)).message).toBe('config.json: num_hidden_layers (4294967296) is larger than kvfocus accepts (65536)');
  });

  it('num_hidden_layers: 60000 names the layers the checkpoint holds', async () => {
    const { dir } = copyModel();
    editJson(path.join(dir, 'config.json'), (json) => (json['num_hidden_layers'] = 60_000));
    expect((await loadFailure(dir)).message).toMatch(/does not match config\.json \(LlamaForCausalLM, 60000 layers\): the checkpoint holds tensors of 2 layers$/);
  });
});

describe('tokenizer.json', () => {
  it('a decoder list holding null is refused at load', async () => {
    const { dir } = copyModel();
    editJson(path.join(dir, 'tokenizer.json'), (json) => (json['decoder'] = { type: 'Sequence', decoders: [{ type: 'ByteLevel' }, null] }));
    const error = await loadFailure(dir);
    expect(error.file).toBe(path.join(dir, 'tokenizer.json'));
    expect(error.message).toBe('tokenizer.json: decoder.decoders[1] must be a decoder, got null');
  });

  it('a post-processor that fails on every input is refused at load', async () => {
    const { dir } = copyModel();
    editJson(path.join(dir, 'tokenizer.json'), (json) => (json['post_processor'] = { type: 'Sequence', processors: [null] }));
    expect((await loadFailure(dir)).message).toMatch(/^tokenizer\.json: cannot encode text \(/);
  });
});

describe('an error while decoding inside generation', () => {
  it("rejects the request's result and leaves the scheduler running", async () => {
    const seq = { release: () => {}, length: 0, truncate: () => {} } as unknown as NativeSequence;
    const native = { step: async () => ({ logits: [null], tokens: Int32Array.of(5) }), freePages: () => 1000 } as unknown as NativeModel;
    const scheduler = new Scheduler(native, { prefillChunk: 16, stepTokens: 16, maxSequenceTokens: 64, pageSize: 16, layers: 1, maxQueuedRequests: Infinity });
    const failing = {
      push: () => {
        throw new ModelFormatError('tokenizer.json: cannot decode (broken)', 'tokenizer.json');
      },
      flush: () => '',
    } as unknown as StreamDecoder;
    const working = { push: () => 'x', flush: () => '' } as unknown as StreamDecoder;
    const request = (decoder: StreamDecoder) =>
      scheduler.generate({
        seq: new SequenceState(seq, false),
        input: Int32Array.of(1, 2),
        logits: 'none',
        generation: { sampling: { temperature: 0 } as never, maxTokens: 2, stop: [], stopTokens: new Set(), decoder, signal: undefined },
      });
    const bad = request(failing);
    const good = request(working);
    await expect(bad.result).rejects.toThrow(/tokenizer\.json: cannot decode \(broken\)/);
    await expect(bad.result).rejects.toBeInstanceOf(KvfocusError);
    expect((await good.result).text).toBe('xx');
  }, 10_000);
});

describe('chat templates run within bounds', () => {
  async function tokenizerWith(template: string): Promise<Tokenizer> {
    const tokenizer = JSON.parse(readFileSync(path.join(MODELS, 'tokenizer.json'), 'utf8')) as unknown;
    const tokenizerConfig = JSON.parse(readFileSync(path.join(MODELS, 'tokenizer_config.json'), 'utf8')) as unknown;
    return Tokenizer.fromJSON({ tokenizer, tokenizerConfig, chatTemplate: template, chatTemplateFile: '/m/chat_template.jinja' });
  }
  const messages = [{ role: 'user', content: 'hi' }];

  async function renderFailure(template: string): Promise<ModelFormatError> {
    const tokenizer = await tokenizerWith(template);
    const started = performance.now();
    let caught: unknown;
    try {
      tokenizer.applyChatTemplate(messages);
    } catch (error) {
      caught = error;
    }
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(caught).toBeInstanceOf(ModelFormatError);
    expect((caught as ModelFormatError).file).toBe('/m/chat_template.jinja');
    return caught as ModelFormatError;
  }

  it('nested loops stop at the deadline', async () => {
    const error = await renderFailure('{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}');
    expect(error.message).toMatch(/^chat_template\.jinja: the chat template exceeded its limits: it (ran longer than 2000 ms|evaluated more than)/);
  }, 10_000);

  it('a doubling string stops at the size limit', async () => {
    const error = await renderFailure("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}");
    expect(error.message).toMatch(/it built a string of over \d+ characters$/);
  });

  it('range() past the item limit is refused before it allocates', async () => {
    const error = await renderFailure('{% for x in range(10**9) %}{{ x }}{% endfor %}');
    expect(error.message).toMatch(/it passed 1000000000 to a function or filter \(limit 100000\)$/);
  });

  it('an ordinary template still renders', async () => {
    const tokenizer = await tokenizerWith('{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% for i in range(3) %}{{ i }}{% endfor %}');
    expect(tokenizer.applyChatTemplate(messages)).toBe('<user>hi012');
  });
});
