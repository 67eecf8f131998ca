// topk on CUDA: one block per row (grid-stride over rows), k rounds of a block-wide arg-max.
// Every element has a distinct 64-bit rank key (rank_key.h), so round j simply takes the
// largest key below the one round j-1 took: no marks, no shared copy of the row, any row length.
// Cost per row: k passes over the row (each thread reads cols / blockDim elements per pass) and
// k block reductions. Ideal for argmax and sampling-sized k (the row stays in L2 between passes);
// a large k over a long row wants a radix select instead.
#include <cuda_runtime.h>

#include <algorithm>

#include "rank_key.h"
#include "topk.h"

namespace kvf {
namespace {


// Block-wide max for blockDim.x a multiple of 32 (at most 1024); every thread returns it.
// `partials` holds 32 keys; the trailing barrier lets the caller reuse it at once.
__device__ unsigned long long block_max(unsigned long long v, unsigned long long* partials) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? partials[lane] : 0ull;
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  __syncthreads();
  return v;
}

template <typename T>
__global__ void topk_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t k, float* __restrict__ values,
                            int32_t* __restrict__ indices) {
  __shared__ unsigned long long partials[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    unsigned long long taken = ~0ull;  // above every key
    for (int64_t j = 0; j < k; ++j) {
      unsigned long long best = 0;  // below every key
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const unsigned long long key = rank_key(to_f32(xr[c]), c);
        if (key < taken && key > best) best = key;
      }
      best = block_max(best, partials);
      taken = best;
      if (threadIdx.x == 0) {
        const int32_t col = key_col(best);
        indices[r * k + j] = col;
        values[r * k + j] = to_f32(xr[col]);  // the stored value itself: -0 stays -0, NaN keeps its bits
      }
    }
  }
}

}  // namespace

Status topk_cuda(const TopKArgs& a, void* stream) {
  if (a.cols > INT32_MAX) return invalid_argument("topk: cols must fit an i32 index");
  if (a.k < 1 || a.k > a.cols) return invalid_argument("topk: k must be in [1, cols]");
  if (a.rows == 0) return Status::Ok();
  const int threads = static_cast<int>(std::min<int64_t>(1024, (a.cols + 31) / 32 * 32));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.rows, 65535LL * 8));
  Status st = dispatch_float(a.dtype, "topk", [&](auto tag) {
    using T = decltype(tag);
    topk_kernel<T><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(a.x), a.rows, a.cols,
                                                                             a.k, a.values, a.indices);
    return Status::Ok();
  });
  if (!st.ok()) return st;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("topk: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
