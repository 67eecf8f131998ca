// rope: rotary position embedding at given positions.
//   in, out: (tokens, heads, head_dim), same float dtype; out may alias in.
//   positions: (tokens) i32, one position per token shared by its heads.
//   inv_freq: (head_dim / 2) f32; theta_i(p) = p * inv_freq[i] (rope scaling is folded into
//   inv_freq on the host). attn_factor scales cos and sin (YaRN's mscale; 1 otherwise).
// Pair i is (2i, 2i+1) for RopeLayout::adjacent and (i, i + head_dim/2) for RopeLayout::half:
//   x0' = x0 cos - x1 sin,  x1' = x0 sin + x1 cos.
// The angle is float(p) * inv_freq[i] in f32, as HF transformers computes it, then sin/cos in
// f32; one rounding to the storage dtype.
#pragma once
#include "common.h"

namespace kvf {

struct RopeArgs {
  const void* in = nullptr;
  void* out = nullptr;
  DType dtype = DType::f32;
  int64_t tokens = 0, heads = 0, head_dim = 0;
  const int32_t* positions = nullptr;
  const float* inv_freq = nullptr;
  RopeLayout layout = RopeLayout::half;
  float attn_factor = 1.0f;
};

Status rope_cpu(const RopeArgs& args);
Status rope_cuda(const RopeArgs& args, void* stream);

}  // namespace kvf
