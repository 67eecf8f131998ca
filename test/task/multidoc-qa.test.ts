// The multi-document QA generator: determinism, one answer document per question (checked by
// an independent reading of the text, not the generator's own bookkeeping), distractors that
// share names, attributes and formats, the knobs, disjoint seed ranges, and the scorer.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';

import {
  ATTRIBUTES,
  type AttributeName,
  exactMatch,
  formatCompletion,
  formatPrompt,
  generateExample,
  HELDOUT_SEEDS,
  heldOutSeed,
  type MultiDocQaExample,
  type MultiDocQaOptions,
  normalizeAnswer,
  PREFIX,
  TRAIN_SEEDS,
  trainSeed,
} from '../../lib/task/multidoc-qa.js';

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex').slice(0, 16);

interface ReadFact {
  entity: string;
  attribute: AttributeName;
  value: string;
}

// How each attribute reads in a document; subject is a full name, He/She, or a possessive.
const PATTERNS: readonly [AttributeName, RegExp][] = [
  ['city', /^(.+) lives in (.+)\.$/],
  ['employer', /^(.+) works at (.+)\.$/],
  ['year', /^(.+) was born in (\d{4})\.$/],
  ['locker', /^(.+) locker code is (\d{4})\.$/],
  ['extension', /^(.+) phone extension is (\d{4})\.$/],
  ['badge', /^(.+) badge number is (\d{3})\.$/],
  ['room', /^(.+) office is in room ([A-Z]\d{3})\.$/],
  ['pet', /^(.+) dog is called (.+)\.$/],
  ['color', /^(.+) favorite color is (.+)\.$/],
  ['plate', /^(.+) car plate is ([A-Z]{2}-\d{3})\.$/],
];

