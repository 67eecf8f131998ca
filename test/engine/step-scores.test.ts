// A forward step's scores (NativeModel.step with rangeMass): each layer's attention reports the
// probability mass that every query row and head of a request puts on each of its slot ranges,
// from that layer's own softmax. Checked against the float64 reference forward's attention
// probabilities on the embedded model, through a prefill and a decode step, in a batch with a
// request that asks for nothing.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { NativeModel, NativeSequence } from '../../lib/binding.js';
import { InvalidArgumentError, Tensor } from '../../lib/index.js';
import { native } from '../../lib/loader.js';
import { readCheckpoint, ReferenceLlama, ropeInverseFrequencies } from '../support/reference-llama.js';

const MODEL = join(__dirname, '..', '..', 'models');

let reference: ReferenceLlama;
let model: NativeModel;
const owned: Tensor[] = [];

/** The embedded model as a native model on the CPU (f32 weights and KV), built from its checkpoint. */
function nativeModel(dir: string, ref: ReferenceLlama): NativeModel {
  const c = ref.config;
  const tensors = readCheckpoint(dir);
  const w = (name: string) => {
    const t = tensors.get(name)!;
    const out = Tensor.from(Float32Array.from(t.data), { shape: t.shape });
    owned.push(out);
    return out.handle();
  };
  const invFreq = Tensor.from(Float32Array.from(ropeInverseFrequencies(c)));
  owned.push(invFreq);
  const layers = Array.from({ length: c.numLayers }, (_, l) => {
    const p = `model.layers.${l}.`;
    return {
      attnNorm: w(`${p}input_layernorm.weight`), wq: w(`${p}self_attn.q_proj.weight`), wk: w(`${p}self_attn.k_proj.weight`),
      wv: w(`${p}self_attn.v_proj.weight`), wo: w(`${p}self_attn.o_proj.weight`), ffnNorm: w(`${p}post_attention_layernorm.weight`),
      gate: w(`${p}mlp.gate_proj.weight`), up: w(`${p}mlp.up_proj.weight`), down: w(`${p}mlp.down_proj.weight`),
    };
  });
  const embed = w('model.embed_tokens.weight');
  return native().createModel(
    {
      vocab: c.vocabSize, hidden: c.hiddenSize, intermediate: c.intermediateSize, layers: c.numLayers, heads: c.numHeads,
      kvHeads: c.numKvHeads, headDim: c.headDim, rmsEps: c.rmsNormEps, ropeLayout: 'half', ropeAttnFactor: 1,
    },
    { embed, finalNorm: w('model.norm.weight'), lmHead: c.tieWordEmbeddings ? embed : w('lm_head.weight'), invFreq: invFreq.handle(), layers },
    { numPages: 64 * c.numLayers, pageSize: 16, dtype: 'f32' },
  );
}

/** Reference probabilities, [layer][t][head] over slots 0..t, of a causal pass over `tokens`. */
function referenceProbabilities(tokens: number[]): Float64Array[][][] {
  const c = reference.config;
  const p: Float64Array[][][] = Array.from({ length: c.numLayers }, () => tokens.map(() => new Array<Float64Array>(c.numHeads)));
  reference.forward(tokens, { attention: (layer, t, head, probs) => void (p[layer]![t]![head] = probs) });
  return p;
}

/** Reference range mass of row t, head h at a layer: sum of p over [b, e) within 0..t. */
function mass(p: Float64Array, [b, e]: readonly [number, number]): number {
  let sum = 0;
  for (let s = b; s < Math.min(e, p.length); s++) sum += p[s]!;
  return sum;
}

const tokens = Array.from({ length: 41 }, (_, i) => 3 + ((i * 97 + 11) % 1000));

beforeAll(() => {
  reference = ReferenceLlama.load(MODEL);
  model = nativeModel(MODEL, reference);
});

afterAll(() => {
  model?.release();
  for (const t of owned) t.dispose();
});

const positions = (from: number, n: number) => Int32Array.from({ length: n }, (_, i) => from + i);

// f32 engine against the float64 reference through the model's layers: masses (in [0, 1])
// agree to 1.5e-6 here, so 1e-5 leaves a 6x margin.
const TOL = 1e-5;

