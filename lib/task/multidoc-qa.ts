// Synthetic multi-document question answering: the task the embedded default model is trained
// and judged on.
//
// A prompt is a shared prefix (the instruction), a list of documents and one question. Each
// document states a few facts about invented people ("Doc 417. Mira Olsen lives in Tarn. Mira
// Olsen's locker code is 4821.") among filler sentences; distractor documents reuse the same first and
// last names, the same attributes and the same value formats (other four-digit codes, other
// rooms, other cities). The question asks for one fact, (person, attribute), that is stated in
// exactly one document, and its answer is a short exact string.
//
// Everything is a pure function of (seed, options): the same seed and knobs give the same text
// on every platform. Train and held-out examples are drawn from disjoint seed ranges
// (TRAIN_SEEDS, HELDOUT_SEEDS). A document's text does not depend on its position in the prompt,
// so later stages can cache each document after the shared prefix and move it around.
//
// Text layout, chosen so that token boundaries fall between the parts (byte-level BPE splits
// before a single "\n" followed by a letter): the prefix ends with "\n", every document ends with
// "\n", and the question starts with a letter and ends with "Answer:" and the answer's lead: the
// words the document states the fact with, up to the value ("Answer: Mira Olsen's locker code
// is"). The expected completion is " " + answer, then the end-of-sequence token.
//
// The lead makes the answer a continuation of the fact's own sentence: a reader finds it by
// matching the lead in the documents (where namesakes and the subject's other facts share most
// of its words) and copying what follows. Small models learn that match-and-copy (induction)
// circuit quickly; without the lead they must also learn to map a question's wording onto the
// statement's, which a model trained for minutes on a CPU did not.

export type AttributeName =
  | 'city'
  | 'employer'
  | 'locker'
  | 'extension'
  | 'badge'
  | 'room'
  | 'pet'
  | 'color'
  | 'year'
  | 'plate';

export const ATTRIBUTES: readonly AttributeName[] = ['city', 'employer', 'locker', 'extension', 'badge', 'room', 'pet', 'color', 'year', 'plate'];

export type AnswerPosition = number | 'random' | 'first' | 'middle' | 'last';

export interface MultiDocQaOptions {
  /** Documents in the prompt (>= 1). Default 8. */
  numDocs?: number;
  /** Sentences per document, facts and fillers together (>= 1). Default 6. */
  docLength?: number;
  /**
   * How confusable the distractors are, 0..1. At 0 names, attributes and values are spread
   * thin; at 1 a few first and last names recombine into every person, a few attributes recur
   * for all of them, and other documents state the asked attribute for people who share a name
   * with the subject, and other attributes of the subject itself. Default 0.7.
   */
  confusability?: number;
  /** Index of the answer document (0-based), or 'first' | 'middle' | 'last' | 'random' (default). */
  answerPosition?: AnswerPosition;
  /** Further questions about other facts of the same documents (for training). Default 0. */
  extraQuestions?: number;
  /**
   * Refer to a person by He/She/His/Her after their first fact in a document. Default false:
   * every fact names its person in full ("Mira Olsen's locker code is 4821."), which the
   * embedded model is trained on; with pronouns a reader must also resolve coreference.
   */
  pronouns?: boolean;
}

export interface Fact {
  /** Index of the document that states it. */
  readonly doc: number;
  readonly entity: string;
  readonly attribute: AttributeName;
  readonly value: string;
}

export interface QuestionAnswer {
  /** "Question: ...?\nAnswer: <lead>", e.g. "Question: Where does Mira Olsen live?\nAnswer: Mira Olsen lives in". */
  readonly question: string;
  /** The answer's lead alone: the fact's sentence up to the value ("Mira Olsen lives in"). */
  readonly lead: string;
  /** The exact answer string (the model should write " " + answer, then end of sequence). */
  readonly answer: string;
  /** Index of the one document that holds the answer. */
  readonly answerDoc: number;
  readonly entity: string;
  readonly attribute: AttributeName;
}

export interface MultiDocQaExample extends QuestionAnswer {
  readonly seed: number;
  /** Shared instruction, the same for every example; ends with "\n". */
  readonly prefix: string;
  /** Documents in prompt order; each starts with "Doc <id>." and ends with "\n". */
  readonly documents: readonly string[];
  /** Every fact stated in the documents. */
  readonly facts: readonly Fact[];
  /** Questions beyond the main one (options.extraQuestions), each about a different fact. */
  readonly extra: readonly QuestionAnswer[];
  /** The options in force, defaults filled in. */
  readonly options: Required<MultiDocQaOptions>;
}

