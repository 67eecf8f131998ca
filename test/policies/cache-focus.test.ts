// CacheFocus's decisions as pure functions: document scores from the attention mass the kernels
// report, the keep rules (ties keep the earlier document), the allocations, the parallel-window
// layout beyond the context, and option validation.
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, policies } from '../../lib/index.js';
import { allocate, documentScores, keepDocuments, resolveCacheFocus, windowLayout } from '../../lib/policies/cache-focus.js';

describe('document scores', () => {
  // 2 query rows, 2 heads, 3 documents: mass[(row * heads + h) * docs + d].
  const mass = Float64Array.from([
    0.1, 0.5, 0.2, /* row 0, head 0 */ 0.3, 0.1, 0.4, /* row 0, head 1 */
    0.2, 0.2, 0.2, /* row 1, head 0 */ 0.0, 0.6, 0.2 /* row 1, head 1 */,
  ]);
  const lengths = [10, 20, 40];
  it('mean, max and sum over heads, then the mean over the scored rows', () => {
    const mean = documentScores(mass, 2, 2, 3, { scoreTokens: 'all', headReduction: 'mean', normalize: 'none' }, lengths);
    expect([...mean].map((x) => +x.toFixed(6))).toEqual([0.15, 0.35, 0.25]);
    const max = documentScores(mass, 2, 2, 3, { scoreTokens: 'all', headReduction: 'max', normalize: 'none' }, lengths);
    expect([...max].map((x) => +x.toFixed(6))).toEqual([0.25, 0.55, 0.3]);
    const sum = documentScores(mass, 2, 2, 3, { scoreTokens: 'all', headReduction: 'sum', normalize: 'none' }, lengths);
    expect([...sum].map((x) => +x.toFixed(6))).toEqual([0.3, 0.7, 0.5]);
  });
  it('{ last: k } scores with the last k rows only; length normalisation divides by the token count', () => {
    const last = documentScores(mass, 2, 2, 3, { scoreTokens: { last: 1 }, headReduction: 'sum', normalize: 'none' }, lengths);
    expect([...last].map((x) => +x.toFixed(6))).toEqual([0.2, 0.8, 0.4]);
    const norm = documentScores(mass, 2, 2, 3, { scoreTokens: 'all', headReduction: 'sum', normalize: 'length' }, lengths);
    expect([...norm].map((x) => +x.toFixed(6))).toEqual([0.03, 0.035, 0.0125]);
  });
});

describe('keep rules', () => {
  const score = [0.1, 0.4, 0.2, 0.2, 0.1];
  const held = [0, 1, 2, 3, 4];
  it('topK and fraction keep the best, in listed order; ties keep the earlier document', () => {
    expect(keepDocuments(held, score, { topK: 2 })).toEqual([1, 2]);
    expect(keepDocuments(held, score, { topK: 4 })).toEqual([0, 1, 2, 3]);
    expect(keepDocuments(held, score, { fraction: 0.5 })).toEqual([1, 2, 3]); // ceil(2.5) = 3
    expect(keepDocuments(held, score, { topK: 9 })).toEqual(held);
    expect(keepDocuments([4, 0], score, { topK: 1 })).toEqual([0]);
  });
  it('mass keeps the fewest documents whose normalised scores reach m', () => {
    expect(keepDocuments(held, score, { mass: 0.4 })).toEqual([1]);
    expect(keepDocuments(held, score, { mass: 0.41 })).toEqual([1, 2]);
    expect(keepDocuments(held, score, { mass: 0.8 })).toEqual([1, 2, 3]);
    expect(keepDocuments(held, score, { mass: 1 })).toEqual(held);
  });
});

describe('allocation and layout', () => {
  const lengths = [10, 20, 30];
  const score = [0.5, 0.1, 0.3];
  it("'align' packs in listed order, 'sort' in ascending score, 'none' keeps positions", () => {
    expect([...allocate([0, 2], lengths, score, 'align', 5, [5, 15, 35])]).toEqual([[0, 5], [2, 15]]);
    expect([...allocate([0, 1, 2], lengths, score, 'sort', 5, [])].sort((a, b) => a[0] - b[0])).toEqual([[0, 55], [1, 5], [2, 25]]);
    expect([...allocate([0, 2], lengths, score, 'none', 5, [5, 15, 35])]).toEqual([[0, 5], [2, 35]]);
  });
  it('documents beyond the range go into parallel windows from the prefix', () => {
    expect(windowLayout([10, 20, 30], 4, 100)).toEqual([4, 14, 34]);
    expect(windowLayout([30, 30, 30, 10], 4, 70)).toEqual([4, 34, 4, 34]);
    expect(() => windowLayout([80], 4, 70)).toThrow(/documents\[0\]/);
  });
});

describe('options', () => {
  it('policies.cacheFocus validates at once and names the option', () => {
    expect(policies.cacheFocus({ pruneLayers: [1], keep: { topK: 2 } })).toEqual({ name: 'cacheFocus', pruneLayers: [1], keep: { topK: 2 } });
    expect(() => policies.cacheFocus({ keep: { topK: 0 } })).toThrow(/policy\.keep\.topK/);
    expect(() => policies.cacheFocus({ keep: { fraction: 1.5 } })).toThrow(InvalidArgumentError);
    expect(() => policies.cacheFocus({ pruneLayers: [2, 1] })).toThrow(/ascending/);
    expect(() => policies.cacheFocus({ headReduction: 'median' as never })).toThrow(/headReduction/);
    expect(() => policies.cacheFocus({ scoreTokens: { last: 0 } })).toThrow(/scoreTokens/);
    expect(() => policies.cacheFocus({ pruneLayers: [0, 1], keep: [{ topK: 1 }] })).toThrow(/2 pruning layers/);
    expect(() => policies.cacheFocus({ bogus: 1 } as never)).toThrow(/unknown option 'bogus'/);
    const r = resolveCacheFocus({ name: 'cacheFocus' });
    expect(r).toMatchObject({ scoreTokens: 'all', headReduction: 'mean', normalize: 'none', accumulate: true, allocation: 'align' });
  });
});
