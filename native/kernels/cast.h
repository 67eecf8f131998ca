// cast: elementwise dtype conversion between f32, f16 and bf16 (round to nearest even, NaN
// stays NaN, overflow to inf), and i32/u8 -> float. Exactly the conversions in common.h.
#pragma once
#include "common.h"

namespace kvf {

struct CastArgs {
  const void* in = nullptr;
  DType in_dtype = DType::f32;
  void* out = nullptr;
  DType out_dtype = DType::f32;
  int64_t n = 0;
};

Status cast_cpu(const CastArgs& args);
Status cast_cuda(const CastArgs& args, void* stream);

}  // namespace kvf
