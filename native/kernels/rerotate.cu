// rerotate on CUDA: one thread per (token, head, pair). Memory-bound: each key element is read
// once and written once, so the goal is copy bandwidth (scripts/bench/ops compares it to a
// device-to-device copy of the same bytes).
#include <cuda_runtime.h>

#include "rerotate.h"

namespace kvf {
namespace {

template <typename T>
__global__ void rerotate_kernel(const T* in, T* out,  // may alias (in-place)
                                const int32_t* __restrict__ from_pos,
                                const int32_t* __restrict__ to_pos, const float* __restrict__ inv_freq, int64_t tokens,
                                int64_t heads, int64_t head_dim, bool adjacent) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = tokens * heads * half;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < pairs;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t row = idx / half;  // token * heads + head
    const int64_t t = row / heads;
    const float delta = static_cast<float>(static_cast<int64_t>(to_pos[t]) - from_pos[t]);
    float s, c;
    sincosf(delta * inv_freq[i], &s, &c);  // full-precision sincosf, never __sincosf
    const int64_t base = row * head_dim;
    const int64_t lo = adjacent ? 2 * i : i;
    const int64_t hi = adjacent ? 2 * i + 1 : i + half;
    const float x0 = to_f32(in[base + lo]);
    const float x1 = to_f32(in[base + hi]);
    out[base + lo] = from_f32<T>(x0 * c - x1 * s);
    out[base + hi] = from_f32<T>(x0 * s + x1 * c);
  }
}

}  // namespace

Status rerotate_cuda(const RerotateArgs& a, void* stream) {
  if (a.head_dim % 2 != 0) return invalid_argument("rerotate: head_dim must be even");
  const int64_t pairs = a.tokens * a.heads * (a.head_dim / 2);
  if (pairs == 0) return Status::Ok();
  return dispatch_float(a.dtype, "rerotate", [&](auto tag) {
    using T = decltype(tag);
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((pairs + threads - 1) / threads, 65535LL * 8);
    rerotate_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a.in), static_cast<T*>(a.out), a.from_pos, a.to_pos, a.inv_freq, a.tokens, a.heads,
        a.head_dim, a.layout == RopeLayout::adjacent);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return device_error(std::string("rerotate: ") + cudaGetErrorString(err));
    return Status::Ok();
  });
}

}  // namespace kvf
