// CPU twin of rerotate.cu. Per token: the (q - p) angle table (reused while the shift stays the
// same), then every head.
#include <climits>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "parallel.h"
#include "rerotate.h"

namespace kvf {
namespace {

// One head widened to f32 and narrowed back: plain loops over the head, which vectorise;
// converting inside the rotation loop kept it scalar (~0.1x of a copy).
template <typename T>
void widen(const T* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = to_f32(src[j]);
}

template <typename T>
void narrow(const float* src, T* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = from_f32<T>(src[j]);
}

#if defined(__x86_64__)
// f16 with F16C (vcvtph2ps / vcvtps2ph, round to nearest even, as f32_to_f16), 8 at a time: the
// portable conversions branch on subnormals and stay scalar.
__attribute__((target("arch=x86-64-v3"))) void widen_f16c(const f16_t* src, float* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  for (; j < n; ++j) dst[j] = f16_to_f32(src[j]);
}

__attribute__((target("arch=x86-64-v3"))) void narrow_f16c(const float* src, f16_t* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; j < n; ++j) dst[j] = f32_to_f16(src[j]);
}

const bool kHasF16c = __builtin_cpu_supports("x86-64-v3");

template <>
void widen<f16_t>(const f16_t* src, float* dst, int64_t n) {
  if (kHasF16c) return widen_f16c(src, dst, n);
  for (int64_t j = 0; j < n; ++j) dst[j] = f16_to_f32(src[j]);
}

template <>
void narrow<f16_t>(const float* src, f16_t* dst, int64_t n) {
  if (kHasF16c) return narrow_f16c(src, dst, n);
  for (int64_t j = 0; j < n; ++j) dst[j] = f32_to_f16(src[j]);
}
#endif

// Rotates one head's pairs in f32: out = (x0 c - x1 s, x0 s + x1 c) for pair i. Split layout
// (pairs (i, i + half)) is two contiguous streams, so the loop vectorises.
inline void rotate_head(const float* x, float* y, const float* c, const float* s, int64_t half, bool adjacent) {
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

template <typename T>
void rerotate_rows(const RerotateArgs& a, int64_t t0, int64_t t1) {
  const int64_t half = a.head_dim / 2;
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
  std::vector<float> x(static_cast<size_t>(a.head_dim)), y(static_cast<size_t>(a.head_dim));  // 16-bit heads in f32
  const bool adjacent = a.layout == RopeLayout::adjacent;
  // Re-positioning usually moves a whole block by one shift, so consecutive tokens share the
  // same (q - p) and the sin/cos table is computed once per run of equal shifts.
  int64_t table_delta = INT64_MIN;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t d = static_cast<int64_t>(a.to_pos[t]) - a.from_pos[t];
    if (d != table_delta) {
      table_delta = d;
      const float delta = static_cast<float>(d);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = delta * a.inv_freq[i];
        c[i] = std::cos(angle);
        s[i] = std::sin(angle);
      }
    }
    for (int64_t h = 0; h < a.heads; ++h) {
      const int64_t base = (t * a.heads + h) * a.head_dim;
      if constexpr (std::is_same_v<T, float>) {
        // In place too: each output pair depends only on its own input pair.
        rotate_head(in + base, out + base, c.data(), s.data(), half, adjacent);
      } else {
        widen(in + base, x.data(), a.head_dim);
        rotate_head(x.data(), y.data(), c.data(), s.data(), half, adjacent);
        narrow(y.data(), out + base, a.head_dim);
      }
    }
  }
}

}  // namespace

Status rerotate_cpu(const RerotateArgs& a) {
  if (a.head_dim % 2 != 0) return invalid_argument("rerotate: head_dim must be even");
  return dispatch_float(a.dtype, "rerotate", [&](auto tag) {
    using T = decltype(tag);
    cpu::parallel_for(a.tokens, 1, [&](int64_t t0, int64_t t1) { rerotate_rows<T>(a, t0, t1); });
    return Status::Ok();
  });
}

}  // namespace kvf
