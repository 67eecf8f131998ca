// The context methods of `npm run bench:quality`: what each one prompts the model with.
import { describe, expect, it } from 'vitest';

import { MAX_NEW_TOKENS, METHODS } from '../../scripts/bench/quality-methods.mjs';

// An encoded example by hand: prefix [1, 2], documents of 5, 7 and 4 tokens, question [9, 9, 9].
const ids = [1, 2, 10, 10, 10, 10, 10, 20, 20, 20, 20, 20, 20, 20, 30, 30, 30, 30, 9, 9, 9, 40, 41, 2];
const enc = { ids, docStarts: [2, 7, 14], docEnd: 18, promptLength: 21, answers: [[21, 24]] };
const prompt = ids.slice(0, 21);

describe('bench:quality methods', () => {
  it('full: the whole prompt while it fits in T with room for the answer', () => {
    const T = prompt.length + MAX_NEW_TOKENS;
    expect(METHODS.full.prompt(enc, T)).toEqual({ tokens: prompt, keptDocs: 3 });
  });

  it('full: drops whole documents from the front, keeping the prefix and the question', () => {
    let r = METHODS.full.prompt(enc, prompt.length + MAX_NEW_TOKENS - 1);
    expect(r.keptDocs).toBe(2);
    expect(r.tokens).toEqual([1, 2, 20, 20, 20, 20, 20, 20, 20, 30, 30, 30, 30, 9, 9, 9]);
    r = METHODS.full.prompt(enc, 2 + 4 + 3 + MAX_NEW_TOKENS);
    expect(r).toEqual({ tokens: [1, 2, 30, 30, 30, 30, 9, 9, 9], keptDocs: 1 });
    r = METHODS.full.prompt(enc, 8);
    expect(r).toEqual({ tokens: [1, 2, 9, 9, 9], keptDocs: 0 });
    for (let T = 21; T < 40; T++) {
      const n = METHODS.full.prompt(enc, T).tokens.length;
      expect(n + MAX_NEW_TOKENS <= T || METHODS.full.prompt(enc, T).keptDocs === 0).toBe(true);
    }
  });

  it('full-unbounded: the untruncated prompt', () => {
    expect(METHODS['full-unbounded'].prompt(enc, 8)).toEqual({ tokens: prompt, keptDocs: 3 });
  });

  it('every method has a label', () => {
    for (const m of Object.values(METHODS)) expect(typeof m.label).toBe('string');
  });
});
