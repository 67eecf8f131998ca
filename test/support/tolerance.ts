// Shared by the op tests: what a tensor of a dtype holds, and a tolerance check that names the
// worst element relative to its allowance.
import type { FloatDType } from '../../lib/index.js';
import { roundTo } from './random.js';

/** The values a tensor of `dtype` holds for x (f32 as is, f16/bf16 rounded to nearest even). */
export function held(dtype: FloatDType, x: Float32Array): Float32Array {
  return dtype === 'f32' ? x : roundTo(dtype, x);
}

/** Largest |got - want| / (atol + rtol |want|): at most 1 when every element is within tolerance. */
export function worstError(got: ArrayLike<number>, want: ArrayLike<number>, rtol: number, atol: number): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!) / (atol + rtol * Math.abs(want[i]!));
    if (!(e <= worst)) worst = e; // NaN propagates as a failure
  }
  return worst;
}

/** Unit roundoff of each storage dtype: one rounding to it is within this relative error. */
export const UNIT_ROUNDOFF: Record<FloatDType, number> = { f32: 2 ** -24, f16: 2 ** -11, bf16: 2 ** -8 };
