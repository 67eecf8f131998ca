// CPU twin of rope.cu. Per token: the cos/sin table once (angle = float(p) · inv_freq[i] in f32,
// as HF computes it, both scaled by attn_factor), then every head rotated from it.
#include <cmath>
#include <vector>

#include "parallel.h"
#include "rope.h"

namespace kvf {
namespace {

// Tokens [t0, t1); cs is a scratch table of head_dim floats (cos in [0, half), sin in
// [half, head_dim)). No __restrict__ on in/out: out may alias in, and each pair is read before
// it is written.
template <typename T>
KVF_CPU_CLONES void rope_tokens(const RopeArgs& a, float* cs, int64_t t0, int64_t t1) {
  const int64_t half = a.head_dim / 2;
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  float* cos_t = cs;
  float* sin_t = cs + half;
  const bool adjacent = a.layout == RopeLayout::adjacent;
  for (int64_t t = t0; t < t1; ++t) {
    const float p = static_cast<float>(a.positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = p * a.inv_freq[i];
      cos_t[i] = std::cos(angle) * a.attn_factor;
      sin_t[i] = std::sin(angle) * a.attn_factor;
    }
    for (int64_t h = 0; h < a.heads; ++h) {
      const int64_t base = (t * a.heads + h) * a.head_dim;
      // Pair i of a head is (lo, hi): (2i, 2i+1) adjacent, (i, i + half) half-split.
      for (int64_t i = 0; i < half; ++i) {
        const int64_t lo = base + (adjacent ? 2 * i : i);
        const int64_t hi = base + (adjacent ? 2 * i + 1 : i + half);
        const float x0 = to_f32(in[lo]);
        const float x1 = to_f32(in[hi]);
        out[lo] = from_f32<T>(x0 * cos_t[i] - x1 * sin_t[i]);
        out[hi] = from_f32<T>(x0 * sin_t[i] + x1 * cos_t[i]);
      }
    }
  }
}

}  // namespace

Status rope_cpu(const RopeArgs& a) {
  if (a.head_dim % 2 != 0) return invalid_argument("rope: head_dim must be even");
  if (a.tokens == 0 || a.heads == 0 || a.head_dim == 0) return Status::Ok();
  return dispatch_float(a.dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    cpu::parallel_for(a.tokens, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> cs(static_cast<size_t>(a.head_dim));
      rope_tokens<T>(a, cs.data(), t0, t1);
    });
    return Status::Ok();
  });
}

}  // namespace kvf
