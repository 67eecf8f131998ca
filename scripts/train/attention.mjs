// Where the question looks: per layer and query head, how much of the attention of the
// question's tokens lands on the document that holds the answer. This is the signal CacheFocus
// prunes documents by (shared/METHODS.md §1), so it says at which layers a model has it.
//
//   npm run build:ts
//   node scripts/train/attention.mjs --model DIR [--model DIR2 ...] [--count 100] [--valid FILE.jsonl] [--out FILE.json]
//
// Held-out questions 0..count-1, each prompt holding as many documents as fit the model's
// training length (as eval.mjs). PyTorch (train.py --dump-attention) computes the attention
// probabilities; the question's tokens are the question and the answer's lead (what a query
// contributes before the answer). Prints a Markdown table per model: the answer document's mean
// probability mass, its share of the mass on all documents, and how often it is the document
// with the most mass (top-1; chance is 1 / documents), per head and with the heads averaged.
// With --valid (a corpus of make-data.mjs --split valid), also what each layer is worth: the
// teacher-forced answer exact match with that layer skipped.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { fitExample, task, Tokenizer } from './common.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    model: { type: 'string', multiple: true },
    count: { type: 'string', default: '100' },
    valid: { type: 'string' },
    'valid-count': { type: 'string', default: '128' },
    python: { type: 'string', default: existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3' },
    out: { type: 'string' },
  },
});
if (!values.model?.length) {
  console.error('usage: node scripts/train/attention.mjs --model DIR [--model DIR2] [--count 100] [--out FILE.json]');
  process.exit(2);
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const results = [];
for (const dir of values.model) {
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const tok = await Tokenizer.load(dir);
  const examples = Array.from({ length: Number(values.count) }, (_, i) => {
    const { ex, ids, docStarts, docEnd, promptLength } = fitExample(tok, task.heldOutSeed(i), config.max_position_embeddings, { answerPosition: 'random' });
    const docs = docStarts.map((s, k) => [s, docStarts[k + 1] ?? docEnd]);
    return { ids: ids.slice(0, promptLength), docs, answerDoc: ex.answerDoc, query: [docEnd, promptLength] };
  });
  const tmp = mkdtempSync(join(tmpdir(), 'kvfocus-attn-'));
  try {
    writeFileSync(join(tmp, 'examples.json'), JSON.stringify(examples));
    execFileSync(values.python, [join(here, 'train.py'), '--dump-attention', dir, '--examples', join(tmp, 'examples.json'), '--out-attention', join(tmp, 'out.json'), ...(values.valid ? ['--valid', values.valid, '--valid-count', values['valid-count'], '--batch', '8'] : [])], { stdio: ['ignore', 'ignore', 'inherit'] });
    const r = JSON.parse(readFileSync(join(tmp, 'out.json'), 'utf8'));
    const meanDocs = examples.reduce((n, e) => n + e.docs.length, 0) / examples.length;
    results.push({ model: dir, meanDocs, ...r });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

for (const r of results) {
  console.log(`\n${r.model}: ${r.layers} layers x ${r.heads} query heads, ${r.examples} held-out prompts, ${r.meanDocs.toFixed(1)} documents each on average (top-1 by chance: ${pct(1 / r.meanDocs)})\n`);
  const heads = Array.from({ length: r.heads }, (_, h) => `head ${h}`);
  console.log(`| layer | ${heads.join(' | ')} | heads averaged |`);
  console.log(`| ---: | ${heads.map(() => '---:').join(' | ')} | ---: |`);
  for (let l = 0; l < r.layers; l++) {
    const cell = (h) => `${pct(r.answerMass[l][h])} / ${pct(r.answerShare[l][h])} / ${pct(r.answerTop1[l][h])}`;
    console.log(`| ${l} | ${heads.map((_, h) => cell(h)).join(' | ')} | ${cell(r.heads)} |`);
  }
}
console.log('\ncells: answer document mass / its share of the mass on documents / top-1 rate');
const ablated = results.filter((r) => r.answerEmWithout);
if (ablated.length) {
  const most = Math.max(...ablated.map((r) => r.layers));
  const cols = Array.from({ length: most }, (_, l) => `without layer ${l}`);
  console.log(`\nTeacher-forced answer exact match on ${ablated[0].validExamples} held-out examples, whole model and with one layer skipped:\n`);
  console.log(`| model | whole | ${cols.join(' | ')} |`);
  console.log(`| --- | ---: | ${cols.map(() => '---:').join(' | ')} |`);
  for (const r of ablated) console.log(`| ${r.model} | ${pct(r.answerEm)} | ${cols.map((_, l) => (l < r.layers ? pct(r.answerEmWithout[l]) : '')).join(' | ')} |`);
}
if (values.out) writeFileSync(values.out, JSON.stringify(results, null, 2) + '\n');
