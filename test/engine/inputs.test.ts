// Input is checked as given, never coerced: token ids, options objects, prompts and paths that
// are wrong are refused with a typed error naming the argument, on the shipped model (CPU).
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AbortError, InvalidArgumentError, loadDefaultModel, loadModel, ops, Tensor, type Model } from '../../lib/index.js';

const MODELS = join(__dirname, '..', '..', 'models');
let model: Model;

beforeAll(async () => {
  model = await loadModel(MODELS, { device: 'cpu' });
});

afterAll(() => {
  model.dispose();
});

/** Runs `fn` and returns what it threw, or what the promise it returned rejected with. */
async function failure(fn: () => unknown): Promise<unknown> {
  try {
    const r = fn();
    if (r && typeof (r as { result?: unknown }).result === 'object') await (r as { result: Promise<unknown> }).result;
    else await r;
  } catch (e) {
    return e;
  }
  throw new Error('expected a failure');
}

async function expectInvalid(fn: () => unknown, argument: string, message: RegExp): Promise<void> {
  const e = await failure(fn);
  expect(e).toBeInstanceOf(InvalidArgumentError);
  expect((e as InvalidArgumentError).argument).toBe(argument);
  expect((e as Error).message).toMatch(message);
}

describe('token ids are refused, never converted to other tokens', () => {
  // Int32Array.from would make these 0, 3, 300, 300 and 0: valid-looking tokens.
  const cases: [string, unknown[], RegExp][] = [
    ['NaN', [1, NaN], /prompt: token at index 1 is number NaN, not an integer token id/],
    ['a fraction', [1, 3.7], /prompt: token at index 1 is number 3\.7, not an integer token id/],
    ['a numeric string', [1, '300'], /prompt: token at index 1 is '300', not an integer token id/],
    ['an id that wraps at 2^32', [1, 2 ** 32 + 300], /prompt: token 4294967596 at index 1 is outside the vocabulary \[0, 1024\)/],
    ['null', [1, null], /prompt: token at index 1 is null, not an integer token id/],
    ['a hole', [1, , 5], /prompt: token at index 1 is undefined, not an integer token id/], // eslint-disable-line no-sparse-arrays
    ['Infinity', [1, Infinity], /prompt: token at index 1 is number Infinity, not an integer token id/],
    ['a negative id', [1, -1], /prompt: token -1 at index 1 is outside the vocabulary/],
    ['an id past the vocabulary', [1, 1024], /prompt: token 1024 at index 1 is outside the vocabulary \[0, 1024\)/],
  ];
  for (const [name, ids, message] of cases) {
    it(`${name}: generate(), logits() and encode() refuse it`, async () => {
      await expectInvalid(() => model.generate(ids as number[], { maxTokens: 1 }), 'prompt', message);
      await expectInvalid(() => model.logits(ids as number[]), 'prompt', message);
      await expectInvalid(() => model.encode(ids as number[]), 'prompt', message);
    });
  }

  it('an Int32Array is checked against the vocabulary too', async () => {
    await expectInvalid(() => model.logits(Int32Array.of(1, 1024)), 'prompt', /token 1024 at index 1 is outside the vocabulary/);
  });

  it('ops: index arrays name the bad entry', () => {
    const table = Tensor.from(new Float32Array(8), { shape: [4, 2] });
    expect(() => ops.embedding(table, [1, 2.5])).toThrow(/embedding: ids\[1\]: expected a 32-bit integer but received number 2\.5/);
    expect(() => ops.embedding(table, [1, 4])).toThrow(/embedding: ids\[1\] = 4 is outside the vocabulary \[0, 4\)/);
    const keys = Tensor.from(new Float32Array(2 * 1 * 4), { shape: [2, 1, 4] });
    expect(() => ops.rope(keys, [0, NaN])).toThrow(/rope: positions\[1\]: expected a 32-bit integer but received number NaN/);
    expect(() => ops.rerotate(keys, [0, 1], [0, 2 ** 31])).toThrow(/rerotate: to\[1\]: expected a 32-bit integer but received number 2147483648/);
  });

  it('decode() names the index of an id that is not an integer', () => {
    expect(() => model.tokenizer.decode([1, NaN])).toThrow(InvalidArgumentError);
    expect(() => model.tokenizer.decode([1, NaN])).toThrow(/ids\[1\]: expected an integer token id but received NaN/);
  });
});

