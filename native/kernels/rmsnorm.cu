// rmsnorm on CUDA: one block per row (grid-stride over rows). Pass 1 sums x² over the row into a
// block-wide f32 sum; pass 2 re-reads the row (from L1/L2) and writes (x · inv_rms) · weight.
// Memory-bound: one read of x from DRAM, one write of y.
#include <cuda_runtime.h>

#include <algorithm>

#include "rmsnorm.h"

namespace kvf {
namespace {

// Block-wide sum for blockDim.x a multiple of 32 (at most 1024). Every thread returns the same
// value: xor-butterfly shuffles combine each pair of lanes in one order (addition commutes
// exactly), and every warp then reduces the 32 partials identically. `partials` holds 32
// floats; the trailing barrier lets the caller reuse it at once.
__device__ float block_sum(float v, float* partials) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? partials[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

// No __restrict__ on x/y: y may alias x (in-place norm). Every read of x in pass 1 finishes
// before block_sum's barrier, and in pass 2 each element is read by the thread that writes it.
template <typename T, typename W>
__global__ void rmsnorm_kernel(const T* x, const W* __restrict__ weight, T* y, int64_t rows, int64_t dim, float eps) {
  __shared__ float partials[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const float v = to_f32(xr[j]);
      sum += v * v;
    }
    sum = block_sum(sum, partials);
    const float inv_rms = 1.0f / sqrtf(sum / static_cast<float>(dim) + eps);  // IEEE sqrt and divide, no rsqrtf
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      yr[j] = from_f32<T>(to_f32(xr[j]) * inv_rms * to_f32(weight[j]));
    }
  }
}

}  // namespace

Status rmsnorm_cuda(const RmsNormArgs& a, void* stream) {
  if (a.rows == 0 || a.dim == 0) return Status::Ok();
  // A warp multiple covering the row, at most 1024: one element per thread up to dim 1024.
  const int threads = static_cast<int>(std::min<int64_t>(1024, (a.dim + 31) / 32 * 32));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.rows, 65535LL * 8));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  Status st = dispatch_float(a.dtype, "rmsnorm", [&](auto x_tag) {
    using T = decltype(x_tag);
    return dispatch_float(a.weight_dtype, "rmsnorm (weight)", [&](auto w_tag) {
      using W = decltype(w_tag);
      rmsnorm_kernel<T, W><<<blocks, threads, 0, s>>>(static_cast<const T*>(a.x), static_cast<const W*>(a.weight),
                                                      static_cast<T*>(a.y), a.rows, a.dim, a.eps);
      return Status::Ok();
    });
  });
  if (!st.ok()) return st;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("rmsnorm: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
