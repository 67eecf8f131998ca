// `npm run bench:prefill` end to end on the 2-layer embedded model at small sizes (through the
// built package in dist/): full attention past the model's 512 positions through a variant
// config.json, the strided sequence's KV bounded by the cascade, the JSON and README table written.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.join(__dirname, '../..');

describe('npm run bench:prefill', () => {
  it('times strided and full prefill and writes its JSON and README table', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvfocus-prefill-bench-'));
    try {
      const readme = path.join(dir, 'README.md');
      writeFileSync(readme, 'before\n<!-- prefill-table:begin -->\nold\n<!-- prefill-table:end -->\nafter\n');
      const args = ['scripts/bench/strided-prefill.mjs', '--model', 'models', '--sizes', '256,1024,4096', '--full-max', '1024', '--sinks', '4',
        '--cascades', '2', '--window', '32', '--stride', '64', '--mark', '512', '--json', path.join(dir, 'p.json'), '--readme', readme];
      execFileSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
      const json = JSON.parse(readFileSync(path.join(dir, 'p.json'), 'utf8'));
      expect(json.complete).toBe(true);
      expect(json.cascading).toMatchObject({ sinks: 4, cascades: 2, window: 32, stride: 64, capacity: 68 });
      // Full attention at 1024 tokens needs a context of 1024: a variant of the 512-position model.
      expect(json.model.maxPositionEmbeddings).toBe(1024);
      expect(existsSync(path.join(json.model.dir, 'config.json'))).toBe(true);
      const R = json.results as { tokens: number; strided: { ms: number; heldMax: number; kvTokensPerLayer: number; cumulativeMs: [number, number][][] }; full: { ms?: number; heldMax?: number; skipped?: string }; fullOverStrided: number | null; growthPer4x: { from: number; strided: number; full: number | null } | null }[];
      expect(R.map((r) => r.tokens)).toEqual([256, 1024, 4096]);
      for (const r of R) {
        expect(r.strided.ms).toBeGreaterThan(0);
        // The cascade's slots and the last chunk, whatever N.
        expect(r.strided.heldMax).toBe(68 + 64);
        expect(r.strided.kvTokensPerLayer).toBeLessThanOrEqual(68 + 64 + 16);
        expect(r.strided.cumulativeMs[0].at(-1)![0]).toBe(r.tokens);
      }
      expect(R[0].full.heldMax).toBe(256);
      expect(R[1].full.heldMax).toBe(1024);
      expect(R[1].fullOverStrided).toBeGreaterThan(0);
      expect(R[2].full.skipped).toMatch(/--full-max 1024/);
      expect(R[2].fullOverStrided).toBeNull();
      expect(R[0].growthPer4x).toBeNull();
      expect(R[1].growthPer4x).toMatchObject({ from: 256 });
      expect(R[2].growthPer4x!.full).toBeNull();
      const table = readFileSync(readme, 'utf8');
      expect(table).toMatch(/^before\n<!-- prefill-table:begin -->\n/);
      expect(table).not.toMatch(/\nold\n/);
      expect(table).toMatch(/\| 4K \| \d+ \| \d+ \| [\d.]+x \| not run \(above 1K\) \|/);
      expect(table).toMatch(/<!-- prefill-table:end -->\nafter\n$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
