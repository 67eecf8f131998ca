// The cascading KV cache: the policy's options and defaults, and the insertion rule of
// CascadeModel driven token by token with scripted attention, against slot contents, positions
// and gather lists worked out by hand from the authors' latest code (see the top of
// lib/policies/cascade-model.ts for the rule these traces follow).
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError } from '../../lib/errors.js';
import {
  CascadeModel,
  type CascadeModelOptions,
  type CascadeStep,
  type ChunkLayout,
  keptInSlotOrder,
  stridedChunks,
  stridedPrefill,
  tokensByPosition,
  weighAttention,
} from '../../lib/policies/cascade-model.js';
import { CASCADING_DEFAULTS, cascading } from '../../lib/policies/cascading.js';
import { policyNames, resolvePolicy } from '../../lib/policies/index.js';
import { rng } from '../support/random.js';

const zeros = (n: number): number[] => new Array<number>(n).fill(0);

/**
 * Inserts one token (group of one query head): its own attention `score`, and `slots` the
 * weighted attention this step gave to some slots (every other slot: 0).
 */
function one(model: CascadeModel, token: number, score = 0, slots: Record<number, number> = {}): CascadeStep {
  const row = zeros(model.capacity);
  for (const [s, v] of Object.entries(slots)) row[Number(s)] = v;
  return model.insert({ tokens: [token], slotScores: [row], chunkScores: [[score]] });
}

// 2 sinks, 3 cascades of 2 slots: capacity 8, slots [s0 s1 | c0 c0 | c1 c1 | c2 c2].
// The fill lasts while step <= 2 + 3 * 2 = 8; afterwards cascade i accepts iff (step - 2) % 2^i == 0.
const SMALL: CascadeModelOptions = { sinks: 2, window: 2, cascades: 3, beta: 0.5, headReduction: 'mean' };

/** SMALL after tokens 0..8, every score 0: the cache is full and has shifted once. */
function filled(): CascadeModel {
  const m = new CascadeModel(SMALL);
  for (let t = 0; t <= 8; t++) one(m, t);
  return m;
}

describe('cascading policy options', () => {
  it('is a known policy; defaults come from the authors\' experiment scripts', () => {
    expect(policyNames).toContain('cascading');
    const expected = { name: 'cascading', sinks: 64, window: 8192, cascades: 4, beta: 0.9999, headReduction: 'max', stride: 1024 };
    expect(resolvePolicy({ name: 'cascading' })).toEqual(expected);
    expect(cascading()).toEqual(expected);
    expect({ name: 'cascading', ...CASCADING_DEFAULTS }).toEqual(expected);
    expect(Object.isFrozen(cascading())).toBe(true);
  });

  it('keeps the options given and fills in the rest', () => {
    expect(cascading({ sinks: 4, window: 512, cascades: 8, beta: 0.995, headReduction: 'mean', stride: 4096 })).toEqual({
      name: 'cascading',
      sinks: 4,
      window: 512,
      cascades: 8,
      beta: 0.995,
      headReduction: 'mean',
      stride: 4096,
    });
    expect(resolvePolicy({ name: 'cascading', sinks: 0, window: 1, cascades: 1 })).toMatchObject({ sinks: 0, window: 1, cascades: 1, stride: 1024 });
  });

  const refused: [string, unknown, RegExp][] = [
    ['sinks below 0', { sinks: -1 }, /policy\.sinks: expected an integer in \[0, 2147483647\] \(tokens kept from the start of the stream\) but received number -1/],
    ['a fractional window', { window: 2.5 }, /policy\.window: expected an integer in \[1, 2147483647\] \(slots per cascade\) but received number 2\.5/],
    ['a window of 0', { window: 0 }, /policy\.window: .* received number 0/],
    ['a window given as text', { window: '256' }, /policy\.window: .* received '256'/],
    ['no cascade', { cascades: 0 }, /policy\.cascades: expected an integer in \[1, 32\] \(sub-caches\) but received number 0/],
    ['33 cascades', { cascades: 33 }, /policy\.cascades: .* received number 33/],
    ['beta 1', { beta: 1 }, /policy\.beta: expected a number strictly between 0 and 1 \(the EMA factor of the attention scores\) but received number 1/],
    ['beta 0', { beta: 0 }, /policy\.beta: .* received number 0/],
    ['beta NaN', { beta: NaN }, /policy\.beta: .* received number NaN/],
    ['an unknown head reduction', { headReduction: 'median' }, /policy\.headReduction: expected 'mean' or 'max' but received 'median'/],
    ['a stride of 0', { stride: 0 }, /policy\.stride: expected an integer in \[1, 2147483647\] \(prefill chunk length in tokens\) but received number 0/],
    ['more slots than 32-bit indices address', { window: 2 ** 30, cascades: 2 }, /policy: sinks \+ cascades \* window is 2147483712 slots \(64 \+ 2 \* 1073741824\); at most 2147483647/],
  ];
  for (const [what, options, message] of refused) {
    it(`refuses ${what}, naming the option`, () => {
      for (const call of [() => resolvePolicy({ name: 'cascading', ...(options as object) }), () => cascading(options as never)]) {
        const error = (() => {
          try {
            call();
          } catch (e) {
            return e;
          }
          return undefined;
        })();
        expect(error).toBeInstanceOf(InvalidArgumentError);
        expect((error as InvalidArgumentError).argument).toBe('policy');
        expect((error as Error).message).toMatch(message);
      }
    });
  }

  it('refuses options the cascading policy does not have', () => {
    expect(() => resolvePolicy({ name: 'cascading', budget: 3 })).toThrow(/unknown option 'budget' for policy 'cascading'; its options: name, sinks, window, cascades, beta, headReduction, stride/);
    expect(() => cascading({ windowSize: 3 } as never)).toThrow(/unknown option 'windowSize' for policy 'cascading'; its options: sinks, window, cascades, beta, headReduction, stride/);
    expect(() => cascading({ name: 'full' } as never)).toThrow(/unknown option 'name'/);
    expect(() => cascading(7 as never)).toThrow(/policy: expected the cascading options as an object but received number 7/);
  });
});

