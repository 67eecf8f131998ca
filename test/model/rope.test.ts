// Expected values are worked out by hand from the formulas of transformers'
// modeling_rope_utils.py, on configs chosen so they come out in closed form: headDim 8 and
// theta 10^4 give default frequencies 10^-j for j = 0..3.

import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../lib/errors.js';
import type { RopeScaling } from '../../lib/model/config.js';
import { attentionScaling, invFreq, ropeParameters, type RopeConfig } from '../../lib/model/rope.js';

/** Float32 rounding of a float64 value is within 2^-24 relative; allow a little more. */
const FLOAT32_RELATIVE = 1e-7;

function expectFrequencies(actual: Float32Array, expected: readonly number[]): void {
  expect(actual).toBeInstanceOf(Float32Array);
  expect(actual.length).toBe(expected.length);
  expected.forEach((value, j) => {
    expect(Math.abs(actual[j]! - value)).toBeLessThanOrEqual(FLOAT32_RELATIVE * Math.abs(value));
  });
}

function config(ropeScaling: RopeScaling | null, overrides: Partial<RopeConfig> = {}): RopeConfig {
  return { headDim: 8, ropeTheta: 10000, maxPositionEmbeddings: 1000, ropeScaling, ...overrides };
}

function yarn(overrides: Partial<Extract<RopeScaling, { type: 'yarn' }>> = {}): RopeScaling {
  return {
    type: 'yarn',
    factor: 4,
    originalMaxPositionEmbeddings: 1000,
    betaFast: 32,
    betaSlow: 1,
    attentionFactor: null,
    mscale: null,
    mscaleAllDim: null,
    truncate: true,
    ...overrides,
  };
}

describe('default RoPE', () => {
  it('gives theta^(-2j/d)', () => {
    expectFrequencies(invFreq(config(null)), [1, 0.1, 0.01, 0.001]);
    expectFrequencies(invFreq(config(null, { headDim: 4 })), [1, 0.01]);
    expect(attentionScaling(config(null))).toBe(1);
  });

  it('returns the float64 value rounded once to float32', () => {
    const freqs = invFreq(config(null, { headDim: 128, ropeTheta: 500000 }));
    expect(freqs.length).toBe(64);
    for (let j = 0; j < 64; j++) expect(freqs[j]).toBe(Math.fround(1 / Math.pow(500000, (2 * j) / 128)));
  });
});

describe('linear scaling', () => {
  it('divides every frequency by factor', () => {
    expectFrequencies(invFreq(config({ type: 'linear', factor: 4 })), [0.25, 0.025, 0.0025, 0.00025]);
  });
});

describe('dynamic NTK scaling', () => {
  const dynamic = config({ type: 'dynamic', factor: 2 });

  it('equals default RoPE up to max_position_embeddings, and when no length is given', () => {
    expectFrequencies(invFreq(dynamic), [1, 0.1, 0.01, 0.001]);
    expectFrequencies(invFreq(dynamic, 500), [1, 0.1, 0.01, 0.001]);
    expectFrequencies(invFreq(dynamic, 1000), [1, 0.1, 0.01, 0.001]);
  });

  it('raises the base with the sequence length beyond it', () => {
    // seqLen 2000: base = 1e4 * (2 * 2000/1000 - (2 - 1))^(8/6) = 1e4 * 3^(4/3),
    // so invFreq_j = 10^-j * 3^(-j/3): 3^(-1/3) = 0.6933612743506347, 3^(-2/3) = 0.4807498567691361.
    expectFrequencies(invFreq(dynamic, 2000), [1, 0.06933612743506347, 0.004807498567691361, 0.001 / 3]);
  });

  it('rejects a negative or fractional sequence length', () => {
    expect(() => invFreq(dynamic, -1)).toThrow(InvalidArgumentError);
    expect(() => invFreq(dynamic, 1.5)).toThrow('seqLen must be a non-negative integer, got 1.5');
  });
});