describe('options', () => {
  it('null options mean no options, as undefined does', async () => {
    const prompt = [1, 40, 41, 42];
    expect(Array.from(await model.logits(prompt, null as never))).toEqual(Array.from(await model.logits(prompt)));
    const r = await model.generate(prompt, null as never).result;
    expect(r.tokens).toEqual((await model.generate(prompt).result).tokens);
    expect(model.tokenizer.encode('Doc 1.', null as never)).toEqual(model.tokenizer.encode('Doc 1.'));
    expect(model.tokenizer.decode([1, 40], null as never)).toBe(model.tokenizer.decode([1, 40]));
    const m = await loadModel(MODELS, null as never);
    m.dispose();
    const t = Tensor.from(new Float32Array(4), { shape: [1, 4] });
    expect(await ops.softmax(t, null as never).toArray()).toEqual(new Float32Array([0.25, 0.25, 0.25, 0.25]));
  });

  it('options that are not an object are refused', async () => {
    await expectInvalid(() => model.generate([1, 2], 5 as never), 'options', /options: expected an object but received number 5/);
    await expectInvalid(() => model.logits([1, 2], true as never), 'options', /options: expected an object but received boolean true/);
  });

  it('unknown option names are refused, listing the known ones', async () => {
    await expectInvalid(
      () => model.generate([1, 2], { max_tokens: 5 } as never),
      'options',
      /options: unknown option 'max_tokens' \(did you mean 'maxTokens'\?\); known options: temperature, topK, topP, minP, repetitionPenalty, penaltyWindow, seed, maxTokens, stop, stopTokens, signal/,
    );
    await expectInvalid(() => model.logits([1, 2], { All: true } as never), 'options', /unknown option 'All' \(did you mean 'all'\?\); known options: all/);
    await expectInvalid(() => loadModel(MODELS, { kvCache: 64 } as never), 'options', /unknown option 'kvCache'; known options: device, dtype, kvCacheTokens/);
    await expectInvalid(() => model.tokenizer.encode('x', { add_special_tokens: false } as never), 'options', /did you mean 'addSpecialTokens'/);
    const t = Tensor.from(new Float32Array(4), { shape: [1, 4] });
    await expectInvalid(() => ops.softmax(t, { temperature: 2 } as never), 'options', /softmax: options: unknown option 'temperature'; known options: scale/);
  });

  it('loadDefaultModel() checks its options as loadModel() does, variant included', async () => {
    await expectInvalid(() => loadDefaultModel({ varient: 'fast' } as never), 'options', /unknown option 'varient'; known options: device, .*, variant/);
    (await loadDefaultModel({ variant: 'fast', device: 'cpu' })).dispose();
    (await loadDefaultModel(null)).dispose();
  });

  it('logits({ all }) must be a boolean', async () => {
    await expectInvalid(() => model.logits([1, 2], { all: 'yes' } as never), 'all', /all: expected a boolean but received 'yes'/);
  });

  it('stopTokens outside the vocabulary are refused by name', async () => {
    await expectInvalid(() => model.generate([1, 2], { stopTokens: [2, 5000] }), 'stopTokens', /stopTokens\[1\]: 5000 is outside the vocabulary \[0, 1024\)/);
    await expectInvalid(() => model.generate([1, 2], { stopTokens: [2, 1.5] }), 'stopTokens', /stopTokens\[1\]: expected an integer token id but received number 1\.5/);
  });
});

describe('empty prompts', () => {
  // One rule for every form: a prompt must hold at least one token of its own. Text is not
  // padded to BOS alone; pass [bosTokenId] to generate unconditionally.
  for (const [name, prompt] of [
    ["''", ''],
    ['[]', []],
    ['an empty Int32Array', new Int32Array(0)],
  ] as const) {
    it(`${name} is refused by generate() and logits()`, async () => {
      await expectInvalid(() => model.generate(prompt, { maxTokens: 1 }), 'prompt', /prompt: is empty/);
      await expectInvalid(() => model.logits(prompt), 'prompt', /prompt: is empty/);
    });
  }

  it('[bosTokenId] runs', async () => {
    const r = await model.generate([model.tokenizer.bosTokenId!], { maxTokens: 2 }).result;
    expect(r.promptTokens).toBe(1);
  });
});

describe('loadModel()', () => {
  it('a file path instead of the model directory is refused, naming the path', async () => {
    const file = join(MODELS, 'config.json');
    const e = await failure(() => loadModel(file));
    expect(e).toBeInstanceOf(InvalidArgumentError);
    expect((e as InvalidArgumentError).argument).toBe('dir');
    expect((e as Error).message).toContain(`dir: ${file} is a file, not a directory`);
    expect((e as Error).message).toContain(`(${MODELS}?)`);
  });
});

describe('abort', () => {
  it('AbortError carries the signal’s reason as its cause', async () => {
    const controller = new AbortController();
    const reason = new Error('the user left');
    const stream = model.generate([1, 40, 41], { maxTokens: 200, stopTokens: [], signal: controller.signal });
    for await (const _ of stream) {
      controller.abort(reason);
      break;
    }
    const e = await failure(() => stream.result);
    expect(e).toBeInstanceOf(AbortError);
    expect((e as Error).cause).toBe(reason);
  });

  it('a signal aborted before generate() gives its reason too', async () => {
    const signal = AbortSignal.abort('shutting down');
    const e = await failure(() => model.generate([1, 40], { signal }));
    expect(e).toBeInstanceOf(AbortError);
    expect((e as Error).cause).toBe('shutting down');
  });
});