describe('acceptance schedule', () => {
  it('every cascade accepts every token while step <= sinks + cascades * window, then cascade i one in 2^i', () => {
    const m = new CascadeModel(SMALL);
    const table = (from: number, to: number): string[] =>
      Array.from({ length: to - from + 1 }, (_, k) => [0, 1, 2].map((i) => (m.accepts(from + k, i) ? 'y' : '.')).join(''));
    // steps 2..8: the fill (8 = 2 + 3 * 2: one step past full still shifts the whole cache)
    expect(table(2, 8)).toEqual(['yyy', 'yyy', 'yyy', 'yyy', 'yyy', 'yyy', 'yyy']);
    // steps 9..18: (step - 2) = 7..16; cascade 1 on even values, cascade 2 on multiples of 4
    expect(table(9, 18)).toEqual(['y..', 'yyy', 'y..', 'yy.', 'y..', 'yyy', 'y..', 'yy.', 'y..', 'yyy']);
  });

  it('without the fill the schedule holds from the first token after the sinks', () => {
    const m = new CascadeModel({ ...SMALL, eagerFill: false });
    expect([2, 3, 4, 5, 6].map((t) => [0, 1, 2].map((i) => (m.accepts(t, i) ? 'y' : '.')).join(''))).toEqual(['yyy', 'y..', 'yy.', 'y..', 'yyy']);
  });
});