/** Facts a reader finds in one document: pronouns refer to the last person named in full. */
function readDocument(doc: string): ReadFact[] {
  const m = /^Doc (\d+)\. (.*)\n$/s.exec(doc);
  if (!m) throw new Error(`not a document: ${JSON.stringify(doc)}`);
  const out: ReadFact[] = [];
  let current: string | null = null;
  for (const sentence of m[2]!.split(/(?<=\.) /)) {
    for (const [attribute, re] of PATTERNS) {
      const s = re.exec(sentence);
      if (!s) continue;
      let subject = s[1]!;
      if (['He', 'She', 'His', 'Her'].includes(subject)) {
        if (current === null) throw new Error(`pronoun before any name in ${JSON.stringify(doc)}`);
        subject = current;
      } else {
        subject = subject.replace(/'s$/, '');
        expect(subject).toMatch(/^[A-Z][a-z]+ [A-Z][a-z]+$/);
        current = subject;
      }
      out.push({ entity: subject, attribute, value: s[2]! });
    }
  }
  return out;
}

/** Person and attribute a question asks about, read from its text. */
function readQuestion(question: string): { entity: string; attribute: AttributeName } {
  const q = /^Question: (.*)\nAnswer: (.*)$/.exec(question);
  if (!q) throw new Error(`not a question: ${JSON.stringify(question)}`);
  const text = q[1]!;
  const lead = q[2]!;
  const forms: [AttributeName, RegExp][] = [
    ['city', /^Where does (.+) live\?$/],
    ['employer', /^Where does (.+) work\?$/],
    ['year', /^In which year was (.+) born\?$/],
    ['locker', /^What is (.+)'s locker code\?$/],
    ['extension', /^What is (.+)'s phone extension\?$/],
    ['badge', /^What is (.+)'s badge number\?$/],
    ['room', /^Which room is (.+)'s office in\?$/],
    ['pet', /^What is (.+)'s dog called\?$/],
    ['color', /^What is (.+)'s favorite color\?$/],
    ['plate', /^What is (.+)'s car plate\?$/],
  ];
  for (const [attribute, re] of forms) {
    const m = re.exec(text);
    if (!m) continue;
    // The lead is the fact's sentence up to the value, as PATTERNS reads it.
    const pattern = PATTERNS.find(([a]) => a === attribute)![1];
    const s = pattern.exec(`${lead} X.`) ?? pattern.exec(`${lead} 1234.`) ?? pattern.exec(`${lead} 123.`) ?? pattern.exec(`${lead} A123.`) ?? pattern.exec(`${lead} AB-123.`) ?? pattern.exec(`${lead} 1999.`);
    expect(s, `lead ${JSON.stringify(lead)} of ${attribute}`).not.toBeNull();
    expect(s![1]!.replace(/'s$/, '')).toBe(m[1]);
    return { entity: m[1]!, attribute };
  }
  throw new Error(`unknown question form: ${text}`);
}

/** Checks that a question is answered by exactly one document, the one the example names. */
function checkAnswerable(ex: MultiDocQaExample, qa: { question: string; answer: string; answerDoc: number }): void {
  const { entity, attribute } = readQuestion(qa.question);
  const holders = ex.documents
    .map((doc, i) => ({ i, found: readDocument(doc).filter((f) => f.entity === entity && f.attribute === attribute) }))
    .filter((h) => h.found.length > 0);
  expect(holders.map((h) => h.i)).toEqual([qa.answerDoc]);
  expect(holders[0]!.found).toHaveLength(1);
  expect(holders[0]!.found[0]!.value).toBe(qa.answer);
}

const SETTINGS: MultiDocQaOptions[] = [
  {},
  { numDocs: 1 },
  { numDocs: 2, docLength: 1 },
  { numDocs: 20, docLength: 4, confusability: 1 },
  { numDocs: 12, docLength: 10, confusability: 0 },
  { numDocs: 40, docLength: 6, confusability: 0.9, extraQuestions: 8 },
  { numDocs: 6, confusability: 0.5, answerPosition: 'last', extraQuestions: 3 },
  { numDocs: 10, docLength: 8, confusability: 0.8, pronouns: true },
];

describe('generateExample', () => {
  it('is deterministic in (seed, options), and seeds differ', () => {
    for (const opts of SETTINGS) {
      expect(generateExample(trainSeed(5), opts)).toEqual(generateExample(trainSeed(5), opts));
    }
    const prompts = new Set(Array.from({ length: 50 }, (_, i) => formatPrompt(generateExample(heldOutSeed(i)))));
    expect(prompts.size).toBe(50);
    // Pinned: held-out questions must not drift across platforms or refactors unnoticed (a
    // deliberate change of the generator updates these, and retrains the embedded model).
    const ex = generateExample(heldOutSeed(0));
    expect([ex.question, ex.answer]).toEqual(['Question: Where does Kaia Ibsen live?\nAnswer: Kaia Ibsen lives in', 'Ostmark']);
    expect(sha256(formatPrompt(ex) + '|' + ex.answer)).toBe('b28cc8fe436de17d');
    expect(sha256(JSON.stringify(generateExample(trainSeed(123), { numDocs: 20, confusability: 1, extraQuestions: 3 })))).toBe('b593af97b7f6e3e3');
  });

  it('lays out prefix, documents and question so that they can be cached and scored apart', () => {
    for (let i = 0; i < 30; i++) {
      const ex = generateExample(trainSeed(i), { extraQuestions: 2 });
      expect(ex.prefix).toBe(PREFIX);
      expect(ex.prefix.endsWith('\n')).toBe(true);
      for (const doc of ex.documents) {
        expect(doc).toMatch(/^Doc \d+\. [A-Z][^\n]*\.\n$/);
        // No template twice in a document: sentences differ in their first three words unless
        // they state facts (which name a person).
        const openings = doc.trim().split(/(?<=\.) /).slice(1).filter((x) => !/^[A-Z][a-z]+ [A-Z][a-z]+('s)? /.test(x)).map((x) => x.split(' ').slice(0, 3).join(' '));
        expect(new Set(openings).size, doc).toBe(openings.length);
      }
      expect(ex.question).toMatch(/^Question: [A-Z][^\n]*\?\nAnswer: [A-Z][^\n]*[a-z]$/);
      expect(ex.question.endsWith(`Answer: ${ex.lead}`)).toBe(true);
      expect(ex.documents[ex.answerDoc]).toContain(`${ex.lead} ${ex.answer}.`);
      expect(formatPrompt(ex)).toBe(ex.prefix + ex.documents.join('') + ex.question);
      expect(formatCompletion(ex.answer)).toBe(` ${ex.answer}`);
      expect(ex.answer).toMatch(/^[A-Za-z0-9][A-Za-z0-9 -]*$/);
      expect(ex.documents[ex.answerDoc]).toContain(ex.answer);
      expect(ex.documents[ex.answerDoc]).toContain(ex.entity);
      // Document ids are distinct, so no two documents read the same.
      const ids = ex.documents.map((d) => /^Doc (\d+)\./.exec(d)![1]);
      expect(new Set(ids).size).toBe(ids.length);
    }
  });

  it('answers every question, main and extra, from exactly one document', () => {
    let checked = 0;
    for (const opts of SETTINGS) {
      for (let i = 0; i < 40; i++) {
        const ex = generateExample(heldOutSeed(1000 + i), opts);
        checkAnswerable(ex, ex);
        for (const qa of ex.extra) checkAnswerable(ex, qa);
        checked += 1 + ex.extra.length;
        // The generator's fact list is what a reader finds.
        const read = ex.documents.flatMap((d, doc) => readDocument(d).map((f) => ({ doc, ...f })));
        expect(read).toEqual(ex.facts);
      }
    }
    expect(checked).toBeGreaterThan(SETTINGS.length * 40);
  });

  it('extra questions ask about distinct facts, none of them the main one', () => {
    const ex = generateExample(trainSeed(77), { numDocs: 10, extraQuestions: 12 });
    expect(ex.extra).toHaveLength(12);
    const keys = [ex, ...ex.extra].map((q) => `${q.entity}|${q.attribute}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('distractors reuse the subject, its names, the asked attribute and its format, more so when confusable', () => {
    const measure = (confusability: number) => {
      let namesakeSameAttr = 0;
      let subjectElsewhere = 0;
      let sameFormatElsewhere = 0;
      const n = 200;
      for (let i = 0; i < n; i++) {
        const ex = generateExample(heldOutSeed(5000 + i), { numDocs: 8, confusability });
        const [first, last] = ex.entity.split(' ');
        const elsewhere = ex.facts.filter((f) => f.doc !== ex.answerDoc);
        if (elsewhere.some((f) => f.attribute === ex.attribute && f.entity !== ex.entity && (f.entity.startsWith(`${first} `) || f.entity.endsWith(` ${last}`)))) {
          namesakeSameAttr++;
        }
        if (elsewhere.some((f) => f.entity === ex.entity)) subjectElsewhere++;
        if (elsewhere.some((f) => f.attribute === ex.attribute)) sameFormatElsewhere++;
      }
      return { namesakeSameAttr: namesakeSameAttr / n, subjectElsewhere: subjectElsewhere / n, sameFormatElsewhere: sameFormatElsewhere / n };
    };
    const hard = measure(1);
    const easy = measure(0);
    expect(hard.namesakeSameAttr).toBeGreaterThan(0.9);
    expect(hard.subjectElsewhere).toBeGreaterThan(0.9);
    expect(hard.sameFormatElsewhere).toBeGreaterThan(0.95);
    expect(easy.namesakeSameAttr).toBeLessThan(hard.namesakeSameAttr / 2);
    expect(easy.subjectElsewhere).toBeLessThan(hard.subjectElsewhere / 2);
    // Even the easy setting keeps the asked attribute in other documents most of the time.
    expect(easy.sameFormatElsewhere).toBeGreaterThan(0.5);
  });

  it('numDocs and docLength set the number and length of documents', () => {
    for (const numDocs of [1, 3, 17, 60]) {
      expect(generateExample(trainSeed(3), { numDocs }).documents).toHaveLength(numDocs);
    }
    const sentences = (doc: string) => doc.replace(/^Doc \d+\. /, '').trim().split(/(?<=\.) /).length;
    for (const docLength of [1, 4, 9, 15]) {
      const ex = generateExample(trainSeed(4), { numDocs: 6, docLength, confusability: 0.3 });
      for (const doc of ex.documents) expect(sentences(doc)).toBe(docLength);
    }
    const words = (o: MultiDocQaOptions) => formatPrompt(generateExample(trainSeed(9), o)).split(/\s+/).length;
    expect(words({ docLength: 12 })).toBeGreaterThan(words({ docLength: 3 }) * 2.5);
  });

  it('answerPosition places the answer document', () => {
    for (let i = 0; i < 20; i++) {
      const s = heldOutSeed(i);
      expect(generateExample(s, { numDocs: 9, answerPosition: 'first' }).answerDoc).toBe(0);
      expect(generateExample(s, { numDocs: 9, answerPosition: 'middle' }).answerDoc).toBe(4);
      expect(generateExample(s, { numDocs: 9, answerPosition: 'last' }).answerDoc).toBe(8);
      expect(generateExample(s, { numDocs: 9, answerPosition: 6 }).answerDoc).toBe(6);
      const ex = generateExample(s, { numDocs: 9, answerPosition: 6 });
      checkAnswerable(ex, ex);
    }
    const seen = new Set(Array.from({ length: 200 }, (_, i) => generateExample(trainSeed(i), { numDocs: 5 }).answerDoc));
    expect([...seen].sort()).toEqual([0, 1, 2, 3, 4]);
  });

  it('asks about every attribute', () => {
    const asked = new Set(Array.from({ length: 300 }, (_, i) => generateExample(trainSeed(i)).attribute));
    expect([...asked].sort()).toEqual([...ATTRIBUTES].sort());
  });

  it('rejects bad options and seeds', () => {
    expect(() => generateExample(-1)).toThrow(RangeError);
    expect(() => generateExample(1.5)).toThrow(RangeError);
    expect(() => generateExample(1, { numDocs: 0 })).toThrow(/numDocs/);
    expect(() => generateExample(1, { docLength: 0 })).toThrow(/docLength/);
    expect(() => generateExample(1, { confusability: 1.5 })).toThrow(/confusability/);
    expect(() => generateExample(1, { numDocs: 4, answerPosition: 4 })).toThrow(/answerPosition/);
    expect(() => generateExample(1, { answerPosition: 'end' as never })).toThrow(/answerPosition/);
    expect(() => generateExample(1, { extraQuestions: -1 })).toThrow(/extraQuestions/);
  });
});

describe('seed ranges', () => {
  it('train and held-out seeds are disjoint ranges', () => {
    expect(TRAIN_SEEDS.end).toBeLessThanOrEqual(HELDOUT_SEEDS.start);
    expect(trainSeed(0)).toBe(TRAIN_SEEDS.start);
    expect(heldOutSeed(0)).toBe(HELDOUT_SEEDS.start);
    expect(trainSeed(TRAIN_SEEDS.end - TRAIN_SEEDS.start - 1)).toBeLessThan(heldOutSeed(0));
    expect(() => trainSeed(TRAIN_SEEDS.end - TRAIN_SEEDS.start)).toThrow(RangeError);
    expect(() => heldOutSeed(HELDOUT_SEEDS.end - HELDOUT_SEEDS.start)).toThrow(RangeError);
    expect(() => heldOutSeed(-1)).toThrow(RangeError);
  });

  it('held-out prompts do not repeat training prompts', () => {
    const train = new Set(Array.from({ length: 300 }, (_, i) => formatPrompt(generateExample(trainSeed(i)))));
    for (let i = 0; i < 300; i++) expect(train.has(formatPrompt(generateExample(heldOutSeed(i))))).toBe(false);
  });
});

describe('exactMatch', () => {
  it('compares after trimming whitespace and one trailing period', () => {
    expect(exactMatch(' 4821', '4821')).toBe(true);
    expect(exactMatch('4821.\n', '4821')).toBe(true);
    expect(exactMatch('Halvik Mills', 'Halvik Mills')).toBe(true);
    expect(exactMatch('482', '4821')).toBe(false);
    expect(exactMatch('48210', '4821')).toBe(false);
    expect(exactMatch('halvik mills', 'Halvik Mills')).toBe(false);
    expect(exactMatch('', '4821')).toBe(false);
    expect(normalizeAnswer('  KT-492. ')).toBe('KT-492');
  });
});
