// Loading: build info on this host, the ESM and CJS entry points, worker threads.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { buildInfo } from '../lib/index.js';

const root = join(__dirname, '..');

describe('loader', () => {
  it('buildInfo() describes the binary and the devices', () => {
    const info = buildInfo();
    expect(info.version).toBe(require('../package.json').version);
    expect(typeof info.cuda).toBe('boolean');
    expect(info.binary.endsWith('.node')).toBe(true);
    expect(info.cpuThreads).toBeGreaterThan(0);
    for (const d of info.devices) {
      expect(d.memoryBytes).toBeGreaterThan(0);
      expect(d.computeCapability).toMatch(/^\d+\.\d+$/);
    }
    if (info.devices.length === 0) {
      expect(info.backend).toBe('cpu');
      expect(info.cudaUnavailableReason).toBeTruthy();
    }
  });

  it('a binary built on a machine with nvcc has CUDA compiled in', () => {
    let nvcc = false;
    try {
      execFileSync('nvcc', ['--version'], { stdio: 'ignore' });
      nvcc = true;
    } catch {
      // no nvcc: a CPU-only build is expected
    }
    const info = buildInfo();
    if (nvcc && info.binary.includes(join('build', 'Release')) && process.env.KVFOCUS_CUDA !== 'off') {
      expect(info.cuda).toBe(true);
    }
  });

  it('the built package (dist/) loads through require and import, sharing one instance', () => {
    const script = `
      const cjs = require('kvfocus');
      import('kvfocus').then(async (esm) => {
        const t = esm.Tensor.from(new Float32Array([1, 2]));
        const same = esm.Tensor === cjs.Tensor && esm.KvfocusError === cjs.KvfocusError;
        console.log(JSON.stringify({ same, values: Array.from(await t.toArray()), backend: cjs.buildInfo().backend }));
      });`;
    // Run from the package root so 'kvfocus' resolves to itself through the exports map.
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', cwd: root })) as { same: boolean; values: number[] };
    expect(out.same).toBe(true);
    expect(out.values).toEqual([1, 2]);
  });

  it('loads in worker threads, each with its own instance data', () => {
    const script = `
      const { Worker } = require('node:worker_threads');
      const code = 'const k = require(' + JSON.stringify(${JSON.stringify(root)}) + ');' +
        'k.Tensor.from(new Float32Array([3])).toArray().then((v) => require("node:worker_threads").parentPort.postMessage(v[0]));';
      let done = 0;
      for (let i = 0; i < 3; i++) {
        const w = new Worker(code, { eval: true });
        w.on('message', (v) => { if (v === 3 && ++done === 3) console.log('ok'); w.terminate(); });
        w.on('error', (e) => { console.error(e); process.exit(1); });
      }`;
    expect(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }).trim()).toBe('ok');
  });
});