describe('fill phase', () => {
  it('sinks first, then one sliding window across the cascades: cascade 0 newest, positions = arrival order', () => {
    const m = new CascadeModel(SMALL);
    const slots: number[][] = [];
    const positions: number[][] = [];
    for (let t = 0; t <= 7; t++) {
      const step = one(m, t);
      slots.push([...step.tokens]);
      positions.push([...step.positions]);
      expect(step.dropped).toEqual(new Int32Array(0));
      expect(step.length).toBe(t + 1);
      expect(step.nextPosition).toBe(t + 1);
    }
    expect(slots).toEqual([
      [0, -1, -1, -1, -1, -1, -1, -1], // sink
      [0, 1, -1, -1, -1, -1, -1, -1], // sink
      [0, 1, 2, -1, -1, -1, -1, -1], // cascade 0 has room
      [0, 1, 2, 3, -1, -1, -1, -1],
      [0, 1, 4, 3, 2, -1, -1, -1], // cascade 0 full: 4 takes its oldest slot, 2 carried down to cascade 1
      [0, 1, 4, 5, 2, 3, -1, -1], // 5 takes 3's slot, 3 carried down
      [0, 1, 6, 5, 4, 3, 2, -1], // 6 -> c0, 4 -> c1 (full), 2 -> c2
      [0, 1, 6, 7, 4, 5, 2, 3], // full
    ]);
    // While the cache fills it holds every token, at positions equal to the arrival order.
    expect(positions).toEqual(slots);
  });

  it('the first token after the cache is full shifts all of it: the oldest cached token falls off the last cascade', () => {
    const m = new CascadeModel(SMALL);
    for (let t = 0; t <= 7; t++) one(m, t);
    const step = one(m, 8);
    expect([...step.tokens]).toEqual([0, 1, 8, 7, 6, 5, 4, 3]);
    // c2 (oldest slot 7 first): 3, 4; c1: 5, 6; c0: 7, 8
    expect([...step.positions]).toEqual([0, 1, 7, 6, 5, 4, 3, 2]);
    expect([...step.dropped]).toEqual([2]);
    // 8 from the chunk; 7, 6... stay; 6 from slot 2 to slot 4, 4 from slot 4 to slot 6
    expect([...step.gather]).toEqual([0, 1, 8, 3, 2, 5, 4, 7]);
    expect([...step.writes]).toEqual([6, 4, 2]);
    expect(tokensByPosition(step)).toEqual([0, 1, 3, 4, 5, 6, 7, 8]);
  });

  it('the gather list of a carry through two cascades', () => {
    const m = new CascadeModel(SMALL);
    for (let t = 0; t <= 5; t++) one(m, t); // [0 1 | 4 5 | 2 3 | - -]
    const step = one(m, 6);
    expect([...step.tokens]).toEqual([0, 1, 6, 5, 4, 3, 2, -1]);
    expect([...step.gather]).toEqual([0, 1, 8, 3, 2, 5, 4, -1]); // 8 = capacity + 0: the chunk's token
    expect([...step.writes]).toEqual([6, 4, 2]);
  });
});

describe('refused tokens', () => {
  // After filled(): [0 1 | 8 7 | 6 5 | 4 3], every cascade's oldest slot at its second entry
  // (start 1), so c0's oldest is 7 (slot 3) and c1's newest is 6 (slot 4). Step 9 is accepted by
  // cascade 0 only: 9 takes slot 3, and 7, carried down, is refused by cascade 1 and competes
  // with 6. Scores were all 0; this step's attention sets them (beta^1 * 0 + weighted sum).
  it('a carried token with the higher score overwrites the refusing cascade\'s newest slot', () => {
    const m = filled();
    const step = one(m, 9, 0, { 3: 0.75, 4: 0.5 });
    expect([...step.tokens]).toEqual([0, 1, 8, 9, 7, 5, 4, 3]);
    expect([...step.dropped]).toEqual([6]);
    expect([...step.gather]).toEqual([0, 1, 2, 8, 3, 5, 6, 7]); // 7 from slot 3 to slot 4
    expect([...step.writes]).toEqual([4, 3]);
    expect([...m.scores()]).toEqual([NaN, NaN, 0, 0, 0.75, 0, 0, 0]);
    // c2 (start 1): 3, 4; c1 (start 1): 5, 7; c0 (start 0): 8, 9
    expect([...step.positions]).toEqual([0, 1, 6, 7, 5, 4, 3, 2]);
  });

  it('a carried token with the lower score is dropped', () => {
    const m = filled();
    const step = one(m, 9, 0, { 3: 0.5, 4: 0.75 });
    expect([...step.tokens]).toEqual([0, 1, 8, 9, 6, 5, 4, 3]);
    expect([...step.dropped]).toEqual([7]);
    expect([...step.gather]).toEqual([0, 1, 2, 8, 4, 5, 6, 7]);
    expect([...step.writes]).toEqual([3]);
  });

  it('a tie goes to the carried token', () => {
    const m = filled();
    const step = one(m, 9, 0, { 3: 0.5, 4: 0.5 });
    expect([...step.tokens]).toEqual([0, 1, 8, 9, 7, 5, 4, 3]);
    expect([...step.dropped]).toEqual([6]);
  });

  it('the comparison uses the EMA: attention decays by beta per step', () => {
    const m = filled();
    one(m, 9, 0, { 2: 0.75 }); // 8 (slot 2) gets 0.75; 7 and 6 tie at 0, 7 overwrites 6
    one(m, 10); // all accept: 10 -> slot 2, 8 -> slot 5, 5 -> slot 7, 3 falls off
    expect([...m.state().tokens]).toEqual([0, 1, 10, 9, 7, 8, 4, 5]);
    // Step 11 (cascade 0 only): 9 (slot 3) is carried to cascade 1, whose newest slot holds 8.
    // 8 received 0.75 in all, 9 gets 0.25 now; but 8's is two steps old: 0.75 * 0.5^2 = 0.1875.
    const step = one(m, 11, 0, { 3: 0.25 });
    expect([...step.tokens]).toEqual([0, 1, 10, 11, 7, 9, 4, 5]);
    expect([...step.dropped]).toEqual([8]);
    expect([...m.scores()]).toEqual([NaN, NaN, 0, 0, 0, 0.25, 0, 0]);
  });

  it('an empty cascade takes a token it refuses (only without the fill, which leaves none empty)', () => {
    const m = new CascadeModel({ sinks: 0, window: 1, cascades: 2, beta: 0.5, headReduction: 'mean', eagerFill: false });
    expect([...one(m, 0).tokens]).toEqual([0, -1]);
    expect(m.accepts(1, 1)).toBe(false);
    const step = one(m, 1); // 1 takes cascade 0's only slot; 0 is carried to cascade 1, which refuses but is empty
    expect([...step.tokens]).toEqual([1, 0]);
    expect([...step.positions]).toEqual([1, 0]);
    expect([...step.dropped]).toEqual([]);
    expect([...one(m, 2).tokens]).toEqual([2, 1]); // step 2: both accept; 0 falls off cascade 1
    const refused = one(m, 3); // step 3: cascade 1 refuses 2 but holds 1: a tie (all 0), 2 overwrites it
    expect([...refused.tokens]).toEqual([3, 2]);
    expect([...refused.dropped]).toEqual([1]);
  });
});

