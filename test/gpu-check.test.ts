// `npm run gpu:check` as a dry run (every GPU step skipped with its reason) and the README
// report made from its summary, so that the one command a GPU session runs cannot rot between
// the sessions that have a GPU.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { buildInfo } from '../lib/index.js';

const root = join(__dirname, '..');
const work = mkdtempSync(join(tmpdir(), 'kvfocus-gpu-check-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const STEPS = ['build', 'test-gpu', 'memcheck', 'bench-ops', 'bench-7b', 'hf-oracle'];
const BEGIN = '<!-- gpu-check:begin -->';
const END = '<!-- gpu-check:end -->';

interface Step { name: string; status: string; reason?: string; seconds: number; boxSeconds: number; numbers: Record<string, unknown> }
interface Summary { check: string; status: string; budgetSeconds: number; counts: Record<string, number>; steps: Step[] }

// On a GPU machine the real run takes minutes: --dry-run skips the GPU steps there too.
const hasCuda = buildInfo().devices.length > 0;
const out = join(work, 'gpu-check.json');
const run = spawnSync(process.execPath, [join(root, 'scripts', 'gpu-check.mjs'), '--out', out, ...(hasCuda ? ['--dry-run'] : [])], { cwd: root, encoding: 'utf8' });
const summary = JSON.parse(readFileSync(out, 'utf8')) as Summary;

describe('gpu:check dry run', () => {
  it('exits 0 and writes one summary with every step', () => {
    expect(run.status, run.stderr).toBe(0);
    expect(summary.check).toBe('gpu-check');
    expect(summary.steps.map((s) => s.name)).toEqual(STEPS);
    for (const s of summary.steps) {
      expect(['passed', 'failed', 'skipped']).toContain(s.status);
      expect(s.seconds).toBeGreaterThanOrEqual(0);
      expect(s.boxSeconds).toBeGreaterThan(0);
    }
  });

  it('time boxes add up to the budget, under 8 minutes', () => {
    expect(summary.budgetSeconds).toBeLessThan(480);
    expect(summary.steps.reduce((a, s) => a + s.boxSeconds, 0)).toBeLessThanOrEqual(summary.budgetSeconds);
  });

  it('loads the addon and skips each GPU step with its reason', () => {
    const [build, ...gpu] = summary.steps;
    expect(build!.status).toBe('passed');
    for (const s of gpu) {
      expect(s.status, s.name).toBe('skipped');
      expect(s.reason).toMatch(hasCuda ? /^dry run/ : /^no CUDA device \(.+\)$/);
    }
    expect(summary.status).toBe('passed');
    expect(summary.counts).toEqual({ passed: 1, failed: 0, skipped: 5 });
    expect(run.stdout).toContain(`JSON: ${out}`);
  });

  it('writes the log beside the summary', () => {
    const log = readFileSync(join(work, 'gpu-check.log'), 'utf8');
    for (const name of STEPS) expect(log).toContain(`--- ${name}: `);
  });
});

describe('gpu:report', () => {
  const readme = join(work, 'README.md');
  copyFileSync(join(root, 'README.md'), readme);
  const before = readFileSync(readme, 'utf8');
  const report = () => execFileSync(process.execPath, [join(root, 'scripts', 'gpu-report.mjs'), '--json', out, '--readme', readme], { encoding: 'utf8' });

  it('replaces only the section between the markers, in place', () => {
    report();
    const after = readFileSync(readme, 'utf8');
    const outside = (t: string) => t.slice(0, t.indexOf(BEGIN)) + t.slice(t.indexOf(END));
    expect(outside(after)).toBe(outside(before));
    const section = after.slice(after.indexOf(BEGIN), after.indexOf(END));
    expect(section).toContain('| step | status | seconds | key numbers |');
    for (const name of STEPS) expect(section).toContain(`| ${name} | `);
    expect(section).not.toMatch(/undefined|NaN|\[object/);
  });

  it('gives the same README when run again', () => {
    const once = readFileSync(readme, 'utf8');
    report();
    expect(readFileSync(readme, 'utf8')).toBe(once);
  });

  it('renders a GPU run: every step\'s key numbers and the 7B table', async () => {
    const { gpuSection } = (await import('../scripts/gpu-report.mjs')) as { gpuSection: (s: unknown) => string };
    const step = (name: string, numbers: Record<string, unknown>) => ({ name, status: 'passed', seconds: 12.3, boxSeconds: 60, numbers });
    const text = gpuSection({
      check: 'gpu-check', date: '2026-12-01T10:00:00.000Z', commit: 'abc1234', host: { gpu: 'NVIDIA H200, 143771 MiB, 580.95' },
      budgetSeconds: 450, seconds: 401, status: 'passed', counts: { passed: 6, failed: 0, skipped: 0 },
      steps: [
        step('build', { cudaCompiled: true, devices: ['NVIDIA H200 (sm 9.0)'] }),
        step('test-gpu', { files: 12, tests: 300, passed: 300, failed: 0, skipped: 0 }),
        step('memcheck', { tests: 300, passed: 300, failed: 0, skipped: 0, processes: 4, errors: 0 }),
        step('bench-ops', { rerotate: { bf16: { gbPerSecond: 3000, ratioToCopy: 0.9 } }, matmul: { '1x4096x4096 f32xbf16': { gflops: 900 } } }),
        step('bench-7b', {
          layers: 8, copyGbPerSecond: 4000, transformers: '4.57.0 torch 2.11.0',
          decode: { tokensPerSecond: 400, fractionOfRoofline: 0.75, rooflineTokensPerSecond: 533, transformersTokensPerSecond: 200 },
          prefill: [{ tokens: 512, tokensPerSecond: 40000, transformersTokensPerSecond: 50000, ratio: 0.8 }],
          batch: { sequences: 16, tokensPerSecond: 5000, fractionOfRoofline: 0.5 },
          extrapolatedTo32Layers: { decodeTokensPerSecond: 110, prefill: [{ tokens: 512, tokensPerSecond: 10000 }] },
        }),
        step('hf-oracle', { results: [{ arch: 'llama', device: 'cuda', f32RelL2: 1e-6, bf16RelL2VsF32Compute: 3e-3, greedyF32: '32/32' }] }),
      ],
    });
    expect(text).toContain('on NVIDIA H200, 143771 MiB, 580.95; **passed** (6 passed, 0 failed, 0 skipped)');
    expect(text).toContain('| test-gpu | passed | 12 | 300/300 tests passed, 0 failed, 0 skipped |');
    expect(text).toContain('0 memcheck errors in 4 processes');
    expect(text).toContain('rerotate bf16 3000 GB/s (0.90 of copy)');
    expect(text).toContain('| decode, batch 1 (75% of the 533 tok/s roofline) | 400.0 | 200.0 | 2.00 | 110.0 |');
    expect(text).toContain('| prefill, 512 tokens | 40000 | 50000 | 0.80 | 10000 |');
    expect(text).toContain('llama/cuda: f32 rel 0.000001, bf16 rel 0.003, greedy 32/32');
    expect(text).not.toMatch(/undefined|NaN|\[object/);
  });

  it('refuses a README without the markers', () => {
    const bare = join(work, 'bare.md');
    copyFileSync(join(root, 'package.json'), bare);
    expect(() => execFileSync(process.execPath, [join(root, 'scripts', 'gpu-report.mjs'), '--json', out, '--readme', bare], { stdio: 'pipe' })).toThrow(/markers/);
  });
});