/** Seeds of training examples: [start, end). */
export const TRAIN_SEEDS = { start: 0, end: 1_000_000_000 } as const;
/** Seeds of held-out examples: [start, end), disjoint from TRAIN_SEEDS. */
export const HELDOUT_SEEDS = { start: 1_000_000_000, end: 1_100_000_000 } as const;

/** The i-th training seed. */
export function trainSeed(i: number): number {
  return seedIn(TRAIN_SEEDS, i, 'trainSeed');
}

/** The i-th held-out seed. */
export function heldOutSeed(i: number): number {
  return seedIn(HELDOUT_SEEDS, i, 'heldOutSeed');
}

function seedIn(range: { start: number; end: number }, i: number, what: string): number {
  if (!Number.isInteger(i) || i < 0 || range.start + i >= range.end) throw new RangeError(`${what}: index ${i} is outside [0, ${range.end - range.start})`);
  return range.start + i;
}

export const PREFIX = 'Read the documents below. Answer the question with the exact value stated in the one document that gives it.\n';

export const DEFAULT_OPTIONS: Required<MultiDocQaOptions> = {
  numDocs: 8,
  docLength: 6,
  confusability: 0.7,
  answerPosition: 'random',
  extraQuestions: 0,
  pronouns: false,
};

// ---------------------------------------------------------------------------------------------
// Word lists: invented names, places and companies.

const FEMALE = ['Mira', 'Lena', 'Tove', 'Kaia', 'Sela', 'Ines', 'Maren', 'Ylva', 'Noor', 'Edda', 'Runa', 'Liv', 'Aster', 'Dagny', 'Perrin', 'Isolde',
  'Willa', 'Hedda', 'Celia', 'Oona', 'Brit', 'Freya', 'Anouk', 'Signe', 'Talia', 'Vera', 'Esme', 'Malin', 'Greta', 'Juno'];
const MALE = ['Jon', 'Arne', 'Ivo', 'Bram', 'Nilo', 'Teo', 'Soren', 'Halvar', 'Emil', 'Kasper', 'Otto', 'Rune', 'Leif', 'Anders', 'Milo', 'Torben',
  'Felix', 'Casimir', 'Aksel', 'Viggo', 'Dario', 'Espen', 'Linus', 'Matteo', 'Oskar', 'Pavel', 'Ruben', 'Stellan', 'Tomas', 'Umberto'];
const LAST = ['Olsen', 'Berg', 'Vance', 'Korte', 'Marsh', 'Pell', 'Dunmore', 'Halloway', 'Strand', 'Quist', 'Ferro', 'Lindqvist', 'Ashby', 'Brandt',
  'Castell', 'Devor', 'Eklund', 'Falk', 'Garrow', 'Holm', 'Ibsen', 'Jarvik', 'Kell', 'Lowe', 'Moreau', 'Norrby', 'Ortega', 'Penn', 'Rask', 'Sund',
  'Thorne', 'Ulven', 'Varga', 'Wilde', 'Yates', 'Zeller', 'Brook', 'Crane', 'Dahl', 'Frost'];
const CITIES = ['Tarn', 'Vell', 'Ostmark', 'Brisa', 'Calder', 'Dunholm', 'Eskar', 'Fenwick', 'Galt', 'Harrowgate', 'Ilsby', 'Jorvik', 'Kestrel',
  'Lunde', 'Marrow', 'Nesby', 'Orrin', 'Pellham', 'Quarry', 'Rivenmouth', 'Saltby', 'Torvik', 'Umber', 'Valda', 'Westfold', 'Yarrow', 'Zennor',
  'Ashford', 'Brightwater', 'Coldharbor', 'Drennick', 'Elmstead', 'Farrowdale', 'Glenmoor', 'Hollin', 'Irongate', 'Juniper', 'Kilnsey'];
const COMPANY_A = ['Halvik', 'Norrow', 'Brent', 'Quill', 'Ostrander', 'Marlow', 'Vesper', 'Tamsin', 'Corvid', 'Ember', 'Fairlight', 'Gantry',
  'Heron', 'Ironwood', 'Kettle', 'Lantern', 'Meridian', 'Northgate'];