describe('after the fill', () => {
  it('follows the schedule step by step (all scores 0: every refusal is a tie, won by the carried token)', () => {
    const m = filled(); // [0 1 | 8 7 | 6 5 | 4 3]
    const trace = [9, 10, 11, 12, 13, 14].map((t) => {
      const step = one(m, t);
      return { tokens: [...step.tokens], positions: [...step.positions], dropped: [...step.dropped] };
    });
    expect(trace).toEqual([
      // 9: c0 only. 9 -> slot 3 (7's); 7 refused by c1, overwrites its newest, 6
      { tokens: [0, 1, 8, 9, 7, 5, 4, 3], positions: [0, 1, 6, 7, 5, 4, 3, 2], dropped: [6] },
      // 10: all accept. 10 -> slot 2 (8's); 8 -> slot 5 (5's); 5 -> slot 7 (3's); 3 falls off
      { tokens: [0, 1, 10, 9, 7, 8, 4, 5], positions: [0, 1, 7, 6, 4, 5, 2, 3], dropped: [3] },
      // 11: c0 only. 11 -> slot 3 (9's); 9 refused by c1, overwrites its newest, 8 (slot 5)
      { tokens: [0, 1, 10, 11, 7, 9, 4, 5], positions: [0, 1, 6, 7, 4, 5, 2, 3], dropped: [8] },
      // 12: c0 and c1. 12 -> slot 2; 10 -> slot 4 (7's); 7 refused by c2, overwrites its newest, 5
      { tokens: [0, 1, 12, 11, 10, 9, 4, 7], positions: [0, 1, 7, 6, 5, 4, 2, 3], dropped: [5] },
      // 13: c0 only. 13 -> slot 3; 11 refused by c1, overwrites its newest, 10 (slot 4)
      { tokens: [0, 1, 12, 13, 11, 9, 4, 7], positions: [0, 1, 6, 7, 5, 4, 2, 3], dropped: [10] },
      // 14: all accept. 14 -> slot 2; 12 -> slot 5 (9's); 9 -> slot 6 (4's); 4 falls off
      { tokens: [0, 1, 14, 13, 11, 12, 9, 7], positions: [0, 1, 7, 6, 4, 5, 3, 2], dropped: [4] },
    ]);
    // In position order: sinks, then c2's span (7, 9), c1's (11, 12), c0's (13, 14).
    expect(tokensByPosition(m.state())).toEqual([0, 1, 7, 9, 11, 12, 13, 14]);
    expect(keptInSlotOrder(m.state())).toEqual({ tokens: [0, 1, 14, 13, 11, 12, 9, 7], positions: [0, 1, 7, 6, 4, 5, 3, 2] });
  });
});

