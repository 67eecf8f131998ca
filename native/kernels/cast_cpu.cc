// CPU twin of cast.cu.
#include "cast.h"
#include "parallel.h"

namespace kvf {
namespace {

template <typename In, typename Out>
void cast_range(const In* in, Out* out, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) out[i] = from_f32<Out>(static_cast<float>(to_f32(in[i])));
}

template <typename Out>
void cast_from_int(const CastArgs& a, int64_t b, int64_t e) {
  Out* out = static_cast<Out*>(a.out);
  if (a.in_dtype == DType::i32) {
    const int32_t* in = static_cast<const int32_t*>(a.in);
    for (int64_t i = b; i < e; ++i) out[i] = from_f32<Out>(static_cast<float>(in[i]));
  } else {
    const uint8_t* in = static_cast<const uint8_t*>(a.in);
    for (int64_t i = b; i < e; ++i) out[i] = from_f32<Out>(static_cast<float>(in[i]));
  }
}

}  // namespace

Status cast_cpu(const CastArgs& a) {
  if (!is_float(a.out_dtype)) return unsupported(std::string("cast: to ") + dtype_name(a.out_dtype) + " is not supported");
  return dispatch_float(a.out_dtype, "cast", [&](auto out_tag) -> Status {
    using Out = decltype(out_tag);
    if (a.in_dtype == DType::i32 || a.in_dtype == DType::u8) {
      cpu::parallel_for(a.n, 1 << 16, [&](int64_t b, int64_t e) { cast_from_int<Out>(a, b, e); });
      return Status::Ok();
    }
    return dispatch_float(a.in_dtype, "cast", [&](auto in_tag) {
      using In = decltype(in_tag);
      cpu::parallel_for(a.n, 1 << 16, [&](int64_t b, int64_t e) {
        cast_range(static_cast<const In*>(a.in), static_cast<Out*>(a.out), b, e);
      });
      return Status::Ok();
    });
  });
}

}  // namespace kvf