describe('NativeModel.step rangeMass', () => {
  it('reports each layer’s attention mass per row, head and range, for a prefill and then a decode step', async () => {
    const c = reference.config;
    const { numLayers: L, numHeads: H } = c;
    const want = referenceProbabilities(tokens);
    const seq = model.newSequence();
    try {
      // Prefill of 40 tokens, one list of ranges for every layer (documents of uneven length).
      const prefill: [number, number][] = [[0, 7], [7, 19], [19, 33], [33, 40]];
      const a = await model.step([{ seq, tokens: Int32Array.from(tokens.slice(0, 40)), positions: positions(0, 40), logits: 'last', rangeMass: Int32Array.from(prefill.flat()) }]);
      const got = a.rangeMass[0]!;
      expect(got.length).toBe(L * 40 * H * prefill.length);
      let worst = 0;
      for (let l = 0; l < L; l++) {
        for (let t = 0; t < 40; t++) {
          for (let h = 0; h < H; h++) {
            let total = 0;
            prefill.forEach((r, i) => {
              const x = got[((l * 40 + t) * H + h) * prefill.length + i]!;
              worst = Math.max(worst, Math.abs(x - mass(want[l]![t]![h]!, r)));
              total += x;
              if (r[0] > t) expect(x).toBe(0); // causal: no mass after the row's own slot
            });
            expect(Math.abs(total - 1)).toBeLessThan(1e-6);
          }
        }
      }
      expect(worst).toBeLessThan(TOL);

      // A decode step with a list per layer (the same slots cut differently at each layer).
      const perLayer = Array.from({ length: L }, (_, l) => Int32Array.of(0, 3 + l, 3 + l, 30, 30, 41, 40, 41));
      const b = await model.step([{ seq, tokens: Int32Array.of(tokens[40]!), positions: positions(40, 1), logits: 'last', rangeMass: perLayer }]);
      const dec = b.rangeMass[0]!;
      expect(dec.length).toBe(L * 1 * H * 4);
      worst = 0;
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < H; h++) {
          const ranges = perLayer[l]!;
          for (let i = 0; i < 4; i++) {
            const x = dec[(l * H + h) * 4 + i]!;
            worst = Math.max(worst, Math.abs(x - mass(want[l]![40]![h]!, [ranges[2 * i]!, ranges[2 * i + 1]!])));
          }
          expect(Math.abs(dec[(l * H + h) * 4]! + dec[(l * H + h) * 4 + 1]! + dec[(l * H + h) * 4 + 2]! - 1)).toBeLessThan(1e-6);
        }
      }
      expect(worst).toBeLessThan(TOL);
    } finally {
      seq.release();
    }
  });

  it('in a batch, only the requests that ask get masses (their own ranges), and logits do not change', async () => {
    const { numLayers: L, numHeads: H } = reference.config;
    const want = referenceProbabilities(tokens.slice(0, 20));
    const run = async (ask: boolean) => {
      const seqs: NativeSequence[] = [model.newSequence(), model.newSequence(), model.newSequence()];
      try {
        const input = (s: NativeSequence, n: number) => ({ seq: s, tokens: Int32Array.from(tokens.slice(0, n)), positions: positions(0, n), logits: 'all' as const });
        return await model.step([
          { ...input(seqs[0]!, 20), ...(ask ? { rangeMass: Int32Array.of(0, 10, 10, 20) } : {}) },
          input(seqs[1]!, 12),
          { ...input(seqs[2]!, 20), ...(ask ? { rangeMass: Int32Array.of(5, 6, 0, 20, 19, 20) } : {}) },
        ]);
      } finally {
        for (const s of seqs) s.release();
      }
    };
    const plain = await run(false);
    const scored = await run(true);
    expect(plain.rangeMass).toEqual([null, null, null]);
    expect(scored.rangeMass[1]).toBeNull();
    for (let i = 0; i < 3; i++) expect(scored.logits[i]).toEqual(plain.logits[i]);
    // The third request's three ranges, though the first has two: no padding in what it gets.
    const third = scored.rangeMass[2]!;
    expect(third.length).toBe(L * 20 * H * 3);
    const first = scored.rangeMass[0]!;
    expect(first.length).toBe(L * 20 * H * 2);
    let worst = 0;
    for (let l = 0; l < L; l++) {
      for (let t = 0; t < 20; t++) {
        for (let h = 0; h < H; h++) {
          const p = want[l]![t]![h]!;
          const th = (l * 20 + t) * H + h;
          worst = Math.max(worst, Math.abs(third[th * 3]! - mass(p, [5, 6])), Math.abs(third[th * 3 + 1]! - 1), Math.abs(third[th * 3 + 2]! - mass(p, [19, 20])));
          worst = Math.max(worst, Math.abs(first[th * 2]! - mass(p, [0, 10])), Math.abs(first[th * 2 + 1]! - mass(p, [10, 20])));
        }
      }
    }
    expect(worst).toBeLessThan(TOL);
  });

  it('rejects ranges that are not ranges of slots, and per-layer lists that do not match the layers', () => {
    const seq = model.newSequence();
    const step = (rangeMass: unknown) => model.step([{ seq, tokens: Int32Array.of(5), positions: Int32Array.of(0), logits: 'none', rangeMass: rangeMass as Int32Array }]);
    try {
      for (const bad of [Int32Array.of(), Int32Array.of(1), Int32Array.of(3, 2), Int32Array.of(-1, 2), [Int32Array.of(0, 1)], Float32Array.of(0, 1)]) {
        expect(() => step(bad)).toThrow(InvalidArgumentError);
      }
      const L = reference.config.numLayers;
      expect(() => step(Array.from({ length: L }, (_, l) => (l === L - 1 ? Int32Array.of(0, 1, 1, 2) : Int32Array.of(0, 1))))).toThrow(/same number of ranges/);
    } finally {
      seq.release();
    }
  });
});

