// CPU twin of softmax.cu. Per row, three passes: the max of s·x; e_j = exp(s·x_j - max) into an
// f32 scratch row while summing; y_j = e_j / sum, rounded once to the storage dtype.
// Max and sum keep kLanes independent partials so the loops vectorise without reassociation
// flags, and exp is exp_f32 (cpu_math.h) rather than std::exp, whose libm call keeps a loop scalar.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_math.h"
#include "parallel.h"
#include "softmax.h"

namespace kvf {
namespace {

using cpu::exp_f32;
using cpu::mask_if;
using cpu::select_f32;

constexpr int kLanes = 16;

// Rows [r0, r1); e is a scratch row of `cols` floats.
template <typename T>
KVF_CPU_CLONES void softmax_rows(const SoftmaxArgs& a, float* e, int64_t r0, int64_t r1) {
  const int64_t cols = a.cols;
  const float s = a.scale;
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * cols;
    T* y = static_cast<T*>(a.y) + r * cols;

    float lane_max[kLanes];
    for (int l = 0; l < kLanes; ++l) lane_max[l] = -INFINITY;
    int64_t j = 0;
    for (; j + kLanes <= cols; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = s * to_f32(x[j + l]);
        lane_max[l] = v > lane_max[l] ? v : lane_max[l];  // NaN never becomes the max
      }
    }
    float m = -INFINITY;
    for (int l = 0; l < kLanes; ++l) m = lane_max[l] > m ? lane_max[l] : m;
    for (; j < cols; ++j) {
      const float v = s * to_f32(x[j]);
      m = v > m ? v : m;
    }

    if (m == -INFINITY) {  // fully masked row: zeros (a NaN input still shows as NaN)
      for (j = 0; j < cols; ++j) {
        const float v = s * to_f32(x[j]);
        y[j] = from_f32<T>(std::isnan(v) ? v : 0.0f);
      }
      continue;
    }

    float lane_sum[kLanes] = {};
    for (j = 0; j + kLanes <= cols; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = exp_f32(s * to_f32(x[j + l]) - m);
        e[j + l] = v;
        lane_sum[l] += v;
      }
    }
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += lane_sum[l];
    for (; j < cols; ++j) {
      const float v = exp_f32(s * to_f32(x[j]) - m);
      e[j] = v;
      sum += v;
    }

    for (j = 0; j < cols; ++j) y[j] = from_f32<T>(e[j] / sum);
  }
}

}  // namespace

Status softmax_cpu(const SoftmaxArgs& a) {
  if (a.rows == 0 || a.cols == 0) return Status::Ok();
  return dispatch_float(a.dtype, "softmax", [&](auto tag) {
    using T = decltype(tag);
    const int64_t grain = std::max<int64_t>(1, 16384 / a.cols);  // ~16K elements per chunk
    cpu::parallel_for(a.rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<float> e(static_cast<size_t>(a.cols));
      softmax_rows<T>(a, e.data(), r0, r1);
    });
    return Status::Ok();
  });
}

}  // namespace kvf
