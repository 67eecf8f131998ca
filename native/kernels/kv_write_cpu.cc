// CPU twin of kv_write.cu: token t's key and value rows (kv_heads * head_dim elements) go to
// pool slot slots[t], i.e. element offset slots[t] * kv_heads * head_dim (page-major pool:
// page * page_size + row = slot). A copy when the dtypes match, else one conversion through f32.
// Every slot is checked against the pool before anything is written.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kv_write.h"
#include "parallel.h"

namespace kvf {
namespace {

template <typename Src, typename Dst>
KVF_CPU_CLONES void write_rows(const KvWriteArgs& a, int64_t t0, int64_t t1) {
  const int64_t row = a.kv_heads * a.head_dim;
  const Src* k = static_cast<const Src*>(a.k);
  const Src* v = static_cast<const Src*>(a.v);
  Dst* kp = static_cast<Dst*>(a.k_pool);
  Dst* vp = static_cast<Dst*>(a.v_pool);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t dst = static_cast<int64_t>(a.slots[t]) * row;
    if constexpr (std::is_same_v<Src, Dst>) {
      std::memcpy(kp + dst, k + t * row, static_cast<size_t>(row) * sizeof(Dst));
      std::memcpy(vp + dst, v + t * row, static_cast<size_t>(row) * sizeof(Dst));
    } else {
      for (int64_t i = 0; i < row; ++i) kp[dst + i] = from_f32<Dst>(to_f32(k[t * row + i]));
      for (int64_t i = 0; i < row; ++i) vp[dst + i] = from_f32<Dst>(to_f32(v[t * row + i]));
    }
  }
}

}  // namespace

Status kv_write_cpu(const KvWriteArgs& a) {
  if (a.page_size <= 0) return invalid_argument("kv_write: page_size must be positive");
  if (a.tokens < 0 || a.kv_heads < 0 || a.head_dim < 0 || a.num_pages < 0) return invalid_argument("kv_write: negative shape");
  const int64_t pool_slots = a.num_pages * a.page_size;
  for (int64_t t = 0; t < a.tokens; ++t) {
    if (a.slots[t] < 0 || a.slots[t] >= pool_slots) {
      return invalid_argument("kv_write: slots[" + std::to_string(t) + "] = " + std::to_string(a.slots[t]) +
                              " is outside the pool [0, " + std::to_string(pool_slots) + ")");
    }
  }
  const int64_t row = a.kv_heads * a.head_dim;
  if (a.tokens == 0 || row == 0) return Status::Ok();
  return dispatch_float(a.pool_dtype, "kv_write (pool)", [&](auto pool_tag) {
    using Dst = decltype(pool_tag);
    return dispatch_float(a.src_dtype, "kv_write (k, v)", [&](auto src_tag) {
      using Src = decltype(src_tag);
      const int64_t grain = std::max<int64_t>(1, 8192 / row);  // ~16K elements (k and v) per chunk
      cpu::parallel_for(a.tokens, grain, [&](int64_t t0, int64_t t1) { write_rows<Src, Dst>(a, t0, t1); });
      return Status::Ok();
    });
  });
}

}  // namespace kvf