describe('scores', () => {
  it('EMA over chunks: cached tokens decay by beta^q and add their weighted attention; new tokens start from their own', () => {
    // 1 sink, one cascade of 4 slots, beta 0.5, two query heads per KV head.
    const make = (headReduction: 'mean' | 'max') => new CascadeModel({ sinks: 1, window: 4, cascades: 1, beta: 0.5, headReduction, groupSize: 2 });
    const chunk1 = { tokens: [0, 1, 2], slotScores: [zeros(5), zeros(5)], chunkScores: [[9, 0.25, 0.5], [9, 0.75, 0]] };
    // slots: [sink 0 | 1 2 3 4]; the sink's entry (1) is not used
    const chunk2 = { tokens: [3, 4], slotScores: [[1, 0.125, 0.375, 0, 0], [1, 0.375, 0.125, 0, 0]], chunkScores: [[0.5, 0.125], [0.25, 0.375]] };

    const mean = make('mean');
    mean.insert(chunk1);
    expect([...mean.scores()]).toEqual([NaN, 0.5, 0.25, NaN, NaN]); // token 0 is the sink: its 9s are ignored
    mean.insert(chunk2);
    // 1: 0.25 * 0.5 + (0.125 + 0.375) / 2 = 0.375; 2: 0.25 * 0.25 + 0.25 = 0.3125; 3: 0.375; 4: 0.25
    expect([...mean.scores()]).toEqual([NaN, 0.375, 0.3125, 0.375, 0.25]);

    const max = make('max');
    max.insert(chunk1);
    expect([...max.scores()]).toEqual([NaN, 0.75, 0.5, NaN, NaN]);
    max.insert(chunk2);
    // 1: 0.25 * 0.75 + 0.375 = 0.5625; 2: 0.25 * 0.5 + 0.375 = 0.5; 3: 0.5; 4: 0.375
    expect([...max.scores()]).toEqual([NaN, 0.5625, 0.5, 0.5, 0.375]);
  });

  it('weighAttention: cached columns weighted from the chunk\'s last row, chunk columns from their own row', () => {
    // beta 0.5, 2 slots, a chunk of 2; columns [slot 0, slot 1, chunk 0, chunk 1]
    const rows = [
      [0.25, 0.25, 0.5, 0], // row 0 cannot see chunk token 1
      [0.25, 0.25, 0.25, 0.25],
    ];
    const { slotScores, chunkScores } = weighAttention(rows, 2, 0.5);
    // slots: row weights 0.5 * 0.5^(1 - j): 0.25, 0.5 -> 0.25 * 0.25 + 0.5 * 0.25 = 0.1875
    expect([...slotScores]).toEqual([0.1875, 0.1875]);
    // chunk 0: 0.5 * 0.5 (row 0, weight 0.5 * 0.5^0) + 0.25 * 0.25 (row 1, 0.5 * 0.5^1) = 0.3125
    // (weighted like a cached column it would be 0.25 * 0.5 + 0.5 * 0.25 = 0.25); chunk 1: 0.5 * 0.25
    expect([...chunkScores]).toEqual([0.3125, 0.125]);
    // one row (decode): (1 - beta) * p everywhere
    const single = weighAttention([[0.5, 0.25, 0.25]], 2, 0.75);
    expect([...single.slotScores]).toEqual([0.125, 0.0625]);
    expect([...single.chunkScores]).toEqual([0.0625]);
    expect(() => weighAttention([[0.5, 0.5]], 2, 0.5)).toThrow(/rows\[0\]: expected 3 probabilities \(capacity 2 \+ chunk 1\) but received 2/);
  });
});

