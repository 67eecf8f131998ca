// CPU twin of rerotate.cu. Per token: the (q - p) angle table (reused while the shift stays the
// same), then every head.
#include <climits>
#include <cmath>
#include <vector>

#include "parallel.h"
#include "rerotate.h"

namespace kvf {
namespace {

template <typename T>
void rerotate_rows(const RerotateArgs& a, int64_t t0, int64_t t1) {
  const int64_t half = a.head_dim / 2;
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  std::vector<float> cs(static_cast<size_t>(half) * 2);
  // Pair i of a head: elements (lo(i), hi(i)).
  const bool adjacent = a.layout == RopeLayout::adjacent;
  // Re-positioning usually moves a whole block by one shift, so consecutive tokens share the
  // same (q - p) and the sin/cos table is computed once per run of equal shifts.
  int64_t table_delta = INT64_MIN;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t d = static_cast<int64_t>(a.to_pos[t]) - a.from_pos[t];
    if (d != table_delta) {
      table_delta = d;
      const float delta = static_cast<float>(d);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = delta * a.inv_freq[i];
        cs[2 * i] = std::cos(angle);
        cs[2 * i + 1] = std::sin(angle);
      }
    }
    for (int64_t h = 0; h < a.heads; ++h) {
      const int64_t base = (t * a.heads + h) * a.head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t lo = adjacent ? 2 * i : i;
        const int64_t hi = adjacent ? 2 * i + 1 : i + half;
        const float x0 = to_f32(in[base + lo]);
        const float x1 = to_f32(in[base + hi]);
        const float c = cs[2 * i], s = cs[2 * i + 1];
        out[base + lo] = from_f32<T>(x0 * c - x1 * s);
        out[base + hi] = from_f32<T>(x0 * s + x1 * c);
      }
    }
  }
}

}  // namespace

Status rerotate_cpu(const RerotateArgs& a) {
  if (a.head_dim % 2 != 0) return invalid_argument("rerotate: head_dim must be even");
  return dispatch_float(a.dtype, "rerotate", [&](auto tag) {
    using T = decltype(tag);
    cpu::parallel_for(a.tokens, 1, [&](int64_t t0, int64_t t1) { rerotate_rows<T>(a, t0, t1); });
    return Status::Ok();
  });
}

}  // namespace kvf
