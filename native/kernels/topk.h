// topk: the k largest values of each row and their column indices, in descending order;
// equal values keep the lower index first; NaN is never selected over a number.
//   x: (rows, cols) float dtype; values: (rows, k) f32; indices: (rows, k) i32; 1 <= k <= cols.
// argmax is topk with k = 1.
#pragma once
#include "common.h"

namespace kvf {

struct TopKArgs {
  const void* x = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0, cols = 0, k = 1;
  float* values = nullptr;
  int32_t* indices = nullptr;
};

Status topk_cpu(const TopKArgs& args);
Status topk_cuda(const TopKArgs& args, void* stream);

}  // namespace kvf
