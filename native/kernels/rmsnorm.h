// rmsnorm: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
//   x, y: (rows, dim), same float dtype; weight: (dim), any float dtype.
// The mean and the scale are computed in f32 (as HF's LlamaRMSNorm does after upcasting); the
// product is rounded once to y's dtype.
#pragma once
#include "common.h"

namespace kvf {

struct RmsNormArgs {
  const void* x = nullptr;
  void* y = nullptr;
  DType dtype = DType::f32;
  const void* weight = nullptr;
  DType weight_dtype = DType::f32;
  int64_t rows = 0, dim = 0;
  float eps = 1e-6f;
};

Status rmsnorm_cpu(const RmsNormArgs& args);
Status rmsnorm_cuda(const RmsNormArgs& args, void* stream);

}  // namespace kvf
