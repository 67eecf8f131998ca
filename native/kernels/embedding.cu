// embedding on CUDA: grid-stride gather, one thread per output element (a conversion on the way
// when the dtypes differ). An id outside [0, vocab) gives a zero row and is recorded in a device
// flag, the lowest such token winning: the launcher copies the flag back and returns the same
// invalid_argument status as the CPU twin. That check synchronises the stream once per call.
#include <cuda_runtime.h>

#include <algorithm>

#include "embedding.h"

namespace kvf {
namespace {

// (token << 32) | uint32(id) of the first bad token; all ones when every id is in range.
constexpr unsigned long long kAllIdsValid = ~0ull;

template <typename In, typename Out>
__global__ void embedding_kernel(const In* __restrict__ table, const int32_t* __restrict__ ids, Out* __restrict__ out,
                                 int64_t tokens, int64_t vocab, int64_t dim, unsigned long long* first_bad) {
  const int64_t n = tokens * dim;
  const int64_t work = n > tokens ? n : tokens;  // every id is checked even when dim is 0
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < work; idx += (int64_t)gridDim.x * blockDim.x) {
    if (idx < tokens) {
      const int32_t id = ids[idx];
      if (id < 0 || id >= vocab) {
        atomicMin(first_bad, (static_cast<unsigned long long>(idx) << 32) | static_cast<uint32_t>(id));
      }
    }
    if (idx < n) {
      const int64_t t = idx / dim;
      const int64_t c = idx - t * dim;
      const int32_t id = ids[t];
      const bool valid = id >= 0 && id < vocab;
      out[idx] = from_f32<Out>(valid ? to_f32(table[static_cast<int64_t>(id) * dim + c]) : 0.0f);
    }
  }
}

Status launch(const EmbeddingArgs& a, unsigned long long* first_bad, cudaStream_t s) {
  const int threads = 256;
  const int64_t work = std::max(a.tokens * a.dim, a.tokens);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((work + threads - 1) / threads, 65535LL * 8));
  return dispatch_float(a.out_dtype, "embedding (out)", [&](auto out_tag) {
    using Out = decltype(out_tag);
    return dispatch_float(a.table_dtype, "embedding (table)", [&](auto in_tag) {
      using In = decltype(in_tag);
      embedding_kernel<In, Out><<<blocks, threads, 0, s>>>(static_cast<const In*>(a.table), a.ids,
                                                           static_cast<Out*>(a.out), a.tokens, a.vocab, a.dim, first_bad);
      return Status::Ok();
    });
  });
}

Status cuda_failure(const char* what, cudaError_t err) {
  return device_error(std::string("embedding: ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace

Status embedding_cuda(const EmbeddingArgs& a, void* stream) {
  if (a.tokens == 0) return Status::Ok();
  if (a.tokens > 0xffffffffLL) return unsupported("embedding: more than 2^32 tokens in one call");
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  unsigned long long* first_bad = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&first_bad), sizeof(unsigned long long), s);
  if (err != cudaSuccess) return cuda_failure("cudaMallocAsync", err);
  const char* step = "cudaMemsetAsync";
  err = cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), s);  // kAllIdsValid
  Status st;
  if (err == cudaSuccess) {
    st = launch(a, first_bad, s);
    step = "kernel launch";
    err = cudaGetLastError();
  }
  unsigned long long host_first_bad = kAllIdsValid;
  if (err == cudaSuccess && st.ok()) {
    step = "cudaMemcpyAsync";
    err = cudaMemcpyAsync(&host_first_bad, first_bad, sizeof(unsigned long long), cudaMemcpyDeviceToHost, s);
  }
  const cudaError_t free_err = cudaFreeAsync(first_bad, s);  // stream-ordered after the copy
  if (!st.ok()) return st;
  if (err != cudaSuccess) return cuda_failure(step, err);
  err = cudaStreamSynchronize(s);
  if (err != cudaSuccess) return cuda_failure("cudaStreamSynchronize", err);
  if (free_err != cudaSuccess) return cuda_failure("cudaFreeAsync", free_err);

  if (host_first_bad != kAllIdsValid) {
    const int64_t t = static_cast<int64_t>(host_first_bad >> 32);
    const int32_t id = static_cast<int32_t>(static_cast<uint32_t>(host_first_bad));
    return invalid_argument("embedding: token " + std::to_string(t) + " has id " + std::to_string(id) +
                            ", outside the vocabulary [0, " + std::to_string(a.vocab) + ")");
  }
  return Status::Ok();
}

}  // namespace kvf
