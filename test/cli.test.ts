// The command line (bin/kvfocus.js, run as a child process): cache build fills a store folder
// from a JSONL file with a progress report, stats and verify read it without a model, verify
// names a damaged entry and fails, and bad input is a one-line error with a non-zero exit.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadDefaultModel } from '../lib/index.js';

const bin = join(__dirname, '..', 'bin', 'kvfocus.js');
let root: string;
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvfocus-cli-'));
  const lines = Array.from({ length: 12 }, (_, i) => JSON.stringify(i % 3 === 2 ? { id: `d${i}`, tokens: [10 + i, 20 + i, 30 + i] } : { id: `d${i}`, text: `Doc ${i}. Person ${i} lives in Oslo.` }));
  writeFileSync(join(root, 'docs.jsonl'), lines.join('\n') + '\n\n');
  writeFileSync(join(root, 'bad.jsonl'), '{"id": "a", "text": "fine"}\n{"id": "b"}\n');
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('kvfocus cache', () => {
  it('build stores every document; a store opened on the folder serves them; stats and verify report them', async () => {
    const store = join(root, 'store');
    const b = run('cache', 'build', join(root, 'docs.jsonl'), '--model', 'default', '--store', store, '--prefix', 'Answer from the documents.');
    expect(b.status).toBe(0);
    expect(b.stderr).toMatch(/12\/12 docs/);
    expect(b.stderr).toMatch(/docs\/s/);
    expect(b.stderr).toMatch(/tokens\/s/);
    expect(b.stderr).toMatch(/stored 12 documents/);

    const s = run('cache', 'stats', store, '--json');
    expect(s.status).toBe(0);
    const [report] = JSON.parse(s.stdout);
    expect(report.entries).toBe(12);
    expect(report.prefixTokens).toBeGreaterThan(0);

    const model = await loadDefaultModel({ device: 'cpu' });
    try {
      using opened = await model.openStore({ prefix: 'Answer from the documents.', dir: store });
      expect(opened.list().sort()).toEqual(Array.from({ length: 12 }, (_, i) => `d${i}`).sort());
      using seq = model.sequence({ store: opened, documents: ['d0', 'd5'] });
      await seq.append(' Where does Person 5 live?');
      expect(opened.stats().hitsByTier.disk).toBe(2);
    } finally {
      model.dispose();
    }

    const v = run('cache', 'verify', store);
    expect(v.status).toBe(0);
    expect(v.stdout).toMatch(/verified: 12 ok, 0 damaged/);

    // One flipped byte in one entry: verify names it and fails.
    const folder = join(store, readdirSync(store)[0]!);
    const victim = readdirSync(folder).find((n) => n.endsWith('.safetensors') && n !== 'prefix.safetensors')!;
    const bytes = readFileSync(join(folder, victim));
    bytes[bytes.length - 5] ^= 0x10;
    writeFileSync(join(folder, victim), bytes);
    const bad = run('cache', 'verify', store);
    expect(bad.status).toBe(1);
    expect(bad.stdout).toMatch(/verified: 11 ok, 1 damaged/);
    expect(bad.stdout).toContain(victim);
  }, 120_000);

  it('bad input: a one-line error naming what was wrong, and a non-zero exit', () => {
    const line = run('cache', 'build', join(root, 'bad.jsonl'), '--model', 'default', '--store', join(root, 's2'));
    expect(line.status).toBe(2);
    expect(line.stderr).toMatch(/bad\.jsonl:2: expected "text"/);
    const missing = run('cache', 'build', join(root, 'nope.jsonl'), '--model', 'default', '--store', join(root, 's3'));
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/nope\.jsonl: no such file/);
    const noModel = run('cache', 'build', join(root, 'docs.jsonl'), '--store', join(root, 's4'));
    expect(noModel.status).not.toBe(0);
    expect(noModel.stderr).toMatch(/--model/);
    const notDir = run('cache', 'stats', join(root, 'docs.jsonl'));
    expect(notDir.status).toBe(2);
    expect(notDir.stderr).toMatch(/not a folder/);
    const unknown = run('cache', 'frobnicate');
    expect(unknown.status).not.toBe(0);
  }, 120_000);
});
