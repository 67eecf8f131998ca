// The model-directory fuzzer (scripts/fuzz/model-dir.mjs) kept from rotting: a few seeded cases,
// and the hostile directories that used to kill, hang or exhaust the process, each run in a
// child process under the fuzzer's limits so that a regression fails here instead of taking the
// test run down. Runs on dist/ (npm test builds it first).
import { describe, expect, it } from 'vitest';

import { fuzz, makeCase, runCase, type FuzzCase } from '../../scripts/fuzz/model-dir.mjs';

describe('model-dir fuzzer', () => {
  it('cases are reproducible from (seed, index)', () => {
    expect(makeCase(7, 3)).toEqual(makeCase(7, 3));
    expect(JSON.stringify(makeCase(7, 3))).not.toBe(JSON.stringify(makeCase(8, 3)));
  });

  it('a short seeded run has no findings', async () => {
    const report = await fuzz({ seed: 1, cases: 6, timeoutMs: 20_000 });
    expect(report.findings).toEqual([]);
    expect(report.cases).toBe(6);
  }, 120_000);

  // Each of these used to end the process (V8 abort, heap limit) or never return.
  const hostile: [string, FuzzCase, RegExp][] = [
    ['config.json as a FIFO', { kind: 'special-file', file: 'config.json', special: 'fifo' }, /config\.json: is a FIFO/],
    ['tokenizer.json linked to /dev/zero', { kind: 'special-file', file: 'tokenizer.json', special: 'dev-zero' }, /tokenizer\.json: resolves outside the model directory \(to \/dev\/zero\)/],
    ['a chat template looping over range(10**9)', { kind: 'chat-template', file: 'tokenizer_config.json', template: '{% for x in range(10**9) %}{{ x }}{% endfor %}' }, /the chat template exceeded its limits/],
    ['a chat template with nested 100000-step loops', { kind: 'chat-template', file: 'chat_template.jinja', template: '{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}' }, /chat_template\.jinja: the chat template exceeded its limits/],
    ['num_hidden_layers: 1e6', { kind: 'config-size', file: 'config.json', field: 'num_hidden_layers', value: 1e6 }, /num_hidden_layers \(1000000\) is larger than kvfocus accepts/],
  ];
  for (const [name, c, message] of hostile) {
    it(`${name} ends in a typed error`, async () => {
      const result = await runCase(c, { timeoutMs: 20_000 });
      expect(result.outcome).toBe('typed');
      expect(result.detail).toMatch(message);
    }, 60_000);
  }
});