const COMPANY_B = ['Mills', 'Labs', 'Foods', 'Works', 'Press', 'Bank', 'Logistics', 'Textiles', 'Studios', 'Clinic', 'Freight', 'Bakery'];
const PETS = ['Pip', 'Rolo', 'Biscuit', 'Moss', 'Juniper', 'Pepper', 'Clover', 'Bramble', 'Nutmeg', 'Ziggy', 'Tansy', 'Waffle', 'Sprout', 'Basil',
  'Fudge', 'Echo', 'Otis', 'Maple', 'Pickle', 'Rusty', 'Saffron', 'Tofu', 'Comet', 'Dusty', 'Ginger', 'Hazel', 'Kip', 'Lulu', 'Mango', 'Noodle'];
const COLORS = ['teal', 'crimson', 'amber', 'olive', 'indigo', 'coral', 'maroon', 'ochre', 'violet', 'cyan', 'magenta', 'scarlet', 'navy', 'beige',
  'lilac', 'turquoise', 'emerald', 'silver', 'bronze', 'saffron'];
const DAYS = ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const LETTERS = 'ABCDEFGHKLMNPRSTVW';

// ---------------------------------------------------------------------------------------------
// Random numbers: mulberry32 seeded through a splitmix32 scramble, so neighbouring seeds give
// unrelated streams.

