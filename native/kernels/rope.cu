// rope on CUDA: one block per token (grid-stride over tokens). The block fills a cos/sin table
// for the token's position in shared memory (head_dim/2 sincosf calls instead of one per head),
// then its threads rotate every (head, pair) of the token. Memory-bound otherwise: each element
// is read once and written once.
#include <cuda_runtime.h>

#include <algorithm>

#include "rope.h"

namespace kvf {
namespace {

// No __restrict__ on in/out: out may alias in, and each pair is read by the thread that writes it.
template <typename T>
__global__ void rope_kernel(const T* in, T* out, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                            int64_t tokens, int64_t heads, int64_t head_dim, bool adjacent, float attn_factor) {
  extern __shared__ float table[];  // cos in [0, half), sin in [half, head_dim)
  const int64_t half = head_dim / 2;
  const int64_t pairs = heads * half;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float p = static_cast<float>(positions[t]);
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      float s, c;
      sincosf(p * inv_freq[i], &s, &c);  // full-precision sincosf, never __sincosf
      table[i] = c * attn_factor;
      table[half + i] = s * attn_factor;
    }
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
      const int64_t h = idx / half;
      const int64_t i = idx - h * half;
      const int64_t base = (t * heads + h) * head_dim;
      const int64_t lo = base + (adjacent ? 2 * i : i);
      const int64_t hi = base + (adjacent ? 2 * i + 1 : i + half);
      const float x0 = to_f32(in[lo]);
      const float x1 = to_f32(in[hi]);
      const float c = table[i], s = table[half + i];
      out[lo] = from_f32<T>(x0 * c - x1 * s);
      out[hi] = from_f32<T>(x0 * s + x1 * c);
    }
    __syncthreads();  // the next token overwrites the table
  }
}

}  // namespace

Status rope_cuda(const RopeArgs& a, void* stream) {
  if (a.head_dim % 2 != 0) return invalid_argument("rope: head_dim must be even");
  if (a.tokens == 0 || a.heads == 0 || a.head_dim == 0) return Status::Ok();
  const size_t table_bytes = static_cast<size_t>(a.head_dim) * sizeof(float);
  if (table_bytes > 48 * 1024) return unsupported("rope: head_dim " + std::to_string(a.head_dim) + " is larger than 12288");
  const int64_t pairs = a.heads * (a.head_dim / 2);
  const int threads = static_cast<int>(std::min<int64_t>(256, (pairs + 31) / 32 * 32));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.tokens, 65535LL * 8));
  Status st = dispatch_float(a.dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<blocks, threads, table_bytes, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a.in), static_cast<T*>(a.out), a.positions, a.inv_freq, a.tokens, a.heads, a.head_dim,
        a.layout == RopeLayout::adjacent, a.attn_factor);
    return Status::Ok();
  });
  if (!st.ok()) return st;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("rope: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