describe('strided prefill', () => {
  it('each chunk attends to sinks + cache at their slot positions and to itself after them, then is inserted', () => {
    // 2 sinks, 2 cascades of 2 (capacity 6, fill while step <= 6); stride 3 over tokens 100..109
    const m = new CascadeModel({ sinks: 2, window: 2, cascades: 2, beta: 0.5, headReduction: 'mean' });
    const layouts: { tokens: number[]; positions: number[]; slots: number[]; queries: number[]; chunk: number[] }[] = [];
    const attend = (layout: ChunkLayout, chunk: number[]) => {
      layouts.push({ slots: [...layout.slots], tokens: [...layout.tokens], positions: [...layout.positions], queries: [...layout.queryPositions], chunk });
      return { slotScores: [zeros(m.capacity)], chunkScores: [zeros(chunk.length)] };
    };
    const input = Array.from({ length: 10 }, (_, i) => 100 + i);
    expect(stridedChunks(10, 3)).toEqual([{ start: 0, end: 3 }, { start: 3, end: 6 }, { start: 6, end: 9 }, { start: 9, end: 10 }]);
    const steps = stridedPrefill(m, input, 3, attend);

    expect(layouts).toEqual([
      { chunk: [100, 101, 102], slots: [], tokens: [], positions: [], queries: [0, 1, 2] },
      { chunk: [103, 104, 105], slots: [0, 1, 2], tokens: [100, 101, 102], positions: [0, 1, 2], queries: [3, 4, 5] },
      { chunk: [106, 107, 108], slots: [0, 1, 2, 3, 4, 5], tokens: [100, 101, 104, 105, 102, 103], positions: [0, 1, 4, 5, 2, 3], queries: [6, 7, 8] },
      { chunk: [109], slots: [0, 1, 2, 3, 4, 5], tokens: [100, 101, 108, 107, 105, 106], positions: [0, 1, 5, 4, 2, 3], queries: [6] },
    ]);
    expect(steps.map((s) => [...s.tokens])).toEqual([
      [100, 101, 102, -1, -1, -1], // 100, 101 become the sinks inside the first chunk
      [100, 101, 104, 105, 102, 103],
      // 106 (fill, step 6) shifts everything and 102 falls off; 107 (c0 only) carries 105 into c1,
      // which overwrites its newest, 104; 108 (c0, c1) carries 106 into c1, pushing 103 out
      [100, 101, 108, 107, 105, 106],
      [100, 101, 108, 109, 105, 107], // 109 (c0 only): 107 carried, overwrites c1's newest, 106
    ]);
    expect(steps.map((s) => [...s.dropped])).toEqual([[], [], [102, 104, 103], [106]]);
    // Chunk 2's gather reads the cache before it: 106 arrived at slot 2 and moved on to slot 5
    // within the chunk, so slot 5 gathers chunk token 0 (6 + 0).
    expect(steps.map((s) => [...s.gather])).toEqual([
      [6, 7, 8, -1, -1, -1],
      [0, 1, 7, 8, 2, 6],
      [0, 1, 8, 7, 3, 6],
      [0, 1, 2, 6, 4, 3],
    ]);
    expect(steps.map((s) => [...s.positions])).toEqual([
      [0, 1, 2, -1, -1, -1],
      [0, 1, 4, 5, 2, 3],
      [0, 1, 5, 4, 2, 3],
      [0, 1, 4, 5, 2, 3],
    ]);
  });
});

