// softmax over the last axis: y[r, j] = exp(s x[r, j] - max_j s x[r, :]) / sum_j exp(...)
//   x, y: (rows, cols), same float dtype; y may alias x. s = scale.
// Max-subtracted for stability; sums in f32. A row of all -inf yields all zeros (a fully
// masked attention row), not NaN.
#pragma once
#include "common.h"

namespace kvf {

struct SoftmaxArgs {
  const void* x = nullptr;
  void* y = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0, cols = 0;
  float scale = 1.0f;
};

Status softmax_cpu(const SoftmaxArgs& args);
Status softmax_cuda(const SoftmaxArgs& args, void* stream);

}  // namespace kvf
