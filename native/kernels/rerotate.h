// rerotate: move cached keys from the positions they were rotated at to new positions.
//   in, out: (tokens, heads, head_dim), same float dtype; out may alias in (in-place on pages).
//   from_pos, to_pos: (tokens) i32.  inv_freq: (head_dim / 2) f32.
// Rotation is additive, so moving a key from p to q is one rotation of every pair by
// theta_i(q) - theta_i(p) = (q - p) * inv_freq[i]. The position difference is taken in integers
// (exact), the angle in f32, and the key is read, rotated in f32 and rounded once to the
// storage dtype: one rounding instead of two for "un-rotate, then rotate again".
// attn_factor is not applied: it was applied when the key was first rotated.
#pragma once
#include "common.h"

namespace kvf {

struct RerotateArgs {
  const void* in = nullptr;
  void* out = nullptr;
  DType dtype = DType::f32;
  int64_t tokens = 0, heads = 0, head_dim = 0;
  const int32_t* from_pos = nullptr;
  const int32_t* to_pos = nullptr;
  const float* inv_freq = nullptr;
  RopeLayout layout = RopeLayout::half;
};

Status rerotate_cpu(const RerotateArgs& args);
Status rerotate_cuda(const RerotateArgs& args, void* stream);

}  // namespace kvf