export class Rng {
  #s: number;
  constructor(seed: number) {
    let z = (seed >>> 0) ^ Math.floor(seed / 4294967296);
    z = (z + 0x9e3779b9) >>> 0;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    this.#s = (z ^ (z >>> 16)) >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  pick<T>(list: readonly T[]): T {
    return list[this.int(list.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  shuffle<T>(list: T[]): T[] {
    for (let i = list.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [list[i], list[j]] = [list[j]!, list[i]!];
    }
    return list;
  }
  /** k distinct items of list, in random order. */
  sample<T>(list: readonly T[], k: number): T[] {
    return this.shuffle([...list]).slice(0, k);
  }
}

// ---------------------------------------------------------------------------------------------
// Attributes: how each is stated, asked and valued.

interface Person {
  readonly first: string;
  readonly last: string;
  readonly name: string;
  readonly female: boolean;
}

interface AttributeSpec {
  /** The sentence; subject is the full name or He/She, possessive "Mira Olsen's" or His/Her. */
  state(subject: string, possessive: string, value: string): string;
  ask(name: string): string;
  value(rng: Rng): string;
}

const digits = (rng: Rng, n: number): string => String(rng.range(10 ** (n - 1), 10 ** n - 1));

const ATTRIBUTE_SPECS: Record<AttributeName, AttributeSpec> = {
  city: { state: (s, _p, v) => `${s} lives in ${v}.`, ask: (n) => `Where does ${n} live?`, value: (r) => r.pick(CITIES) },
  employer: {
    state: (s, _p, v) => `${s} works at ${v}.`,
    ask: (n) => `Where does ${n} work?`,
    value: (r) => `${r.pick(COMPANY_A)} ${r.pick(COMPANY_B)}`,
  },
  locker: { state: (_s, p, v) => `${p} locker code is ${v}.`, ask: (n) => `What is ${n}'s locker code?`, value: (r) => digits(r, 4) },
  extension: { state: (_s, p, v) => `${p} phone extension is ${v}.`, ask: (n) => `What is ${n}'s phone extension?`, value: (r) => digits(r, 4) },
  badge: { state: (_s, p, v) => `${p} badge number is ${v}.`, ask: (n) => `What is ${n}'s badge number?`, value: (r) => digits(r, 3) },
  room: {
    state: (_s, p, v) => `${p} office is in room ${v}.`,
    ask: (n) => `Which room is ${n}'s office in?`,
    value: (r) => `${r.pick([...LETTERS])}${digits(r, 3)}`,
  },
  pet: { state: (_s, p, v) => `${p} dog is called ${v}.`, ask: (n) => `What is ${n}'s dog called?`, value: (r) => r.pick(PETS) },
  color: { state: (_s, p, v) => `${p} favorite color is ${v}.`, ask: (n) => `What is ${n}'s favorite color?`, value: (r) => r.pick(COLORS) },
  year: { state: (s, _p, v) => `${s} was born in ${v}.`, ask: (n) => `In which year was ${n} born?`, value: (r) => String(r.range(1950, 2005)) },
  plate: {
    state: (_s, p, v) => `${p} car plate is ${v}.`,
    ask: (n) => `What is ${n}'s car plate?`,
    value: (r) => `${r.pick([...LETTERS])}${r.pick([...LETTERS])}-${digits(r, 3)}`,
  },
};

/** Person-free filler sentences; some reuse the value formats of the facts (codes, rooms, cities). */
const FILLERS: readonly ((r: Rng) => string)[] = [
  (r) => `The ${r.pick(COMPANY_A)} ${r.pick(COMPANY_B)} office closed early on ${r.pick(DAYS)}.`,
  (r) => `Rain is expected in ${r.pick(CITIES)} on ${r.pick(DAYS)}.`,
  (r) => `Room ${r.pick([...LETTERS])}${digits(r, 3)} was repainted in ${r.pick(MONTHS)}.`,
  (r) => `The code for the supply closet is ${digits(r, 4)}.`,
  (r) => `A new printer was installed on floor ${r.range(2, 19)}.`,
  (r) => `Parking passes now cost ${r.range(12, 95)} dollars a month.`,
  (r) => `The shuttle to ${r.pick(CITIES)} leaves every ${r.range(10, 45)} minutes.`,
  (r) => `The library in ${r.pick(CITIES)} opened in ${r.range(1950, 2005)}.`,
  (r) => `Visitors must sign in at desk ${digits(r, 3)}.`,
  (r) => `The ${r.pick(MONTHS)} newsletter was sent to every team.`,
  (r) => `The fire drill is planned for ${r.pick(DAYS)} morning.`,
  (r) => `The old bridge near ${r.pick(CITIES)} is closed for repairs.`,
  (r) => `The cafeteria now serves soup on ${r.pick(DAYS)}.`,
  (r) => `A lost ${r.pick(COLORS)} umbrella is waiting at reception.`,
  (r) => `The delivery van has plate ${r.pick([...LETTERS])}${r.pick([...LETTERS])}-${digits(r, 3)}.`,
  (r) => `The quarterly report was delayed by ${r.range(2, 9)} days.`,
];

function lerp(a: number, b: number, t: number): number {
  return a + (b - a) * t;
}

function resolveOptions(options: MultiDocQaOptions): Required<MultiDocQaOptions> {
  const o = { ...DEFAULT_OPTIONS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as Required<MultiDocQaOptions>;
  const int = (name: keyof MultiDocQaOptions, min: number, max: number): void => {
    const v = o[name];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new RangeError(`${name}: expected an integer in [${min}, ${max}] but received ${String(v)}`);
  };
  int('numDocs', 1, 500);
  int('docLength', 1, 40);
  int('extraQuestions', 0, 64);
  if (typeof o.pronouns !== 'boolean') throw new RangeError(`pronouns: expected a boolean but received ${String(o.pronouns)}`);
  if (typeof o.confusability !== 'number' || !(o.confusability >= 0 && o.confusability <= 1)) {
    throw new RangeError(`confusability: expected a number in [0, 1] but received ${String(o.confusability)}`);
  }
  const p = o.answerPosition;
  if (typeof p === 'number') {
    if (!Number.isInteger(p) || p < 0 || p >= o.numDocs) throw new RangeError(`answerPosition: expected an index in [0, ${o.numDocs}) but received ${p}`);
  } else if (!['random', 'first', 'middle', 'last'].includes(p)) {
    throw new RangeError(`answerPosition: expected an index or 'random' | 'first' | 'middle' | 'last' but received ${String(p)}`);
  }
  return o;
}

function answerIndex(position: AnswerPosition, numDocs: number, rng: Rng): number {
  if (typeof position === 'number') return position;
  if (position === 'first') return 0;
  if (position === 'last') return numDocs - 1;
  if (position === 'middle') return Math.floor((numDocs - 1) / 2);
  return rng.int(numDocs);
}

/** Facts per document for a document of `docLength` sentences. */
function factsPerDoc(docLength: number): number {
  return Math.max(1, Math.round(docLength * 0.6));
}

/**
 * One example: the prompt parts, the question and its answer. Deterministic in (seed, options).
 */
export function generateExample(seed: number, options: MultiDocQaOptions = {}): MultiDocQaExample {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed: expected a non-negative safe integer but received ${String(seed)}`);
  const o = resolveOptions(options);
  const rng = new Rng(seed);
  const c = o.confusability;
  const nFacts = factsPerDoc(o.docLength);
  const totalFacts = o.numDocs * nFacts;

  // Attributes in play: all ten at confusability 0, four at 1 (always including the asked one).
  const targetAttr = rng.pick(ATTRIBUTES);
  const attrCount = Math.max(2, Math.round(lerp(ATTRIBUTES.length, 4, c)));
  const attrPool = [targetAttr, ...rng.sample(ATTRIBUTES.filter((a) => a !== targetAttr), attrCount - 1)];

  // People: at high confusability few first and last names recombine into everyone, and each
  // person carries more facts.
  const perPerson = lerp(1.5, Math.min(3, attrPool.length * 0.75), c);
  const poolSize = Math.max(3, Math.ceil(totalFacts / perPerson));
  const side = Math.ceil(Math.sqrt(poolSize));
  const nFirst = Math.min(FEMALE.length + MALE.length, Math.max(side, Math.round(lerp(poolSize, side, c))));
  const nLast = Math.min(LAST.length, Math.max(Math.ceil(poolSize / nFirst), Math.round(lerp(poolSize, side, c))));
  const firsts = rng.sample([...FEMALE.map((n) => ({ n, f: true })), ...MALE.map((n) => ({ n, f: false }))], nFirst);
  const lasts = rng.sample(LAST, nLast);
  const grid: Person[] = [];
  for (const f of firsts) for (const l of lasts) grid.push({ first: f.n, last: l, name: `${f.n} ${l}`, female: f.f });
  const people = rng.sample(grid, Math.min(grid.length, poolSize));
  const target = people[0]!;

  // Facts already assigned: person -> attribute -> value; values are distinct per attribute.
  const assigned = new Map<string, Map<AttributeName, string>>();
  const usedValues = new Map<AttributeName, Set<string>>();
  const hasFact = (p: Person, a: AttributeName): boolean => assigned.get(p.name)?.has(a) ?? false;
  const freshValue = (a: AttributeName): string | null => {
    const used = usedValues.get(a) ?? new Set<string>();
    for (let tries = 0; tries < 50; tries++) {
      const v = ATTRIBUTE_SPECS[a].value(rng);
      if (!used.has(v)) return v;
    }
    return null;
  };
  const assign = (p: Person, a: AttributeName, v: string): void => {
    if (!assigned.has(p.name)) assigned.set(p.name, new Map());
    assigned.get(p.name)!.set(a, v);
    if (!usedValues.has(a)) usedValues.set(a, new Set());
    usedValues.get(a)!.add(v);
  };

  // Per document: person -> attributes stated there, in order.
  const docs: Map<Person, AttributeName[]>[] = Array.from({ length: o.numDocs }, () => new Map());
  const docFactCount = (d: number): number => [...docs[d]!.values()].reduce((n, l) => n + l.length, 0);
  const place = (d: number, p: Person, a: AttributeName, v: string): void => {
    assign(p, a, v);
    const list = docs[d]!.get(p) ?? [];
    list.push(a);
    docs[d]!.set(p, list);
  };

  const answerDoc = answerIndex(o.answerPosition, o.numDocs, rng);
  const answer = freshValue(targetAttr)!;
  place(answerDoc, target, targetAttr, answer);

  // Hard distractors, in other documents: the asked attribute for people who share the
  // subject's first or last name, and other attributes of the subject.
  const others = Array.from({ length: o.numDocs }, (_, i) => i).filter((i) => i !== answerDoc);
  if (others.length > 0) {
    const namesakes = people.filter((p) => p !== target && (p.first === target.first || p.last === target.last));
    const forced = Math.round(c * 4);
    for (let k = 0; k < forced; k++) {
      const d = rng.pick(others);
      if (docFactCount(d) >= nFacts) continue;
      if (k % 2 === 0 && namesakes.length > 0) {
        const p = rng.pick(namesakes);
        const v = hasFact(p, targetAttr) ? null : freshValue(targetAttr);
        if (v !== null) place(d, p, targetAttr, v);
      } else {
        const free = attrPool.filter((a) => !hasFact(target, a));
        const a = free.length > 0 ? rng.pick(free) : null;
        const v = a === null ? null : freshValue(a);
        if (a !== null && v !== null) place(d, target, a, v);
      }
    }
  }

  // Fill every document up to its fact count: a few people per document, 1-3 facts each.
  const newPerson = (): Person => {
    // Fallback when the pooled people have run out of attributes: a fresh name.
    for (;;) {
      const female = rng.chance(0.5);
      const first = rng.pick(female ? FEMALE : MALE);
      const last = rng.pick(LAST);
      const person: Person = { first, last, name: `${first} ${last}`, female };
      if (!people.some((q) => q.name === person.name)) {
        people.push(person);
        return person;
      }
    }
  };
  for (let d = 0; d < o.numDocs; d++) {
    let guard = 0;
    while (docFactCount(d) < nFacts && guard++ < 200) {
      const inDoc = [...docs[d]!.keys()];
      // Continue with a person already in this document, or bring in another.
      const p = inDoc.length > 0 && rng.chance(0.45) ? rng.pick(inDoc) : people.length > 0 && guard < 150 ? rng.pick(people) : newPerson();
      if (p === target && d !== answerDoc && rng.chance(1 - c)) continue;
      const free = attrPool.filter((a) => !hasFact(p, a));
      if (free.length === 0) continue;
      const a = rng.pick(free);
      const v = freshValue(a);
      if (v === null) continue;
      place(d, p, a, v);
    }
  }

  // Render. Within a document, people come in random order; each fact names its person in
  // full (with options.pronouns only the first does, later ones use a pronoun). Fillers go
  // between people's blocks.
  const ids = rng.sample(Array.from({ length: 999 }, (_, i) => i + 1), o.numDocs);
  const facts: Fact[] = [];
  const documents = docs.map((byPerson, d) => {
    const blocks: string[][] = [];
    for (const p of rng.shuffle([...byPerson.keys()])) {
      const attrs = rng.shuffle([...byPerson.get(p)!]);
      const sentences = attrs.map((a, i) => {
        const v = assigned.get(p.name)!.get(a)!;
        facts.push({ doc: d, entity: p.name, attribute: a, value: v });
        const named = i === 0 || !o.pronouns;
        const subject = named ? p.name : p.female ? 'She' : 'He';
        const possessive = named ? `${p.name}'s` : p.female ? 'Her' : 'His';
        return ATTRIBUTE_SPECS[a].state(subject, possessive, v);
      });
      blocks.push(sentences);
    }
    const nFill = Math.max(0, o.docLength - docFactCount(d));
    // Distinct filler templates within a document (a document does not say the same thing twice).
    const fillers = rng.sample(FILLERS, Math.min(nFill, FILLERS.length));
    for (let k = 0; k < nFill; k++) blocks.splice(rng.int(blocks.length + 1), 0, [(fillers[k] ?? rng.pick(FILLERS))(rng)]);
    return `Doc ${ids[d]}. ${blocks.flat().join(' ')}\n`;
  });

  const qa = (f: Fact): QuestionAnswer => ({
    question: `Question: ${ATTRIBUTE_SPECS[f.attribute].ask(f.entity)}\nAnswer: ${answerLead(f.entity, f.attribute)}`,
    lead: answerLead(f.entity, f.attribute),
    answer: f.value,
    answerDoc: f.doc,
    entity: f.entity,
    attribute: f.attribute,
  });
  const main = qa({ doc: answerDoc, entity: target.name, attribute: targetAttr, value: answer });
  const rest = rng.shuffle(facts.filter((f) => !(f.entity === target.name && f.attribute === targetAttr)));
  const extra = rest.slice(0, o.extraQuestions).map(qa);

  return { seed, prefix: PREFIX, documents, facts, extra, options: o, ...main };
}

