// `npm run bench:bounded` end to end on the 2-layer embedded model with small counts (through the
// built package in dist/, which `npm test` builds first): the prompts put the fact where asked,
// every policy holds what its budget allows, and the JSON, chart and README table are written.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.join(__dirname, '../..');

describe('npm run bench:bounded', () => {
  it('writes its JSON, chart and README table', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvfocus-bounded-bench-'));
    try {
      const readme = path.join(dir, 'README.md');
      writeFileSync(readme, 'before\n<!-- bounded-table:begin -->\nold\n<!-- bounded-table:end -->\nafter\n');
      const args = ['scripts/bench/bounded.mjs', '--model', 'models', '--count', '3', '--distances', '0.25,4', '--stream-tokens', '1200',
        '--speed-tokens', '48', '--speed-rounds', '1', '--json', path.join(dir, 'b.json'), '--svg', path.join(dir, 'b.svg'), '--readme', readme];
      execFileSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
      const json = JSON.parse(readFileSync(path.join(dir, 'b.json'), 'utf8'));
      expect(json.retrieval.prefixMismatches).toBe(0);
      const R = json.results.retrieval as { policy: string; prefillChunk: string | number; multiple: number; targetDistance: number; meanDistance: number; run: number; accuracy: number | null }[];
      // Every policy, both ways of feeding the prompt, both distances.
      expect(R.length).toBe(6 * 2 * 2);
      for (const r of R) expect(Math.abs(r.meanDistance - r.targetDistance)).toBeLessThanOrEqual(16);
      // A fact 32 tokens back is inside every budget; 512 tokens back the prompt is past T.
      for (const r of R.filter((x) => x.multiple === 0.25)) expect(r.accuracy).toBeGreaterThanOrEqual(2 / 3);
      expect(R.find((x) => x.policy === 'full' && x.multiple === 4)!.run).toBe(0);
      const P = json.results.perplexity as { policy: string; heldMax: number | null; perplexity: number }[];
      expect(P.map((p) => p.policy)).toEqual(['full', 'streaming', 'lacache', 'h2o', 'cascading', 'snapkv']);
      for (const p of P) expect(Number.isFinite(p.perplexity) && p.perplexity > 1).toBe(true);
      // Between steps: streaming sinks + window - 1, LaCache budget + floor(R / 2) (R = 1 here), H2O budget - 1,
      // Cascading its 4 + 4 x 31 slots and the newest token (inserted before the next step), SnapKV budget + window.
      expect(P.slice(1).map((p) => p.heldMax)).toEqual([127, 128, 127, 129, 128]);
      expect(json.results.speed.map((s: { policy: string }) => s.policy)).toEqual(['full', 'streaming', 'lacache', 'h2o', 'cascading', 'snapkv']);
      // The policies' options at B = 128, and SnapKV's capacity chunks through a model loaded with prefillChunk 128.
      const pol = json.models[0].policies;
      expect(pol.cascading.policy).toMatchObject({ sinks: 4, cascades: 4, window: 31, stride: 128 });
      expect(pol.snapkv.policy).toMatchObject({ budget: 96, window: 32, kernel: 5 });
      expect(pol.snapkv.capacityPrefillChunk).toBe(128);
      expect(readFileSync(path.join(dir, 'b.svg'), 'utf8')).toMatch(/^<svg/);
      const table = readFileSync(readme, 'utf8');
      expect(table).toMatch(/^before\n<!-- bounded-table:begin -->\n/);
      expect(table).not.toMatch(/\nold\n/);
      expect(table).toMatch(/\| lacache \| 16-token chunks \|/);
      expect(table).toMatch(/\| cascading \| capacity chunks \|/);
      expect(table).toMatch(/\| snapkv \| 16-token chunks \|/);
      expect(table).toMatch(/past T/);
      expect(table).toMatch(/<!-- bounded-table:end -->\nafter\n$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
