// Rotary position embedding (RoPE) frequencies and their scaling variants, following the
// formulas of transformers' modeling_rope_utils.py (the `_compute_*_parameters` functions).
//
// RoPE rotates each pair of dimensions j in [0, headDim/2) of a query/key at position p by the
// angle p * invFreq[j]. transformers pairs dimension j with j + headDim/2 ("rotate_half").
//
// Precision: transformers computes in float32 torch ops; we compute every step in float64 and
// round once at the end, so our values are the correctly rounded ones and may differ from
// transformers' by an ulp or two (relative 1e-7 to 2.5e-7). Both are far below bf16/fp16
// resolution; tests hold us to the float64 formula.

import { InvalidArgumentError } from '../errors.js';
import type { ModelConfig, RopeScaling } from './config.js';

/** The fields of ModelConfig that RoPE depends on. */
export type RopeConfig = Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling' | 'maxPositionEmbeddings'>;

export interface RopeParameters {
  /** headDim / 2 inverse frequencies, in radians per position. */
  readonly invFreq: Float32Array;
  /**
   * Multiplies cos and sin (transformers' `attention_scaling`): 1 except for YaRN. Both the
   * query and the key are rotated with scaled cos/sin, so attention logits scale by its square.
   */
  readonly attentionScaling: number;
}

/**
 * Inverse frequencies and attention scaling for `config`.
 *
 * `seqLen` matters only for dynamic NTK scaling, where transformers recomputes the base from the
 * current sequence length L = (largest position id in the forward pass) + 1, using
 * max(L, maxPositionEmbeddings): below the trained length dynamic equals plain RoPE. Note that
 * transformers keeps the frequencies of the longest L seen since the length last dropped below
 * maxPositionEmbeddings and never re-rotates cached keys, so during generation the keys in its
 * cache were rotated with the frequencies of the step that computed them. To reproduce that,
 * call this per forward step with that step's L; to re-rotate a cache consistently, use one L.
 */
export function ropeParameters(config: RopeConfig, seqLen?: number): RopeParameters {
  checkConfig(config);
  if (seqLen !== undefined && (!Number.isSafeInteger(seqLen) || seqLen < 0)) {
    throw new InvalidArgumentError(`seqLen must be a non-negative integer, got ${seqLen}`, 'seqLen');
  }
  const scaling = config.ropeScaling;
  let freqs: Float64Array;
  let attentionScaling = 1;
  switch (scaling?.type) {
    case undefined:
      freqs = defaultInvFreq(config.ropeTheta, config.headDim);
      break;
    case 'linear':
      // Dividing the frequencies by factor is interpolating positions: p -> p / factor.
      freqs = defaultInvFreq(config.ropeTheta, config.headDim).map((f) => f / scaling.factor);
      break;
    case 'dynamic':
      freqs = dynamicInvFreq(config, scaling.factor, seqLen);
      break;
    case 'llama3':
      freqs = llama3InvFreq(config, scaling);
      break;
    case 'yarn': {
      const yarn = yarnParameters(config, scaling);
      freqs = yarn.invFreq;
      attentionScaling = yarn.attentionScaling;
      break;
    }
  }
  return { invFreq: Float32Array.from(freqs), attentionScaling };
}

/** ropeParameters(config, seqLen).invFreq. */
export function invFreq(config: RopeConfig, seqLen?: number): Float32Array {
  return ropeParameters(config, seqLen).invFreq;
}

/** ropeParameters(config).attentionScaling. */
export function attentionScaling(config: RopeConfig): number {
  return ropeParameters(config).attentionScaling;
}

function checkConfig(config: RopeConfig): void {
  const { headDim, ropeTheta } = config;
  if (!Number.isSafeInteger(headDim) || headDim <= 0 || headDim % 2 !== 0) {
    throw new InvalidArgumentError(`headDim must be a positive even integer, got ${headDim}`, 'headDim');
  }
  if (!(ropeTheta > 1) || !Number.isFinite(ropeTheta)) {
    throw new InvalidArgumentError(`ropeTheta must be a finite number above 1, got ${ropeTheta}`, 'ropeTheta');
  }
}

/** invFreq[j] = base^(-2j / dim): the original RoPE. */
function defaultInvFreq(base: number, dim: number): Float64Array {
  const freqs = new Float64Array(dim / 2);
  for (let j = 0; j < freqs.length; j++) freqs[j] = 1 / Math.pow(base, (2 * j) / dim);
  return freqs;
}

/** NTK-aware scaling: raise the base so the lowest frequency stretches over the longer context. */
function dynamicInvFreq(config: RopeConfig, factor: number, seqLen: number | undefined): Float64Array {
  const dim = config.headDim;
  const maxPositions = config.maxPositionEmbeddings;
  const length = Math.max(seqLen ?? maxPositions, maxPositions);
  const base = config.ropeTheta * Math.pow((factor * length) / maxPositions - (factor - 1), dim / (dim - 2));
  return defaultInvFreq(base, dim);
}

/**
 * Llama 3.1: keep high frequencies (wavelength below original/highFreqFactor), divide low ones
 * (wavelength above original/lowFreqFactor) by factor, blend linearly in between.
 */
function llama3InvFreq(config: RopeConfig, scaling: Extract<RopeScaling, { type: 'llama3' }>): Float64Array {
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: oldContext } = scaling;
  const lowFreqWavelen = oldContext / lowFreqFactor;
  const highFreqWavelen = oldContext / highFreqFactor;
  return defaultInvFreq(config.ropeTheta, config.headDim).map((freq) => {
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highFreqWavelen) return freq;
    if (wavelen > lowFreqWavelen) return freq / factor;
    const smooth = (oldContext / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return ((1 - smooth) * freq) / factor + smooth * freq;
  });
}

/** YaRN's magnitude correction: 0.1 * mscale * ln(scale) + 1 for scale > 1. */
function yarnMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * YaRN ("NTK-by-parts" plus attention temperature): dimensions that rotate more than betaFast
 * times over the original context keep their frequency (extrapolate), those rotating fewer than
 * betaSlow times are interpolated (divided by factor), with a linear ramp between.
 */
function yarnParameters(config: RopeConfig, scaling: Extract<RopeScaling, { type: 'yarn' }>): { invFreq: Float64Array; attentionScaling: number } {
  const dim = config.headDim;
  const base = config.ropeTheta;
  const { factor, betaFast, betaSlow, mscale, mscaleAllDim } = scaling;

  let attention = scaling.attentionFactor;
  if (attention === null) {
    // transformers tests `if mscale and mscale_all_dim`: both must be set and non-zero.
    attention = mscale && mscaleAllDim ? yarnMscale(factor, mscale) / yarnMscale(factor, mscaleAllDim) : yarnMscale(factor);
  }

  // The dimension whose pair completes `rotations` turns over the original context.
  const correctionDim = (rotations: number): number =>
    (dim * Math.log(scaling.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
  let low = correctionDim(betaFast);
  let high = correctionDim(betaSlow);
  if (scaling.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001; // as transformers: avoid dividing by zero

  const freqs = new Float64Array(dim / 2);
  for (let j = 0; j < freqs.length; j++) {
    const posFreq = Math.pow(base, (2 * j) / dim);
    const ramp = Math.min(Math.max((j - low) / (high - low), 0), 1);
    const extrapolation = 1 - ramp; // 1: keep the original frequency, 0: interpolate fully
    freqs[j] = (1 / (factor * posFreq)) * (1 - extrapolation) + (1 / posFreq) * extrapolation;
  }
  return { invFreq: freqs, attentionScaling: attention };
}
