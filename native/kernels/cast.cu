// cast on CUDA: grid-stride elementwise conversion, same scalar routines as the CPU twin.
#include <cuda_runtime.h>

#include <algorithm>

#include "cast.h"

namespace kvf {
namespace {

template <typename In, typename Out>
__global__ void cast_kernel(const In* __restrict__ in, Out* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_f32<Out>(to_f32(in[i]));
}

template <typename Int, typename Out>
__global__ void cast_int_kernel(const Int* __restrict__ in, Out* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_f32<Out>(static_cast<float>(in[i]));
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535LL * 8)); }

}  // namespace

Status cast_cuda(const CastArgs& a, void* stream) {
  if (a.n == 0) return Status::Ok();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  Status st = dispatch_float(a.out_dtype, "cast", [&](auto out_tag) -> Status {
    using Out = decltype(out_tag);
    if (a.in_dtype == DType::i32) {
      cast_int_kernel<<<grid_for(a.n), 256, 0, s>>>(static_cast<const int32_t*>(a.in), static_cast<Out*>(a.out), a.n);
      return Status::Ok();
    }
    if (a.in_dtype == DType::u8) {
      cast_int_kernel<<<grid_for(a.n), 256, 0, s>>>(static_cast<const uint8_t*>(a.in), static_cast<Out*>(a.out), a.n);
      return Status::Ok();
    }
    return dispatch_float(a.in_dtype, "cast", [&](auto in_tag) {
      using In = decltype(in_tag);
      cast_kernel<<<grid_for(a.n), 256, 0, s>>>(static_cast<const In*>(a.in), static_cast<Out*>(a.out), a.n);
      return Status::Ok();
    });
  });
  if (!st.ok()) return st;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("cast: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
