// add on CUDA: grid-stride, one thread per element, f32 sum rounded once to a's dtype (the CPU
// twin's formula, so the two agree to the bit). Memory-bound; no __restrict__ on a and out,
// which may alias.
#include <cuda_runtime.h>

#include <algorithm>

#include "add.h"

namespace kvf {
namespace {

template <typename T, typename TB>
__global__ void add_kernel(const T* a, const TB* __restrict__ b, T* out, int64_t n, int64_t cols, bool broadcast_b) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n; idx += (int64_t)gridDim.x * blockDim.x) {
    const float bv = to_f32(b[broadcast_b ? idx % cols : idx]);
    out[idx] = from_f32<T>(to_f32(a[idx]) + bv);
  }
}

}  // namespace

Status add_cuda(const AddArgs& a, void* stream) {
  if (a.rows < 0 || a.cols < 0) return invalid_argument("add: negative shape");
  const int64_t n = a.rows * a.cols;
  if (n == 0) return Status::Ok();
  return dispatch_float(a.dtype, "add (a)", [&](auto tag) {
    using T = decltype(tag);
    return dispatch_float(a.b_dtype, "add (b)", [&](auto b_tag) {
      using TB = decltype(b_tag);
      const int threads = 256;
      const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535LL * 8);
      add_kernel<T, TB><<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(a.a), static_cast<const TB*>(a.b), static_cast<T*>(a.out), n, a.cols, a.broadcast_b);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return device_error(std::string("add: ") + cudaGetErrorString(err));
      return Status::Ok();
    });
  });
}

}  // namespace kvf