describe('llama3 scaling', () => {
  // original context 1000, low_freq_factor 1, high_freq_factor 4: wavelengths below 250 keep
  // their frequency, above 1000 are divided by factor 8. Wavelengths 2*pi/10^-j are
  // 6.28, 62.8, 628.3, 6283.2, so j = 0, 1 stay, j = 3 is divided, j = 2 is blended with
  // smooth = (1000 / 628.3185 - 1) / (4 - 1) = 0.19718314363965117:
  // (1 - smooth) * 0.01 / 8 + smooth * 0.01 = 0.0029753525068469478.
  const llama3 = config({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 1000 });

  it('keeps high frequencies, divides low ones and blends the band between', () => {
    expectFrequencies(invFreq(llama3), [1, 0.1, 0.0029753525068469478, 0.000125]);
    expect(attentionScaling(llama3)).toBe(1);
  });

  it('reproduces Llama 3.1\'s published setting at the band edges', () => {
    const freqs = invFreq({ headDim: 128, ropeTheta: 500000, maxPositionEmbeddings: 131072, ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } });
    const plain = invFreq({ headDim: 128, ropeTheta: 500000, maxPositionEmbeddings: 131072, ropeScaling: null });
    // Wavelength 2 pi * 500000^(j/64) is 1956 at j = 28 (below 8192/4 = 2048: kept), 2402 at
    // j = 29 (blended), 6695 at j = 34 (blended) and 8219 at j = 35 (above 8192: divided by 8).
    for (let j = 0; j <= 28; j++) expect(freqs[j]).toBe(plain[j]);
    for (let j = 35; j < 64; j++) expect(Math.abs(freqs[j]! - plain[j]! / 8)).toBeLessThanOrEqual(FLOAT32_RELATIVE * freqs[j]!);
    for (let j = 29; j <= 34; j++) {
      expect(freqs[j]).toBeLessThan(plain[j]!);
      expect(freqs[j]).toBeGreaterThan(plain[j]! / 8);
    }
  });
});

describe('yarn scaling', () => {
  // Correction range over the original 1000 positions: dim(r) = 8 ln(1000 / (2 pi r)) / (2 ln 1e4)
  // gives dim(32) = 0.6967 and dim(1) = 2.2018, truncated to [0, 3]. The ramp j/3 moves each
  // frequency from kept (j = 0) to divided by factor 4 (j = 3):
  // j = 1: 0.1 * (1/3 * 1/4 + 2/3) = 0.075; j = 2: 0.01 * (2/3 * 1/4 + 1/3) = 0.005.
  it('interpolates between extrapolated and interpolated frequencies over the correction range', () => {
    expectFrequencies(invFreq(config(yarn())), [1, 0.075, 0.005, 0.00025]);
  });

  it('uses the untruncated range when truncate is false', () => {
    // low = 0.696670153321979, high = 2.2018201316418846; ramp_j = (j - low) / (high - low).
    expectFrequencies(invFreq(config(yarn({ truncate: false }))), [1, 0.08488540090453608, 0.003505647948122564, 0.00025]);
  });

  it('scales attention by 0.1 ln(factor) + 1, or as mscale / mscale_all_dim or attention_factor say', () => {
    expect(attentionScaling(config(yarn()))).toBeCloseTo(1.138629436111989, 15);
    // DeepSeek-style equal mscale and mscale_all_dim cancel out.
    expect(attentionScaling(config(yarn({ mscale: 1, mscaleAllDim: 1 })))).toBe(1);
    // 0.1 * 0.707 * ln 4 + 1 over 0.1 * 1 * ln 4 + 1.
    expect(attentionScaling(config(yarn({ mscale: 0.707, mscaleAllDim: 1 })))).toBeCloseTo(1.0980110113311763 / 1.138629436111989, 15);
    // transformers needs both to be non-zero, else it falls back to factor alone.
    expect(attentionScaling(config(yarn({ mscale: 0.707, mscaleAllDim: 0 })))).toBeCloseTo(1.138629436111989, 15);
    expect(attentionScaling(config(yarn({ attentionFactor: 0.5 })))).toBe(0.5);
    expect(attentionScaling(config(yarn({ factor: 1 })))).toBe(1);
  });

  it('leaves Qwen2.5\'s fastest dimensions alone and interpolates its slowest', () => {
    const qwen = { headDim: 128, ropeTheta: 1e6, maxPositionEmbeddings: 32768 };
    const scaled = ropeParameters({ ...qwen, ropeScaling: yarn({ originalMaxPositionEmbeddings: 32768 }) });
    const plain = invFreq({ ...qwen, ropeScaling: null });
    expect(scaled.invFreq[0]).toBe(plain[0]);
    expect(Math.abs(scaled.invFreq[63]! - plain[63]! / 4)).toBeLessThanOrEqual(FLOAT32_RELATIVE * scaled.invFreq[63]!);
    expect(scaled.attentionScaling).toBeCloseTo(1.138629436111989, 15);
  });
});

describe('argument checks', () => {
  it('rejects an odd head dimension and a theta that is not above 1', () => {
    expect(() => invFreq(config(null, { headDim: 7 }))).toThrow('headDim must be a positive even integer, got 7');
    expect(() => invFreq(config(null, { ropeTheta: 1 }))).toThrow('ropeTheta must be a finite number above 1, got 1');
  });
});
