// rerotate on CUDA: one thread per (token, head, pair), and per copied element of a partial
// rotary head. Memory-bound: each key element is read once and written once, so the goal is
// copy bandwidth (scripts/bench/ops compares it to a device-to-device copy of the same bytes).
// The engine moves stored pages with rerotate_pages instead (every layer in one launch).
#include <cuda_runtime.h>

#include "rerotate.h"
#include "rerotate_math.h"

namespace kvf {
namespace {

template <typename T>
__global__ void rerotate_kernel(const T* in, T* out,  // may alias (in-place)
                                const int32_t* __restrict__ from_pos,
                                const int32_t* __restrict__ to_pos, const float* __restrict__ inv_freq, int64_t tokens,
                                int64_t heads, int64_t head_dim, int64_t rotary_dim, bool adjacent) {
  const int64_t half = rotary_dim / 2;
  const int64_t per_head = half + (head_dim - rotary_dim);  // pairs, then copied elements
  const int64_t items = tokens * heads * per_head;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < items;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = idx % per_head;
    const int64_t row = idx / per_head;  // token * heads + head
    const int64_t base = row * head_dim;
    if (k >= half) {
      const int64_t j = rotary_dim + (k - half);
      if (in != out) out[base + j] = in[base + j];
      continue;
    }
    const int64_t t = row / heads;
    float s, c;
    rerotation_sincos(static_cast<int64_t>(to_pos[t]) - from_pos[t], inv_freq[k], &s, &c);
    const int64_t lo = pair_lo(k, rotary_dim, adjacent);
    const int64_t hi = pair_hi(k, rotary_dim, adjacent);
    const float x0 = to_f32(in[base + lo]);
    const float x1 = to_f32(in[base + hi]);
    float y0, y1;
    rotate_pair(x0, x1, c, s, &y0, &y1);
    out[base + lo] = from_f32<T>(y0);
    out[base + hi] = from_f32<T>(y1);
  }
}

}  // namespace

Status rerotate_cuda(const RerotateArgs& a, void* stream) {
  int64_t rotary_dim = 0;
  KVF_RETURN_IF_ERROR(rerotate_rotary_dim("rerotate", a.head_dim, a.rotary_dim, &rotary_dim));
  const int64_t items = a.tokens * a.heads * (rotary_dim / 2 + a.head_dim - rotary_dim);
  if (items == 0) return Status::Ok();
  return dispatch_float(a.dtype, "rerotate", [&](auto tag) {
    using T = decltype(tag);
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((items + threads - 1) / threads, 65535LL * 8);
    rerotate_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a.in), static_cast<T*>(a.out), a.from_pos, a.to_pos, a.inv_freq, a.tokens, a.heads,
        a.head_dim, rotary_dim, a.layout == RopeLayout::adjacent);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return device_error(std::string("rerotate: ") + cudaGetErrorString(err));
    return Status::Ok();
  });
}

}  // namespace kvf
