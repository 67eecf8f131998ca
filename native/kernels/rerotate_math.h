// The arithmetic of moving a RoPE'd key from position p to position q, shared by rerotate (one
// contiguous run) and rerotate_pages (every layer's moved pages in one launch), on the host and
// on the device, so that both ops compute the same bits for the same move.
//
// Rotation is additive: moving a key from p to q rotates pair i by theta_i(q) - theta_i(p) =
// (q - p) * inv_freq[i], one rotation instead of "un-rotate, then rotate again". The shift
// q - p is taken in integers (exact), the angle in f32, sin/cos with the accurate library
// functions (sinf/cosf, sincosf on the device; never __sinf), the rotation in f32, and one
// rounding to the storage dtype.
#pragma once

#include <cmath>

#include "common.h"

namespace kvf {

// sin and cos of the angle that moves pair frequency `inv_freq` by `delta` positions.
KVF_HD void rerotation_sincos(int64_t delta, float inv_freq, float* s, float* c) {
  const float angle = static_cast<float>(delta) * inv_freq;
#if defined(__CUDA_ARCH__)
  sincosf(angle, s, c);
#else
  *c = std::cos(angle);
  *s = std::sin(angle);
#endif
}

// Pair layout: the two dimensions of pair i of a head whose first `rotary_dim` dimensions rotate
// (the rest are copied unchanged).
KVF_HD int64_t pair_lo(int64_t i, int64_t rotary_dim, bool adjacent) { return adjacent ? 2 * i : i; }
KVF_HD int64_t pair_hi(int64_t i, int64_t rotary_dim, bool adjacent) { return adjacent ? 2 * i + 1 : i + rotary_dim / 2; }

}  // namespace kvf
