// CPU twin of silu_mul.cu: out = gate / (1 + exp(-gate)) * up in f32, one rounding. exp is
// exp_f32 (cpu_math.h) rather than std::exp, whose libm call keeps the loop scalar.
#include <cmath>

#include "cpu_math.h"
#include "parallel.h"
#include "silu_mul.h"

namespace kvf {
namespace {

using cpu::exp_f32;
using cpu::mask_if;
using cpu::select_f32;

// No __restrict__: out may be gate or up (an in-place SwiGLU); each element is read before it
// is written.
template <typename T>
KVF_CPU_CLONES void silu_mul_range(const T* gate, const T* up, T* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g / (1.0f + exp_f32(-g)) * to_f32(up[i]));  // exp(-g) = inf gives -0, not NaN
  }
}

}  // namespace

Status silu_mul_cpu(const SiluMulArgs& a) {
  return dispatch_float(a.dtype, "silu_mul", [&](auto tag) {
    using T = decltype(tag);
    cpu::parallel_for(a.n, 1 << 14, [&](int64_t b, int64_t e) {
      silu_mul_range(static_cast<const T*>(a.gate), static_cast<const T*>(a.up), static_cast<T*>(a.out), b, e);
    });
    return Status::Ok();
  });
}

}  // namespace kvf
