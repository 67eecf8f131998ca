// The rank key topk and sample order logits by, on the CPU and in CUDA (one definition, so the
// twins rank alike). Larger keys rank first. High half: the value's bits mapped to an unsigned
// order that sorts like the floats, with -0 equal to +0 and NaN (either sign) below -inf. Low
// half: the complemented column, so an equal value at a lower index ranks first. Every element
// of a row has a distinct key; no key is 0 and none is all ones.
#pragma once

#include <cstdint>

#include "common.h"

namespace kvf {

KVF_HD unsigned long long rank_key(float v, int64_t col) {
  uint32_t u = f32_bits(v);
  if ((u & 0x7fffffffu) == 0) u = 0;  // -0 ties with +0
  uint32_t order = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  if ((u & 0x7fffffffu) > 0x7f800000u) order = 0;  // NaN never beats a number
  return (static_cast<unsigned long long>(order) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(col));
}

KVF_HD int32_t key_col(unsigned long long key) { return static_cast<int32_t>(~static_cast<uint32_t>(key)); }

}  // namespace kvf