// Column sums (the bounded policies' scores) in one batch: per KV head and plain (H2O), per query
// head and EMA-weighted (Cascading), per KV head over the last rows only (SnapKV), and none.
describe('NativeModel.step columnSums', () => {
  it('each request gets its own kind of sums, from the same probabilities', async () => {
    const { numLayers: L, numHeads: H, numKvHeads: G } = reference.config;
    const group = H / G;
    const n = 24;
    const want = referenceProbabilities(tokens.slice(0, n));
    const seqs: NativeSequence[] = Array.from({ length: 4 }, () => model.newSequence());
    const beta = 0.8;
    try {
      const input = (s: NativeSequence) => ({ seq: s, tokens: Int32Array.from(tokens.slice(0, n)), positions: positions(0, n), logits: 'last' as const });
      const out = await model.step([
        { ...input(seqs[0]!), columnSums: true },
        { ...input(seqs[1]!), columnSums: true, columnSumsPerHead: true, scoreDecay: beta },
        { ...input(seqs[2]!), columnSums: true, scoreRows: 5 },
        input(seqs[3]!),
      ]);
      expect(out.columnSums[3]).toBeNull();
      const [plain, ema, window] = [out.columnSums[0]!, out.columnSums[1]!, out.columnSums[2]!];
      expect(plain.length).toBe(L * G * n);
      expect(ema.length).toBe(L * H * n);
      expect(window.length).toBe(L * G * n);
      let worst = 0;
      for (let l = 0; l < L; l++) {
        for (let j = 0; j < n; j++) {
          for (let g = 0; g < G; g++) {
            let p = 0;
            let w = 0;
            for (let hh = 0; hh < group; hh++) {
              for (let t = j; t < n; t++) {
                const x = want[l]![t]![g * group + hh]![j]!;
                p += x;
                if (t >= n - 5) w += x;
              }
            }
            worst = Math.max(worst, Math.abs(plain[(l * G + g) * n + j]! - p), Math.abs(window[(l * G + g) * n + j]! - w));
          }
          for (let h = 0; h < H; h++) {
            // A fresh prefill: every slot is the chunk's own, weighted beta^(t - j) from row t.
            let e = 0;
            for (let t = j; t < n; t++) e += beta ** (t - j) * want[l]![t]![h]![j]!;
            worst = Math.max(worst, Math.abs(ema[(l * H + h) * n + j]! - e));
          }
        }
      }
      expect(worst).toBeLessThan(TOL * 4);
      // Logits do not depend on what was asked.
      expect(out.logits[1]).toEqual(out.logits[3]);
    } finally {
      for (const s of seqs) s.release();
    }
  });
});
