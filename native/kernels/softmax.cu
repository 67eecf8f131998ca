// softmax on CUDA: one block per row (grid-stride over rows), three passes over the row: the
// max of s·x, the sum of exp(s·x - max), then y = exp(s·x - max) / sum. exp is computed twice
// per element instead of staging e in shared memory, so any row length works with no scratch;
// rows after the first pass come from L1/L2. Full-precision expf and IEEE division throughout.
#include <cuda_runtime.h>

#include <algorithm>

#include "softmax.h"

namespace kvf {
namespace {

struct MaxOp {
  __device__ float operator()(float a, float b) const { return b > a ? b : a; }  // NaN never becomes the max
  static constexpr float identity = -INFINITY;
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
  static constexpr float identity = 0.0f;
};

// Block-wide reduction for blockDim.x a multiple of 32 (at most 1024). Every thread returns the
// same value: xor-butterfly shuffles combine each pair of lanes in one order (both ops commute
// exactly), and every warp then reduces the 32 partials identically. `partials` holds 32
// floats; the trailing barrier lets the caller reuse it at once.
template <typename Op>
__device__ float block_reduce(float v, float* partials) {
  const Op op;
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? partials[lane] : Op::identity;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  return v;
}

// No __restrict__ on x/y: y may alias x. All reads of passes 1 and 2 finish before the second
// reduction's barrier, and in pass 3 each element is read by the thread that writes it.
template <typename T>
__global__ void softmax_kernel(const T* x, T* y, int64_t rows, int64_t cols, float scale) {
  __shared__ float partials[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) m = MaxOp{}(m, scale * to_f32(xr[j]));
    m = block_reduce<MaxOp>(m, partials);
    if (m == -INFINITY) {  // fully masked row (the same branch in every thread): zeros, NaN stays NaN
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = scale * to_f32(xr[j]);
        yr[j] = from_f32<T>(isnan(v) ? v : 0.0f);
      }
      continue;
    }
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) sum += expf(scale * to_f32(xr[j]) - m);
    sum = block_reduce<SumOp>(sum, partials);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      yr[j] = from_f32<T>(expf(scale * to_f32(xr[j]) - m) / sum);
    }
  }
}

}  // namespace

Status softmax_cuda(const SoftmaxArgs& a, void* stream) {
  if (a.rows == 0 || a.cols == 0) return Status::Ok();
  // A warp multiple covering the row, at most 1024: one element per thread up to 1024 columns.
  const int threads = static_cast<int>(std::min<int64_t>(1024, (a.cols + 31) / 32 * 32));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.rows, 65535LL * 8));
  Status st = dispatch_float(a.dtype, "softmax", [&](auto tag) {
    using T = decltype(tag);
    softmax_kernel<T><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a.x), static_cast<T*>(a.y), a.rows, a.cols, a.scale);
    return Status::Ok();
  });
  if (!st.ok()) return st;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("softmax: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
