// CPU building blocks shared by rerotate_cpu.cc and rerotate_pages_cpu.cc: one key head moved
// with a precomputed sin/cos table. Both ops call exactly these functions, so the engine's fused
// attach (rerotate_pages) writes the same bits as one rerotate per page did.
#pragma once

#include <climits>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "rerotate_math.h"

namespace kvf::rerotation {

// One head widened to f32 and narrowed back: plain loops over the head, which vectorise;
// converting inside the rotation loop kept it scalar (~0.1x of a copy).
template <typename T>
inline void widen(const T* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = to_f32(src[j]);
}

template <typename T>
inline void narrow(const float* src, T* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = from_f32<T>(src[j]);
}

#if defined(__x86_64__)
// f16 with F16C (vcvtph2ps / vcvtps2ph, round to nearest even, as f32_to_f16), 8 at a time: the
// portable conversions branch on subnormals and stay scalar.
__attribute__((target("arch=x86-64-v3"))) inline void widen_f16c(const f16_t* src, float* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  for (; j < n; ++j) dst[j] = f16_to_f32(src[j]);
}

__attribute__((target("arch=x86-64-v3"))) inline void narrow_f16c(const float* src, f16_t* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; j < n; ++j) dst[j] = f32_to_f16(src[j]);
}

inline const bool kHasF16c = __builtin_cpu_supports("x86-64-v3");

template <>
inline void widen<f16_t>(const f16_t* src, float* dst, int64_t n) {
  if (kHasF16c) return widen_f16c(src, dst, n);
  for (int64_t j = 0; j < n; ++j) dst[j] = f16_to_f32(src[j]);
}

template <>
inline void narrow<f16_t>(const float* src, f16_t* dst, int64_t n) {
  if (kHasF16c) return narrow_f16c(src, dst, n);
  for (int64_t j = 0; j < n; ++j) dst[j] = f32_to_f16(src[j]);
}
#endif

// Rotates the pairs of the first 2 * half dimensions in f32: out = (x0 c - x1 s, x0 s + x1 c)
// for pair i. The split layout (pairs (i, i + half)) is two contiguous streams, so the loop
// vectorises. In place is safe: each output pair depends only on its own input pair.
inline void rotate_pairs(const float* x, float* y, const float* c, const float* s, int64_t half, bool adjacent) {
  if (adjacent) {
    for (int64_t i = 0; i < half; ++i) {
      const float x0 = x[2 * i], x1 = x[2 * i + 1];
      y[2 * i] = x0 * c[i] - x1 * s[i];
      y[2 * i + 1] = x0 * s[i] + x1 * c[i];
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const float x0 = x[i], x1 = x[i + half];
      y[i] = x0 * c[i] - x1 * s[i];
      y[i + half] = x0 * s[i] + x1 * c[i];
    }
  }
}

// The sin/cos of every pair for one shift q - p. Re-positioning usually moves a whole block by
// one shift, so consecutive rows share it and the table is computed once per run of equal shifts.
class RotationTable {
 public:
  explicit RotationTable(int64_t pairs) : c_(static_cast<size_t>(pairs)), s_(static_cast<size_t>(pairs)) {}
  void set(int64_t delta, const float* inv_freq) {
    if (delta == delta_) return;
    delta_ = delta;
    for (size_t i = 0; i < c_.size(); ++i) rerotation_sincos(delta, inv_freq[i], &s_[i], &c_[i]);
  }
  const float* c() const { return c_.data(); }
  const float* s() const { return s_.data(); }

 private:
  int64_t delta_ = INT64_MIN;
  std::vector<float> c_, s_;
};

// One head of head_dim values: the first rotary_dim rotate with the table, the rest are copied
// unchanged (partial rotary). src may equal dst. 16-bit heads are widened into x, rotated into
// y (each rotary_dim floats) and rounded once.
template <typename T>
inline void move_head(const T* src, T* dst, const RotationTable& table, int64_t head_dim, int64_t rotary_dim, bool adjacent,
                      float* x, float* y) {
  if constexpr (std::is_same_v<T, float>) {
    rotate_pairs(src, dst, table.c(), table.s(), rotary_dim / 2, adjacent);
  } else {
    widen(src, x, rotary_dim);
    rotate_pairs(x, y, table.c(), table.s(), rotary_dim / 2, adjacent);
    narrow(y, dst, rotary_dim);
  }
  if (rotary_dim < head_dim && src != dst) std::memcpy(dst + rotary_dim, src + rotary_dim, static_cast<size_t>(head_dim - rotary_dim) * sizeof(T));
}

}  // namespace kvf::rerotation