describe('a long random stream', () => {
  it('100,000 tokens in random chunks with random scores: bounded, sinks kept, positions by rank, gathers exact', () => {
    const options: CascadeModelOptions = { sinks: 4, window: 16, cascades: 4, beta: 0.99, headReduction: 'max', groupSize: 2 };
    const m = new CascadeModel(options);
    const cap = m.capacity;
    expect(cap).toBe(68);
    const random = rng(7);
    let prev = m.state().tokens;
    let next = 0;
    const total = 100_000;
    while (next < total) {
      const q = Math.min(total - next, random() < 0.5 ? 1 : 1 + Math.floor(random() * 48));
      const chunk = Array.from({ length: q }, (_, k) => next + k);
      const rows = (n: number) => [0, 1].map(() => Array.from({ length: n }, () => random()));
      const step = m.insert({ tokens: chunk, slotScores: rows(cap), chunkScores: rows(q) });
      next += q;

      // Checked in plain code, reported once per step: a million expect() calls would be slow.
      const problems: string[] = [];
      if (step.length !== Math.min(next, cap) || step.nextPosition !== step.length) problems.push(`length ${step.length}`);
      if (next >= 4 && [0, 1, 2, 3].some((t, s) => step.tokens[s] !== t)) problems.push('a sink moved');
      // positions: a permutation of 0..length-1 over the held slots, -1 elsewhere
      const held = new Set<number>();
      for (let s = 0; s < cap; s++) {
        const p = step.positions[s]!;
        if (step.tokens[s]! < 0 ? p !== -1 : p < 0 || p >= step.length) problems.push(`slot ${s} at position ${p}`);
        if (step.tokens[s]! >= 0) held.add(p);
      }
      if (held.size !== step.length) problems.push('two slots at one position');
      // the gather list rebuilds the cache from the previous one and the chunk, and so do the
      // writes applied in place, in their order
      const inPlace = prev.slice();
      for (const s of step.writes) {
        const from = step.gather[s]!;
        inPlace[s] = from < cap ? inPlace[from]! : chunk[from - cap]!;
      }
      for (let s = 0; s < cap; s++) {
        const from = step.gather[s]!;
        const gathered = from < 0 ? -1 : from < cap ? prev[from] : chunk[from - cap];
        if (gathered !== step.tokens[s] || inPlace[s] !== step.tokens[s]) problems.push(`slot ${s} gathers ${gathered}, in place ${inPlace[s]}`);
      }
      // nothing is lost or duplicated: held before + chunk = held after + dropped
      const before = [...prev.filter((t) => t >= 0), ...chunk].sort((a, b) => a - b);
      const after = [...step.tokens.filter((t) => t >= 0), ...step.dropped].sort((a, b) => a - b);
      if (before.length !== after.length || before.some((t, i) => t !== after[i])) problems.push('tokens lost or duplicated');
      if (problems.length > 0) expect(problems, `after token ${next - 1}`).toEqual([]);
      prev = step.tokens;
    }
    // The cascades reach further back than a sliding window of the same 64 slots would.
    const oldest = Math.min(...[...prev.subarray(4)]);
    expect(oldest).toBeLessThan(total - 64);
  });
});

describe('insert arguments', () => {
  const m = () => new CascadeModel({ ...SMALL, groupSize: 2 });
  it('refuses scores that do not match the group and the cache', () => {
    expect(() => m().insert({ tokens: [0], slotScores: [zeros(8)], chunkScores: [[0], [0]] })).toThrow(/chunk\.slotScores: expected 2 rows \(one per query head of the group\) but received an array of length 1/);
    expect(() => m().insert({ tokens: [0], slotScores: [zeros(8), zeros(7)], chunkScores: [[0], [0]] })).toThrow(/chunk\.slotScores\[1\]: expected 8 scores but received an array of length 7/);
    expect(() => m().insert({ tokens: [0, 1], slotScores: [zeros(8), zeros(8)], chunkScores: [[0], [0]] })).toThrow(/chunk\.chunkScores\[0\]: expected 2 scores/);
    expect(() => m().insert({ tokens: [0], slotScores: [zeros(8), zeros(8)], chunkScores: [[-1], [0]] })).toThrow(/chunk\.chunkScores\[0\]\[0\]: expected a finite score >= 0 but received number -1/);
    expect(() => m().insert({ tokens: [1.5], slotScores: [zeros(8), zeros(8)], chunkScores: [[0], [0]] })).toThrow(/chunk\.tokens\[0\]: expected an input-stream index in \[0, 2\^31\) but received number 1\.5/);
  });

  it('refuses a bad configuration', () => {
    expect(() => new CascadeModel({ ...SMALL, groupSize: 0 })).toThrow(/groupSize: expected an integer >= 1/);
    expect(() => new CascadeModel({ ...SMALL, window: 0 })).toThrow(InvalidArgumentError);
  });

  it('an empty chunk changes nothing', () => {
    const model = filled();
    const before = model.state();
    const step = model.insert({ tokens: [], slotScores: [zeros(8)], chunkScores: [[]] });
    expect(step.tokens).toEqual(before.tokens);
    expect([...step.writes]).toEqual([]);
  });
});
