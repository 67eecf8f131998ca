// matmul: C = A @ op(B), f32 accumulation, one rounding to C's dtype.
//   A: (batch, m, k)            row-major, dtype a_dtype in {f32, f16, bf16}
//   B: (batch_b, k, n)          when !trans_b
//      (batch_b, n, k)          when trans_b (PyTorch Linear weight layout: y = x W^T)
//   C: (batch, m, n)            dtype c_dtype in {f32, f16, bf16}
// batch_b is 1 (B broadcast over the batch) or equal to batch. A and B may differ in dtype
// (f32 activations times bf16 weights is the common CPU inference case).
#pragma once
#include "common.h"

namespace kvf {

struct MatmulArgs {
  const void* a = nullptr;
  DType a_dtype = DType::f32;
  const void* b = nullptr;
  DType b_dtype = DType::f32;
  void* c = nullptr;
  DType c_dtype = DType::f32;
  int64_t batch = 1, m = 0, n = 0, k = 0;
  bool broadcast_b = true;  // batch_b == 1
  bool trans_b = false;
};

Status matmul_cpu(const MatmulArgs& args);
Status matmul_cuda(const MatmulArgs& args, void* stream);

}  // namespace kvf
