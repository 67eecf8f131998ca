// silu_mul: the SwiGLU gate, out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise.
//   gate, up, out: (n) contiguous, same float dtype; f32 arithmetic, one rounding.
#pragma once
#include "common.h"

namespace kvf {

struct SiluMulArgs {
  const void* gate = nullptr;
  const void* up = nullptr;
  void* out = nullptr;
  DType dtype = DType::f32;
  int64_t n = 0;
};

Status silu_mul_cpu(const SiluMulArgs& args);
Status silu_mul_cuda(const SiluMulArgs& args, void* stream);

}  // namespace kvf
