// CPU twin of add.cu: out = a + b in f32, rounded once to a's dtype; b is either a's size or
// one row of `cols` broadcast over a's rows. out may alias a: each element is read before it
// is written.
#include <algorithm>

#include "add.h"
#include "parallel.h"

namespace kvf {
namespace {

// Rows [r0, r1). With broadcast_b, b is one row; otherwise it has a's layout.
template <typename T, typename TB>
KVF_CPU_CLONES void add_rows(const T* a, const TB* b, T* out, int64_t cols, bool broadcast_b, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* ar = a + r * cols;
    const TB* br = broadcast_b ? b : b + r * cols;
    T* orow = out + r * cols;
    for (int64_t c = 0; c < cols; ++c) orow[c] = from_f32<T>(to_f32(ar[c]) + to_f32(br[c]));
  }
}

}  // namespace

Status add_cpu(const AddArgs& a) {
  if (a.rows < 0 || a.cols < 0) return invalid_argument("add: negative shape");
  if (a.rows == 0 || a.cols == 0) return Status::Ok();
  return dispatch_float(a.dtype, "add (a)", [&](auto tag) {
    using T = decltype(tag);
    return dispatch_float(a.b_dtype, "add (b)", [&](auto b_tag) {
      using TB = decltype(b_tag);
      const int64_t grain = std::max<int64_t>(1, (1 << 14) / a.cols);  // ~16K elements per chunk
      cpu::parallel_for(a.rows, grain, [&](int64_t r0, int64_t r1) {
        add_rows(static_cast<const T*>(a.a), static_cast<const TB*>(a.b), static_cast<T*>(a.out), a.cols, a.broadcast_b, r0, r1);
      });
      return Status::Ok();
    });
  });
}

}  // namespace kvf
