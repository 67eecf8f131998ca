// silu_mul on CUDA: grid-stride elementwise, out = gate / (1 + expf(-gate)) * up in f32, one
// rounding. Memory-bound (two reads, one write per element); full-precision expf, IEEE divide.
#include <cuda_runtime.h>

#include <algorithm>

#include "silu_mul.h"

namespace kvf {
namespace {

// No __restrict__: out may be gate or up (in place); each element is read before it is written.
template <typename T>
__global__ void silu_mul_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));  // expf(-g) = inf gives -0, not NaN
  }
}

}  // namespace

Status silu_mul_cuda(const SiluMulArgs& a, void* stream) {
  if (a.n == 0) return Status::Ok();
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((a.n + threads - 1) / threads, 65535LL * 8));
  Status st = dispatch_float(a.dtype, "silu_mul", [&](auto tag) {
    using T = decltype(tag);
    silu_mul_kernel<T><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a.gate), static_cast<const T*>(a.up), static_cast<T*>(a.out), a.n);
    return Status::Ok();
  });
  if (!st.ok()) return st;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("silu_mul: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
