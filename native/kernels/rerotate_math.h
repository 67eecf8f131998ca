// The arithmetic of moving a RoPE'd key from position p to position q, shared by rerotate (one
// contiguous run) and rerotate_pages (every layer's moved pages in one launch), on the host and
// on the device, so that both ops compute the same bits for the same move.
//
// Rotation is additive: moving a key from p to q rotates pair i by theta_i(q) - theta_i(p) =
// (q - p) * inv_freq[i], one rotation instead of "un-rotate, then rotate again". The shift
// q - p is taken in integers (exact). The angle is carried in f32 as hi + lo, the product
// rounded and its rounding error recovered with one fma (an error-free product), and sin/cos
// of it come from the accurate library functions (sinf/cosf, sincosf on the device; never
// __sinf) of hi and of lo, combined by the angle-addition formulas. A plain f32 product would
// be off by up to half an ulp of the angle, 0.004 rad at a shift of 100k: more than a bf16
// rounding, and different for every hop, so p -> q -> r -> p would not return to p.
// The rotation is done in f32 and rounded once to the storage dtype: one rounding per move,
// and a move by 0 (sin 0, cos 1) gives back the key bit for bit.
//
// Every multiply and add here is rounded on its own, never fused into an FMA: on the device
// through __fmul_rn / __fadd_rn, on the host because the CPU twins are compiled without FP
// contraction (the pragma at the top of rerotate_cpu.cc and rerotate_pages_cpu.cc). So the
// CPU gives the same bits on every x86 level its clones target, and the CUDA kernels compute
// the same arithmetic (only sinf/cosf may differ by an ulp between the two libraries).
#pragma once

#include <cmath>

#include "common.h"

namespace kvf {

KVF_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

KVF_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

KVF_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// sin and cos of the angle that moves pair frequency `inv_freq` by `delta` positions, to f32
// accuracy for any shift of i32 positions.
KVF_HD void rerotation_sincos(int64_t delta, float inv_freq, float* s, float* c) {
  const float d_hi = static_cast<float>(delta);                               // exact below 2^24
  const float d_lo = static_cast<float>(delta - static_cast<int64_t>(d_hi));  // the rest (0 below 2^24)
  const float hi = mul_rn(d_hi, inv_freq);
  float sh, ch, sl, cl;
#if defined(__CUDA_ARCH__)
  const float lo = __fadd_rn(fmaf(d_hi, inv_freq, -hi), __fmul_rn(d_lo, inv_freq));  // hi + lo = delta * inv_freq
  sincosf(hi, &sh, &ch);
  sincosf(lo, &sl, &cl);
#else
  const float lo = std::fma(d_hi, inv_freq, -hi) + d_lo * inv_freq;
  sh = std::sin(hi);
  ch = std::cos(hi);
  sl = std::sin(lo);
  cl = std::cos(lo);
#endif
  *s = add_rn(mul_rn(sh, cl), mul_rn(ch, sl));
  *c = sub_rn(mul_rn(ch, cl), mul_rn(sh, sl));
}

// One pair rotated: (x0 c - x1 s, x0 s + x1 c), each product and sum rounded to f32.
KVF_HD void rotate_pair(float x0, float x1, float c, float s, float* y0, float* y1) {
  *y0 = sub_rn(mul_rn(x0, c), mul_rn(x1, s));
  *y1 = add_rn(mul_rn(x0, s), mul_rn(x1, c));
}

// Pair layout: the two dimensions of pair i of a head whose first `rotary_dim` dimensions rotate
// (the rest are copied unchanged).
KVF_HD int64_t pair_lo(int64_t i, int64_t rotary_dim, bool adjacent) { return adjacent ? 2 * i : i; }
KVF_HD int64_t pair_hi(int64_t i, int64_t rotary_dim, bool adjacent) { return adjacent ? 2 * i + 1 : i + rotary_dim / 2; }

}  // namespace kvf
