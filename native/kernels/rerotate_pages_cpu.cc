// CPU twin of rerotate_pages.cu. The runs are split over the pool's threads; each thread keeps
// one sin/cos table and recomputes it only when the shift changes (a moved block shifts every
// token of every layer by the same amount, so that is about once per thread). Per row and head
// the arithmetic is rerotate's, call for call (rerotate_cpu_rows.h).
// No FP contraction in this file: the rotation's products and sums are rounded one by one, the
// arithmetic of the CUDA kernel, on every CPU level the clones target (rerotate_math.h).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <string>

#include "parallel.h"
#include "rerotate.h"
#include "rerotate_cpu_rows.h"
#include "rerotate_pages.h"

namespace kvf {
namespace {

template <typename T>
KVF_CPU_CLONES void move_runs(const RerotatePagesArgs& a, int64_t rotary_dim, int64_t r0, int64_t r1) {
  const T* src = static_cast<const T*>(a.src_pool);
  T* dst = static_cast<T*>(a.dst_pool);
  const int64_t row_elems = a.kv_heads * a.head_dim;
  rerotation::RotationTable table(rotary_dim / 2);
  std::vector<float> x(static_cast<size_t>(rotary_dim)), y(static_cast<size_t>(rotary_dim));  // 16-bit heads in f32
  const bool adjacent = a.layout == RopeLayout::adjacent;
  for (int64_t r = r0; r < r1; ++r) {
    const RerotateRun& run = a.runs[r];
    const T* in = src + (static_cast<int64_t>(run.src_page) * a.page_size + run.src_row) * row_elems;
    T* out = dst + (static_cast<int64_t>(run.dst_page) * a.page_size + run.dst_row) * row_elems;
    for (int64_t k = 0; k < run.rows; ++k) {
      table.set(static_cast<int64_t>(a.positions[run.to + k]) - a.positions[run.from + k], a.inv_freq);
      const int64_t h0 = run.head > 0 ? run.head - 1 : 0, h1 = run.head > 0 ? run.head : a.kv_heads;
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t off = k * row_elems + h * a.head_dim;
        rerotation::move_head<T>(in + off, out + off, table, a.head_dim, rotary_dim, adjacent, x.data(), y.data());
      }
    }
  }
}

}  // namespace

Status check_rerotate_runs(const RerotateRun* runs, int64_t num_runs, int64_t num_pages, int64_t page_size, int64_t positions,
                           int64_t kv_heads) {
  for (int64_t r = 0; r < num_runs; ++r) {
    const RerotateRun& m = runs[r];
    const std::string where = "rerotate_pages: run " + std::to_string(r);
    if (m.src_page < 0 || m.src_page >= num_pages || m.dst_page < 0 || m.dst_page >= num_pages)
      return invalid_argument(where + " names a page outside the pool [0, " + std::to_string(num_pages) + ")");
    if (m.rows < 0 || m.src_row < 0 || m.dst_row < 0 || m.src_row + static_cast<int64_t>(m.rows) > page_size ||
        m.dst_row + static_cast<int64_t>(m.rows) > page_size)
      return invalid_argument(where + " has rows outside its pages (page size " + std::to_string(page_size) + ")");
    if (m.from < 0 || m.to < 0 || m.from + static_cast<int64_t>(m.rows) > positions || m.to + static_cast<int64_t>(m.rows) > positions)
      return invalid_argument(where + " reads positions outside the list of " + std::to_string(positions));
    if (m.head < 0 || m.head > kv_heads) return invalid_argument(where + " names a KV head outside [0, " + std::to_string(kv_heads) + "]");
  }
  return Status::Ok();
}

Status rerotate_pages_cpu(const RerotatePagesArgs& a) {
  int64_t rotary_dim = 0;
  KVF_RETURN_IF_ERROR(rerotate_rotary_dim("rerotate_pages", a.head_dim, a.rotary_dim, &rotary_dim));
  return dispatch_float(a.dtype, "rerotate_pages", [&](auto tag) {
    using T = decltype(tag);
    cpu::parallel_for(a.num_runs, 1, [&](int64_t r0, int64_t r1) { move_runs<T>(a, rotary_dim, r0, r1); });
    return Status::Ok();
  });
}

}  // namespace kvf
