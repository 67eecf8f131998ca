// CPU twin of rerotate.cu. Per token: the (q - p) angle table (reused while the shift stays the
// same), then every head (rerotate_cpu_rows.h, shared with rerotate_pages).
// No FP contraction in this file: the rotation's products and sums are rounded one by one, the
// arithmetic of the CUDA kernel, on every CPU level the clones target (rerotate_math.h).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "parallel.h"
#include "rerotate.h"
#include "rerotate_cpu_rows.h"

namespace kvf {
namespace {

template <typename T>
KVF_CPU_CLONES void rerotate_rows(const RerotateArgs& a, int64_t rotary_dim, int64_t t0, int64_t t1) {
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  rerotation::RotationTable table(rotary_dim / 2);
  std::vector<float> x(static_cast<size_t>(rotary_dim)), y(static_cast<size_t>(rotary_dim));  // 16-bit heads in f32
  const bool adjacent = a.layout == RopeLayout::adjacent;
  for (int64_t t = t0; t < t1; ++t) {
    table.set(static_cast<int64_t>(a.to_pos[t]) - a.from_pos[t], a.inv_freq);
    for (int64_t h = 0; h < a.heads; ++h) {
      const int64_t base = (t * a.heads + h) * a.head_dim;
      rerotation::move_head<T>(in + base, out + base, table, a.head_dim, rotary_dim, adjacent, x.data(), y.data());
    }
  }
}

}  // namespace

Status rerotate_cpu(const RerotateArgs& a) {
  int64_t rotary_dim = 0;
  KVF_RETURN_IF_ERROR(rerotate_rotary_dim("rerotate", a.head_dim, a.rotary_dim, &rotary_dim));
  return dispatch_float(a.dtype, "rerotate", [&](auto tag) {
    using T = decltype(tag);
    cpu::parallel_for(a.tokens, 1, [&](int64_t t0, int64_t t1) { rerotate_rows<T>(a, rotary_dim, t0, t1); });
    return Status::Ok();
  });
}

}  // namespace kvf
