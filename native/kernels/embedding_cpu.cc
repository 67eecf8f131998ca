// CPU twin of embedding.cu. Every id is checked before anything is written; rows are copied
// (memcpy when the dtypes match, else converted through f32 with one rounding).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "embedding.h"
#include "parallel.h"

namespace kvf {
namespace {

template <typename In, typename Out>
void gather_rows(const EmbeddingArgs& a, int64_t t0, int64_t t1) {
  const In* table = static_cast<const In*>(a.table);
  Out* out = static_cast<Out*>(a.out);
  for (int64_t t = t0; t < t1; ++t) {
    const In* src = table + static_cast<int64_t>(a.ids[t]) * a.dim;
    Out* dst = out + t * a.dim;
    if constexpr (std::is_same_v<In, Out>) {
      std::memcpy(dst, src, static_cast<size_t>(a.dim) * sizeof(Out));
    } else {
      for (int64_t j = 0; j < a.dim; ++j) dst[j] = from_f32<Out>(to_f32(src[j]));
    }
  }
}

}  // namespace

Status embedding_cpu(const EmbeddingArgs& a) {
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int32_t id = a.ids[t];
    if (id < 0 || id >= a.vocab) {
      return invalid_argument("embedding: token " + std::to_string(t) + " has id " + std::to_string(id) +
                              ", outside the vocabulary [0, " + std::to_string(a.vocab) + ")");
    }
  }
  if (a.tokens == 0 || a.dim == 0) return Status::Ok();
  return dispatch_float(a.out_dtype, "embedding (out)", [&](auto out_tag) {
    using Out = decltype(out_tag);
    return dispatch_float(a.table_dtype, "embedding (table)", [&](auto in_tag) {
      using In = decltype(in_tag);
      const int64_t grain = std::max<int64_t>(1, 16384 / a.dim);  // ~16K elements per chunk
      cpu::parallel_for(a.tokens, grain, [&](int64_t t0, int64_t t1) { gather_rows<In, Out>(a, t0, t1); });
      return Status::Ok();
    });
  });
}

}  // namespace kvf
