// Shared by make-data.mjs and eval.mjs: the task generator and tokenizer from the built package
// (run `npm run build:ts` first), and examples laid out as token ids that fit a context length.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
export const task = require('../../dist/cjs/task/multidoc-qa.js');
export const { Tokenizer } = require('../../dist/cjs/model/tokenizer.js');

/**
 * Token ids of an example: BOS + prefix, each document, then the main question followed by
 * its completion and </s>, then each extra question the same way. `answers` lists [start, end)
 * index ranges of the completion tokens (answer and </s>) that the loss is weighted on;
 * `promptLength` is where the first completion starts (what a model is prompted with);
 * `docStarts` are where the documents start and `docEnd` where the first question starts.
 */
export function encodeExample(tok, ex) {
  const ids = [...tok.encode(ex.prefix)];
  const docStarts = [];
  for (const d of ex.documents) {
    docStarts.push(ids.length);
    ids.push(...tok.encode(d, { addSpecialTokens: false }));
  }
  const docEnd = ids.length;
  const answers = [];
  let promptLength = -1;
  for (const qa of [ex, ...ex.extra]) {
    ids.push(...tok.encode(qa.question, { addSpecialTokens: false }));
    if (promptLength < 0) promptLength = ids.length;
    const start = ids.length;
    ids.push(...tok.encode(task.formatCompletion(qa.answer), { addSpecialTokens: false }), tok.eosTokenId);
    answers.push([start, ids.length]);
  }
  return { ids, answers, promptLength, docStarts, docEnd };
}

/**
 * The example of `seed` with as many documents as fit in `context` tokens (completions
 * included), at most `maxDocs`. Deterministic: tries numDocs from an estimate downwards.
 */
export function fitExample(tok, seed, context, options = {}, maxDocs = 500) {
  const docLength = options.docLength ?? task.DEFAULT_OPTIONS.docLength;
  const extra = options.extraQuestions ?? 0;
  const perDoc = docLength * 11 + 6;
  const budget = context - 30 - (extra + 1) * 24;
  let numDocs = Math.max(1, Math.min(maxDocs, Math.floor(budget / perDoc) + 2));
  for (;;) {
    const answerPosition = typeof options.answerPosition === 'number' ? Math.min(options.answerPosition, numDocs - 1) : options.answerPosition;
    const ex = task.generateExample(seed, { ...options, numDocs, answerPosition });
    const enc = encodeExample(tok, ex);
    if (enc.ids.length <= context || numDocs === 1) return { ex, ...enc };
    numDocs--;
  }
}