/** The words a document states (entity, attribute) with, up to the value: "Mira Olsen lives in". */
export function answerLead(entity: string, attribute: AttributeName): string {
  const mark = '\u0000';
  const sentence = ATTRIBUTE_SPECS[attribute].state(entity, `${entity}'s`, mark);
  return sentence.slice(0, sentence.indexOf(mark)).trimEnd();
}

/** The question's own words, without "Question: " and the answer's lead. */
export function questionText(qa: Pick<QuestionAnswer, 'question'>): string {
  return qa.question.slice('Question: '.length, qa.question.indexOf('\nAnswer:'));
}

/** The whole prompt as one string: prefix, documents in order, question. */
export function formatPrompt(example: Pick<MultiDocQaExample, 'prefix' | 'documents' | 'question'>): string {
  return example.prefix + example.documents.join('') + example.question;
}

/** The completion the model is trained to write after the prompt (before end of sequence). */
export function formatCompletion(answer: string): string {
  return ` ${answer}`;
}

/** Normalises a generated answer: surrounding whitespace and one trailing period are dropped. */
export function normalizeAnswer(text: string): string {
  return text.trim().replace(/\.$/, '').trim();
}

/** Exact match of a generated answer against the expected one, after normalizeAnswer. */
export function exactMatch(prediction: string, answer: string): boolean {
  return normalizeAnswer(prediction) === answer;
}
