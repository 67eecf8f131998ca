// After any error path, nothing native keeps the event loop alive: a process that hit the error
// and let go of its objects exits by itself. Each path runs in a child process with a timeout.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(__dirname, '..', '..');

// Each script ends with the error's name on stdout and leaves nothing to do: the child must exit
// on its own, well before the timeout.
const PATHS: Record<string, { expected: string; script: string }> = {
  'a sequence disposed while it generates': {
    expected: 'DisposedError',
    script: `
      // Every KV user goes through the scheduler's admission now (logits() included), so a full
      // pool makes work wait rather than fail; disposing a sequence is the error path that frees
      // pages under a running generation.
      const model = await k.loadDefaultModel({ device: 'cpu', kvCacheTokens: 64 });
      const seq = model.sequence();
      await seq.append(Array.from({ length: 30 }, (_, i) => 10 + i));
      const stream = seq.generate({ maxTokens: 20, stopTokens: [] });
      let n = 0;
      try { for await (const _ of stream) if (++n === 2) seq.dispose(); } catch (e) { console.log(e.name); }
      model.dispose();`,
  },
  'invalid argument to an op (checked in lib/)': {
    expected: 'InvalidArgumentError',
    script: `
      const a = k.Tensor.from(new Float32Array(6), { shape: [2, 3] });
      try { k.ops.matmul(a, a); } catch (e) { console.log(e.name); }`,
  },
  'invalid argument to an op (found by the kernel, read rejects)': {
    expected: 'InvalidArgumentError',
    script: `
      const table = k.Tensor.from(new Float32Array(8), { shape: [4, 2] });
      const ids = k.Tensor.from(new Int32Array([1, 99]));
      const out = k.ops.embedding(table, ids);
      await out.toArray().catch((e) => console.log(e.name));`,
  },
  'aborted generation': {
    expected: 'AbortError',
    script: `
      const model = await k.loadDefaultModel({ device: 'cpu' });
      const ac = new AbortController();
      const stream = model.generate('Doc 1. Ada Lind lives in Oslo.', { maxTokens: 200, stopTokens: [], signal: ac.signal });
      let n = 0;
      try { for await (const _ of stream) if (++n === 2) ac.abort(); } catch (e) { console.log(e.name); }
      model.dispose();`,
  },
  'read of a disposed tensor': {
    expected: 'DisposedError',
    script: `
      const t = k.Tensor.from(new Float32Array([1, 2]));
      t.dispose();
      await Promise.resolve().then(() => t.toArray()).catch((e) => console.log(e.name));`,
  },
  'failed model load': {
    expected: 'ModelFormatError',
    script: `
      const fs = require('node:fs'), os = require('node:os'), path = require('node:path');
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvfocus-bad-'));
      for (const f of fs.readdirSync(k.defaultModelDir())) if (fs.statSync(path.join(k.defaultModelDir(), f)).isFile()) fs.copyFileSync(path.join(k.defaultModelDir(), f), path.join(dir, f));
      fs.truncateSync(path.join(dir, 'model.safetensors'), 1000);
      await k.loadModel(dir, { device: 'cpu' }).catch((e) => console.log(e.name));
      fs.rmSync(dir, { recursive: true, force: true });`,
  },
};

describe('the process exits by itself after an error', () => {
  for (const [name, { expected, script }] of Object.entries(PATHS)) {
    it(name, () => {
      const r = spawnSync(process.execPath, ['-e', `const k = require(${JSON.stringify(root)}); (async () => {${script}\n})();`], {
        encoding: 'utf8',
        timeout: 30_000,
      });
      expect(r.signal, `still running after 30 s; stderr: ${r.stderr}`).toBeNull();
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain(expected);
    }, 60_000);
  }
});
