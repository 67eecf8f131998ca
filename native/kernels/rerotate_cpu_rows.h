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

// A head widened to f32 and narrowed back (f16 keys on hosts without F16C).
template <typename T>
inline void widen(const T* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = to_f32(src[j]);
}

template <typename T>
inline void narrow(const float* src, T* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = from_f32<T>(src[j]);
}

#if defined(__x86_64__)
inline const bool kHasF16c = __builtin_cpu_supports("x86-64-v3");
#endif

// One head's rotary pairs moved in one pass: each pair read, widened, rotated in f32 and rounded
// back, y = (x0 c - x1 s, x0 s + x1 c). Plain loops over the pairs with the conversions inline,
// which vectorise in the AVX2 / AVX-512 clones of the callers (bf16 and f32: the conversions are
// integer and bit operations; 4x the speed of widen/rotate/narrow through buffers). In place is
// safe: each output pair depends only on its own input pair (hence ivdep).
template <typename T>
inline void rotate_half(const T* a, T* b, const float* c, const float* s, int64_t half) {
#pragma GCC ivdep
  for (int64_t i = 0; i < half; ++i) {
    float y0, y1;
    rotate_pair(to_f32(a[i]), to_f32(a[i + half]), c[i], s[i], &y0, &y1);
    b[i] = from_f32<T>(y0);
    b[i + half] = from_f32<T>(y1);
  }
}

template <typename T>
inline void rotate_adjacent(const T* a, T* b, const float* c, const float* s, int64_t half) {
#pragma GCC ivdep
  for (int64_t i = 0; i < half; ++i) {
    float y0, y1;
    rotate_pair(to_f32(a[2 * i]), to_f32(a[2 * i + 1]), c[i], s[i], &y0, &y1);
    b[2 * i] = from_f32<T>(y0);
    b[2 * i + 1] = from_f32<T>(y1);
  }
}

// The sin/cos of every pair for one shift q - p. Re-positioning usually moves a whole block by
// one shift, so consecutive rows share it and the table is computed once per run of equal shifts.
// Also kept expanded to one entry per dimension, (c, c) and (-s, s) per pair, for the F16C
// adjacent-pair loop: y = x c' + swap(x) s', with swap exchanging the two values of each pair.
class RotationTable {
 public:
  explicit RotationTable(int64_t pairs)
      : c_(static_cast<size_t>(pairs)), s_(static_cast<size_t>(pairs)), ce_(2 * c_.size()), se_(2 * c_.size()) {}
  void set(int64_t delta, const float* inv_freq) {
    if (delta == delta_) return;
    delta_ = delta;
    for (size_t i = 0; i < c_.size(); ++i) {
      rerotation_sincos(delta, inv_freq[i], &s_[i], &c_[i]);
      ce_[2 * i] = ce_[2 * i + 1] = c_[i];
      se_[2 * i] = -s_[i];
      se_[2 * i + 1] = s_[i];
    }
  }
  const float* c() const { return c_.data(); }
  const float* s() const { return s_.data(); }
  const float* c_expanded() const { return ce_.data(); }
  const float* s_expanded() const { return se_.data(); }

 private:
  int64_t delta_ = INT64_MIN;
  std::vector<float> c_, s_, ce_, se_;
};

// f16 keys: the portable conversions branch (subnormals) and stay scalar, so with F16C the pairs
// go 8 at a time through vcvtph2ps / vcvtps2ph (round to nearest even, as f32_to_f16); without
// it, through f32 buffers.
inline void rotate_f16_buffered(const f16_t* a, f16_t* b, const RotationTable& t, int64_t rotary_dim, bool adjacent, float* x, float* y) {
  widen(a, x, rotary_dim);
  if (adjacent) rotate_adjacent(x, y, t.c(), t.s(), rotary_dim / 2);
  else rotate_half(x, y, t.c(), t.s(), rotary_dim / 2);
  narrow(y, b, rotary_dim);
}

#if defined(__x86_64__)
__attribute__((target("arch=x86-64-v3"))) inline void rotate_f16c(const f16_t* a, f16_t* b, const RotationTable& t, int64_t rotary_dim,
                                                                   bool adjacent, float* x, float* y) {
  const int64_t half = rotary_dim / 2;
  const int64_t vec = adjacent ? rotary_dim / 8 * 8 : half / 8 * 8;
  const int round = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  if (adjacent) {
    const float* ce = t.c_expanded();
    const float* se = t.s_expanded();
    for (int64_t j = 0; j < vec; j += 8) {
      const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + j)));
      const __m256 swapped = _mm256_permute_ps(v, 0xb1);  // (x1, x0) in every pair
      const __m256 out = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(ce + j)), _mm256_mul_ps(swapped, _mm256_loadu_ps(se + j)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(b + j), _mm256_cvtps_ph(out, round));
    }
    rotate_adjacent(a + vec, b + vec, t.c() + vec / 2, t.s() + vec / 2, half - vec / 2);
    return;
  }
  for (int64_t i = 0; i < vec; i += 8) {
    const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i + half)));
    const __m256 c = _mm256_loadu_ps(t.c() + i), s = _mm256_loadu_ps(t.s() + i);
    const __m256 y0 = _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s));
    const __m256 y1 = _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(b + i), _mm256_cvtps_ph(y0, round));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(b + i + half), _mm256_cvtps_ph(y1, round));
  }
  for (int64_t i = vec; i < half; ++i) {
    float y0, y1;
    rotate_pair(f16_to_f32(a[i]), f16_to_f32(a[i + half]), t.c()[i], t.s()[i], &y0, &y1);
    b[i] = f32_to_f16(y0);
    b[i + half] = f32_to_f16(y1);
  }
}
#endif

// One head of head_dim values: the first rotary_dim rotate with the table, the rest are copied
// unchanged (partial rotary). src may equal dst. x, y: rotary_dim floats of scratch (f16
// without F16C only).
template <typename T>
inline void move_head(const T* src, T* dst, const RotationTable& table, int64_t head_dim, int64_t rotary_dim, bool adjacent,
                      float* x, float* y) {
  if constexpr (std::is_same_v<T, f16_t>) {
#if defined(__x86_64__)
    if (kHasF16c) rotate_f16c(src, dst, table, rotary_dim, adjacent, x, y);
    else rotate_f16_buffered(src, dst, table, rotary_dim, adjacent, x, y);
#else
    rotate_f16_buffered(src, dst, table, rotary_dim, adjacent, x, y);
#endif
  } else if (adjacent) {
    rotate_adjacent(src, dst, table.c(), table.s(), rotary_dim / 2);
  } else {
    rotate_half(src, dst, table.c(), table.s(), rotary_dim / 2);
  }
  if (rotary_dim < head_dim && src != dst) std::memcpy(dst + rotary_dim, src + rotary_dim, static_cast<size_t>(head_dim - rotary_dim) * sizeof(T));
}

}  // namespace kvf::rerotation
