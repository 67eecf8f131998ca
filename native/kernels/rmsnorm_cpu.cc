// CPU twin of rmsnorm.cu. Per row: the sum of squares in f32 over kLanes independent partials
// (so it vectorises without reassociation flags), then y = (x · inv_rms) · weight rounded once.
#include <algorithm>
#include <cmath>

#include "parallel.h"
#include "rmsnorm.h"

namespace kvf {
namespace {

constexpr int kLanes = 16;

template <typename T, typename W>
KVF_CPU_CLONES void rmsnorm_rows(const RmsNormArgs& a, int64_t r0, int64_t r1) {
  const int64_t dim = a.dim;
  const W* w = static_cast<const W*>(a.weight);
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * dim;
    T* y = static_cast<T*>(a.y) + r * dim;
    float lane[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= dim; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = to_f32(x[j + l]);
        lane[l] += v * v;
      }
    }
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += lane[l];
    for (; j < dim; ++j) {
      const float v = to_f32(x[j]);
      sum += v * v;
    }
    // 1 / sqrt, not an approximate rsqrt: the CUDA kernel computes the same expression.
    const float inv_rms = 1.0f / std::sqrt(sum / static_cast<float>(dim) + a.eps);
    for (j = 0; j < dim; ++j) y[j] = from_f32<T>(to_f32(x[j]) * inv_rms * to_f32(w[j]));
  }
}

}  // namespace

Status rmsnorm_cpu(const RmsNormArgs& a) {
  if (a.rows == 0 || a.dim == 0) return Status::Ok();
  return dispatch_float(a.dtype, "rmsnorm", [&](auto x_tag) {
    using T = decltype(x_tag);
    return dispatch_float(a.weight_dtype, "rmsnorm (weight)", [&](auto w_tag) {
      using W = decltype(w_tag);
      const int64_t grain = std::max<int64_t>(1, 16384 / a.dim);  // ~16K elements per chunk
      cpu::parallel_for(a.rows, grain, [&](int64_t r0, int64_t r1) { rmsnorm_rows<T, W>(a, r0, r1); });
      return Status::Ok();
    });
  });
}

}  // namespace kvf
