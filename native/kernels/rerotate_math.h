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
#pragma once

#include <cmath>

#include "common.h"

namespace kvf {

// sin and cos of the angle that moves pair frequency `inv_freq` by `delta` positions, to f32
// accuracy for any shift of i32 positions.
KVF_HD void rerotation_sincos(int64_t delta, float inv_freq, float* s, float* c) {
  const float d_hi = static_cast<float>(delta);                          // exact below 2^24
  const float d_lo = static_cast<float>(delta - static_cast<int64_t>(d_hi));  // the rest (0 below 2^24)
  const float hi = d_hi * inv_freq;
  float sh, ch, sl, cl;
#if defined(__CUDA_ARCH__)
  const float lo = fmaf(d_hi, inv_freq, -hi) + d_lo * inv_freq;  // hi + lo = delta * inv_freq
  sincosf(hi, &sh, &ch);
  sincosf(lo, &sl, &cl);
#else
  const float lo = std::fma(d_hi, inv_freq, -hi) + d_lo * inv_freq;
  sh = std::sin(hi);
  ch = std::cos(hi);
  sl = std::sin(lo);
  cl = std::cos(lo);
#endif
  *s = sh * cl + ch * sl;
  *c = ch * cl - sh * sl;
}

// Pair layout: the two dimensions of pair i of a head whose first `rotary_dim` dimensions rotate
// (the rest are copied unchanged).
KVF_HD int64_t pair_lo(int64_t i, int64_t rotary_dim, bool adjacent) { return adjacent ? 2 * i : i; }
KVF_HD int64_t pair_hi(int64_t i, int64_t rotary_dim, bool adjacent) { return adjacent ? 2 * i + 1 : i + rotary_dim / 2; }

}  // namespace kvf
