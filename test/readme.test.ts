// README.md's code runs as written. Every ts/js block carries a marker on the line before it:
// `<!-- readme-test: run -->` blocks are executed here, in order, against the embedded model
// (models/), with `from 'kvfocus'` pointed at this checkout's lib/; `<!-- readme-test: skip
// (reason) -->` blocks need something that does not ship (another checkpoint) and are only
// listed. A block with no marker fails the test, so a new example cannot rot unnoticed.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';

const ROOT = join(__dirname, '..');
const LIB = join(ROOT, 'lib', 'index.ts');

interface Block {
  line: number;
  lang: string;
  marker: 'run' | 'skip' | undefined;
  reason: string;
  code: string;
}

/** The fenced code blocks of a Markdown text, with the readme-test marker above each. */
function codeBlocks(markdown: string): Block[] {
  const lines = markdown.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w*)/.exec(lines[i]!);
    if (!open) continue;
    const end = lines.findIndex((l, j) => j > i && l.startsWith('```'));
    if (end < 0) throw new Error(`README.md:${i + 1}: code block never closed`);
    let above = i - 1;
    while (above >= 0 && lines[above]!.trim() === '') above--;
    const marker = /^<!-- readme-test: (run|skip)\b\s*(.*?)\s*-->$/.exec(lines[above] ?? '');
    blocks.push({
      line: i + 1,
      lang: open[1]!,
      marker: marker?.[1] as Block['marker'],
      reason: marker?.[2] ?? '',
      code: lines.slice(i + 1, end).join('\n'),
    });
    i = end;
  }
  return blocks;
}

const blocks = codeBlocks(readFileSync(join(ROOT, 'README.md'), 'utf8'));
const code = blocks.filter((b) => ['ts', 'js', 'mjs', 'typescript', 'javascript'].includes(b.lang));
const dir = mkdtempSync(join(tmpdir(), 'kvfocus-readme-'));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('README.md code blocks', () => {
  it('every ts/js block is marked run or skip, and skips say why', () => {
    expect(code.length).toBeGreaterThan(0);
    for (const b of code) {
      expect(b.marker, `README.md:${b.line}: mark the block <!-- readme-test: run --> or <!-- readme-test: skip (reason) -->`).toBeDefined();
      if (b.marker === 'skip') expect(b.reason, `README.md:${b.line}: say why the block is skipped`).not.toBe('');
    }
    expect(code.filter((b) => b.marker === 'run').length).toBeGreaterThanOrEqual(3);
  });

  for (const b of code) {
    if (b.marker !== 'run') {
      it.skip(`README.md:${b.line} (${b.reason || 'unmarked'})`, () => {});
      continue;
    }
    it(`README.md:${b.line} runs`, async () => {
      // Each block is a module of its own: top-level await and `using` work as in the README.
      const source = b.code.replace(/from 'kvfocus'/g, `from ${JSON.stringify(LIB)}`);
      expect(source, 'the block imports kvfocus').not.toBe(b.code);
      const file = join(dir, `block-${b.line}.ts`);
      writeFileSync(file, source);
      const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
      const log = vi.spyOn(console, 'log').mockImplementation(() => {});
      try {
        await import(file);
      } finally {
        write.mockRestore();
        log.mockRestore();
      }
    });
  }
});
