// kv_write on CUDA: grid-stride over the (tokens, kv_heads * head_dim) elements of k and v, one
// thread per element writing both pools (a copy when the dtypes match, else one conversion,
// bit-identical to the CPU twin). A slot outside the pool is skipped rather than written: the
// engine owns the tables and checks them, and a device-side report would cost a stream sync on
// every layer's write (the CPU twin returns invalid_argument for it).
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "kv_write.h"

namespace kvf {
namespace {

template <typename Src, typename Dst>
__global__ void kv_write_kernel(const Src* __restrict__ k, const Src* __restrict__ v, Dst* __restrict__ k_pool,
                                Dst* __restrict__ v_pool, const int32_t* __restrict__ slots, int64_t tokens, int64_t row,
                                int64_t pool_slots) {
  const int64_t n = tokens * row;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = idx / row;
    const int64_t i = idx - t * row;
    const int64_t slot = slots[t];
    if (slot < 0 || slot >= pool_slots) continue;
    const int64_t dst = slot * row + i;
    if constexpr (std::is_same_v<Src, Dst>) {
      k_pool[dst] = k[idx];
      v_pool[dst] = v[idx];
    } else {
      k_pool[dst] = from_f32<Dst>(to_f32(k[idx]));
      v_pool[dst] = from_f32<Dst>(to_f32(v[idx]));
    }
  }
}

}  // namespace

Status kv_write_cuda(const KvWriteArgs& a, void* stream) {
  if (a.page_size <= 0) return invalid_argument("kv_write: page_size must be positive");
  if (a.tokens < 0 || a.kv_heads < 0 || a.head_dim < 0 || a.num_pages < 0) return invalid_argument("kv_write: negative shape");
  const int64_t row = a.kv_heads * a.head_dim;
  const int64_t n = a.tokens * row;
  if (n == 0) return Status::Ok();
  return dispatch_float(a.pool_dtype, "kv_write (pool)", [&](auto pool_tag) {
    using Dst = decltype(pool_tag);
    return dispatch_float(a.src_dtype, "kv_write (k, v)", [&](auto src_tag) {
      using Src = decltype(src_tag);
      const int threads = 256;
      const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535LL * 8);
      kv_write_kernel<Src, Dst><<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const Src*>(a.k), static_cast<const Src*>(a.v), static_cast<Dst*>(a.k_pool), static_cast<Dst*>(a.v_pool),
          a.slots, a.tokens, row, a.num_pages * a.page_size);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return device_error(std::string("kv_write: ") + cudaGetErrorString(err));
      return Status::Ok();
    });
  });
}

}  // namespace kvf
