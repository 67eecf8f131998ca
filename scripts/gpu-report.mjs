#!/usr/bin/env node
// Turns the summary JSON of scripts/gpu-check.mjs into the README's GPU section: everything
// between the gpu-check markers is replaced in place (the rest of the file is left as it is).
//
//   node scripts/gpu-report.mjs --json path/to/gpu-check.json [--readme README.md]
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BEGIN = '<!-- gpu-check:begin -->';
export const END = '<!-- gpu-check:end -->';

const fmt = (x, digits = 1) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '-');
const pct = (x) => (typeof x === 'number' && Number.isFinite(x) ? `${(100 * x).toFixed(0)}%` : '-');

/** One short cell of the step's key numbers. */
function keyNumbers(step) {
  const n = step.numbers ?? {};
  switch (step.name) {
    case 'build':
      return n.devices ? `CUDA ${n.cudaCompiled ? 'compiled in' : 'not compiled'}; ${n.devices.length ? n.devices.join(', ') : 'no device'}` : '';
    case 'test-gpu':
    case 'memcheck': {
      const tests = n.tests === undefined ? '' : `${n.passed}/${n.tests} tests passed, ${n.failed} failed, ${n.skipped} skipped`;
      const errors = n.errors === undefined ? '' : `${n.errors} memcheck errors in ${n.processes} processes`;
      return [tests, errors].filter(Boolean).join('; ');
    }
    case 'bench-ops': {
      const rr = Object.entries(n.rerotate ?? {}).map(([dt, r]) => `rerotate ${dt} ${fmt(r.gbPerSecond, 0)} GB/s (${fmt(r.ratioToCopy, 2)} of copy)`);
      const mm = Object.entries(n.matmul ?? {}).map(([shape, r]) => `matmul ${shape} ${fmt(r.gflops, 0)} GFLOP/s`);
      const fused = Object.entries(n.rerotatePages ?? {}).map(
        ([dt, r]) => `rerotatePages ${dt} ${fmt(r.gbPerSecond, 0)} GB/s (${fmt(r.ratioToCopy, 2)} of copy, ${fmt(r.speedupOverPerPage, 1)}x per-page launches)`,
      );
      return [...rr, ...fused, ...mm].join('; ');
    }
    case 'bench-7b':
      if (!n.decode) return '';
      return `decode ${fmt(n.decode.tokensPerSecond)} tok/s (${pct(n.decode.fractionOfRoofline)} of roofline, ${n.layers} layers); ` +
        n.prefill.map((p) => `prefill ${p.tokens} ${fmt(p.tokensPerSecond, 0)} tok/s (${fmt(p.ratio, 2)}x transformers)`).join('; ');
    case 'hf-oracle':
      if (!n.results) return '';
      return n.results.map((r) => `${r.arch}/${r.device}: f32 rel ${r.f32RelL2 ?? '-'}, bf16 rel ${r.bf16RelL2VsF32Compute ?? '-'}, greedy ${r.greedyF32}`).join('; ');
    default:
      return '';
  }
}

const cell = (s) => String(s).replaceAll('|', '\\|').replaceAll('\n', ' ');

/** The markdown that goes between the markers. */
export function gpuSection(summary) {
  const c = summary.counts;
  const lines = [
    `Last \`npm run gpu:check\`: ${summary.date.slice(0, 10)}${summary.commit ? `, commit ${summary.commit}` : ''}, on ${summary.host.gpu ?? 'a machine without a GPU (dry run)'}; ` +
      `**${summary.status}** (${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped) in ${fmt(summary.seconds, 0)} s of a ${summary.budgetSeconds} s budget.`,
    '',
    '| step | status | seconds | key numbers |',
    '| --- | --- | ---: | --- |',
    ...summary.steps.map((s) => `| ${s.name} | ${s.status} | ${fmt(s.seconds, 0)} | ${cell(s.status === 'passed' ? keyNumbers(s) : [s.reason, keyNumbers(s)].filter(Boolean).join('; '))} |`),
  ];
  const b = summary.steps.find((s) => s.name === 'bench-7b' && s.numbers?.decode)?.numbers;
  if (b) {
    lines.push(
      '',
      `Llama-2-7B shapes, random f16 weights, ${b.layers} of 32 layers (device copy ${fmt(b.copyGbPerSecond, 0)} GB/s; transformers: ${b.transformers}):`,
      '',
      '| tok/s | kvfocus | transformers (sdpa) | kvfocus / transformers | kvfocus, extrapolated to 32 layers |',
      '| --- | ---: | ---: | ---: | ---: |',
      `| decode, batch 1 (${pct(b.decode.fractionOfRoofline)} of the ${fmt(b.decode.rooflineTokensPerSecond, 0)} tok/s roofline) | ${fmt(b.decode.tokensPerSecond)} | ${fmt(b.decode.transformersTokensPerSecond)} | ${b.decode.transformersTokensPerSecond ? fmt(b.decode.tokensPerSecond / b.decode.transformersTokensPerSecond, 2) : '-'} | ${fmt(b.extrapolatedTo32Layers?.decodeTokensPerSecond)} |`,
      ...b.prefill.map((p) => `| prefill, ${p.tokens} tokens | ${fmt(p.tokensPerSecond, 0)} | ${fmt(p.transformersTokensPerSecond, 0)} | ${fmt(p.ratio, 2)} | ${fmt(b.extrapolatedTo32Layers?.prefill.find((q) => q.tokens === p.tokens)?.tokensPerSecond, 0)} |`),
      `| decode, batch ${b.batch.sequences} (total) | ${fmt(b.batch.tokensPerSecond, 0)} | - | - | - |`,
    );
  }
  return lines.join('\n');
}

/** README text with the section between the markers replaced; throws when they are missing. */
export function replaceSection(text, section) {
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  if (a < 0 || b < a) throw new Error(`no ${BEGIN} ... ${END} markers in the README`);
  return `${text.slice(0, a + BEGIN.length)}\n${section}\n${text.slice(b)}`;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const opt = (name, fallback) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : fallback;
  };
  const json = opt('--json', undefined);
  if (!json) {
    console.error('usage: node scripts/gpu-report.mjs --json gpu-check.json [--readme README.md]');
    process.exit(2);
  }
  const readme = resolve(opt('--readme', join(dirname(fileURLToPath(import.meta.url)), '..', 'README.md')));
  const summary = JSON.parse(readFileSync(json, 'utf8'));
  if (summary.check !== 'gpu-check') throw new Error(`${json}: not a gpu-check summary`);
  writeFileSync(readme, replaceSection(readFileSync(readme, 'utf8'), gpuSection(summary)));
  console.log(`${readme}: GPU section updated from ${json}`);
}
