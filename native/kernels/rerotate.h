// rerotate: move cached keys from the positions they were rotated at to new positions.
//   in, out: (tokens, heads, head_dim), same float dtype; out may alias in (in-place on pages).
//   from_pos, to_pos: (tokens) i32.  inv_freq: (rotary_dim / 2) f32.
//   rotary_dim: the leading dimensions of each head that carry RoPE (partial rotary, even,
//   <= head_dim; 0 means head_dim); the others are copied unchanged. Pairs as in rope.h, within
//   the rotary dimensions: (2i, 2i+1) adjacent, (i, i + rotary_dim/2) half.
// Rotation is additive, so moving a key from p to q is one rotation of every pair by
// theta_i(q) - theta_i(p) = (q - p) * inv_freq[i] (rerotate_math.h has the arithmetic, shared
// with rerotate_pages). The key is read, rotated in f32 and rounded once to the storage dtype:
// one rounding instead of two for "un-rotate, then rotate again".
// attn_factor is not applied: it was applied when the key was first rotated.
#pragma once
#include "common.h"

namespace kvf {

struct RerotateArgs {
  const void* in = nullptr;
  void* out = nullptr;
  DType dtype = DType::f32;
  int64_t tokens = 0, heads = 0, head_dim = 0;
  int64_t rotary_dim = 0;  // 0: head_dim
  const int32_t* from_pos = nullptr;
  const int32_t* to_pos = nullptr;
  const float* inv_freq = nullptr;
  RopeLayout layout = RopeLayout::half;
};

Status rerotate_cpu(const RerotateArgs& args);
Status rerotate_cuda(const RerotateArgs& args, void* stream);

// The rotary width of args (head_dim when rotary_dim is 0), or an error for an odd or too wide one.
inline Status rerotate_rotary_dim(const char* op, int64_t head_dim, int64_t rotary_dim, int64_t* out) {
  const int64_t r = rotary_dim == 0 ? head_dim : rotary_dim;
  if (head_dim % 2 != 0) return invalid_argument(std::string(op) + ": head_dim must be even");
  if (r < 0 || r % 2 != 0 || r > head_dim)
    return invalid_argument(std::string(op) + ": rotary_dim must be even and within head_dim (" + std::to_string(r) + " of " + std::to_string(head_dim) + ")");
  *out = r;
  return Status::Ok();
}

}  // namespace kvf
