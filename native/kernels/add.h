// add: out = a + b, elementwise, where b is either the same size as a or one row broadcast over
// a's rows (a bias). Residual connections and q/k/v biases.
//   a, out: (rows, cols), same float dtype; out may alias a.  b: (rows, cols) or (cols), any float dtype.
#pragma once
#include "common.h"

namespace kvf {

struct AddArgs {
  const void* a = nullptr;
  void* out = nullptr;
  DType dtype = DType::f32;
  const void* b = nullptr;
  DType b_dtype = DType::f32;
  int64_t rows = 0, cols = 0;
  bool broadcast_b = false;  // b is one row of `cols`
};

Status add_cpu(const AddArgs& args);
Status add_cuda(const AddArgs& args, void* stream);

}  // namespace kvf
