// CPU twin of topk.cu. Each element gets a distinct 64-bit rank key (rank_key.h); the top k
// are the k largest keys: a linear scan for k = 1 (argmax), else std::partial_sort of the row's
// keys, O(cols log k).
#include <algorithm>
#include <functional>
#include <vector>

#include "parallel.h"
#include "rank_key.h"
#include "topk.h"

namespace kvf {
namespace {


template <typename T>
void topk_rows(const TopKArgs& a, std::vector<unsigned long long>& keys, int64_t r0, int64_t r1) {
  const int64_t cols = a.cols, k = a.k;
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * cols;
    float* values = a.values + r * k;
    int32_t* indices = a.indices + r * k;
    if (k == 1) {
      unsigned long long best = 0;
      for (int64_t j = 0; j < cols; ++j) best = std::max(best, rank_key(to_f32(x[j]), j));
      indices[0] = key_col(best);
      values[0] = to_f32(x[indices[0]]);
      continue;
    }
    for (int64_t j = 0; j < cols; ++j) keys[static_cast<size_t>(j)] = rank_key(to_f32(x[j]), j);
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end(), std::greater<unsigned long long>());
    for (int64_t j = 0; j < k; ++j) {
      indices[j] = key_col(keys[static_cast<size_t>(j)]);
      values[j] = to_f32(x[indices[j]]);  // the stored value itself: -0 stays -0, NaN keeps its bits
    }
  }
}

}  // namespace

Status topk_cpu(const TopKArgs& a) {
  if (a.cols > INT32_MAX) return invalid_argument("topk: cols must fit an i32 index");
  if (a.k < 1 || a.k > a.cols) return invalid_argument("topk: k must be in [1, cols]");
  if (a.rows == 0) return Status::Ok();
  return dispatch_float(a.dtype, "topk", [&](auto tag) {
    using T = decltype(tag);
    const int64_t grain = std::max<int64_t>(1, 16384 / a.cols);  // ~16K elements per chunk
    cpu::parallel_for(a.rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<unsigned long long> keys(a.k == 1 ? 0 : static_cast<size_t>(a.cols));
      topk_rows<T>(a, keys, r0, r1);
    });
    return Status::Ok();
  });
}

}  // namespace kvf
