// sample on CUDA: one block per row. Each cut of sample.h (top-k, top-p, the draw) keeps a
// prefix of the tokens ranked by logit, and a prefix is "rank key >= K" for the rank key of
// topk.cu (value order, then lower id first). So instead of sorting, each cut is a radix search
// for K, one bit at a time from the top: 64 passes over the row, each a block-wide count or sum
// of the tokens at or above the candidate key. The probabilities are computed once into the
// workspace, so a pass is two loads per token, from L2 for any vocabulary of today's models.
#include <cuda_runtime.h>

#include <algorithm>

#include "rank_key.h"
#include "sample.h"

namespace kvf {
namespace {


// Block-wide reductions for blockDim.x a multiple of 32; every thread gets the result. The
// trailing barrier lets the caller reuse `scratch` at once. Sums run in a fixed order, so a row
// gives the same bits on every run.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* scratch, T identity, Op op) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? scratch[lane] : identity;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  return v;
}

struct Max {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a > b ? a : b; }
};
struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

__global__ void sample_kernel(float* __restrict__ logits, int64_t rows, int64_t vocab, const SampleParams* __restrict__ params,
                              const int32_t* __restrict__ penalty_start, const int32_t* __restrict__ penalty_ids,
                              int32_t* __restrict__ out, double* __restrict__ workspace) {
  __shared__ unsigned long long keys[32];
  __shared__ double sums[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float* x = logits + r * vocab;
    const SampleParams p = params[r];
    if (p.penalty != 1.0f) {
      // The ids of a row are distinct: no two threads touch one logit.
      for (int32_t i = penalty_start[r] + threadIdx.x; i < penalty_start[r + 1]; i += blockDim.x) {
        const float l = x[penalty_ids[i]];
        x[penalty_ids[i]] = l > 0 ? l / p.penalty : l * p.penalty;
      }
      __syncthreads();
    }
    unsigned long long best = 0;
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) best = Max()(best, rank_key(x[c], c));
    best = block_reduce(best, keys, 0ull, Max());
    if (p.temperature <= 0.0f) {  // greedy: the top key is the first maximum
      if (threadIdx.x == 0) out[r] = key_col(best);
      continue;
    }
    const double top = x[key_col(best)];
    double* e = workspace + r * vocab;
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) e[c] = exp((static_cast<double>(x[c]) - top) / p.temperature);
    __syncthreads();

    // Tokens kept so far: rank key >= cut, and (min-p) probability >= min_p x the top one's.
    unsigned long long cut = 0;
    double norm = 1.0, min_prob = -1.0;
    auto kept = [&](int64_t c, unsigned long long from) {
      const unsigned long long k = rank_key(x[c], c);
      return k >= cut && k >= from && e[c] / norm >= min_prob;
    };
    auto count_from = [&](unsigned long long from) {
      unsigned long long n = 0;
      for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) n += kept(c, from) ? 1ull : 0ull;
      return block_reduce(n, keys, 0ull, Sum());
    };
    auto mass_from = [&](unsigned long long from) {  // normalised by `norm`
      double m = 0;
      for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) m += kept(c, from) ? e[c] / norm : 0.0;
      return block_reduce(m, sums, 0.0, Sum());
    };
    // The largest key K with enough(K); K is then the key of the prefix's last token.
    auto search = [&](auto enough) {
      unsigned long long k = 0;
      for (int bit = 63; bit >= 0; --bit) {
        const unsigned long long candidate = k | (1ull << bit);
        if (enough(candidate)) k = candidate;
      }
      return k;
    };

    if (p.top_k > 0 && p.top_k < vocab) cut = search([&](unsigned long long k) { return count_from(k) >= static_cast<unsigned long long>(p.top_k); });
    norm = mass_from(0);  // the softmax's sum over the top-k cut
    if (p.min_p > 0.0f) min_prob = static_cast<double>(p.min_p) * (1.0 / norm);
    if (p.top_p < 1.0f && mass_from(0) >= p.top_p) cut = search([&](unsigned long long k) { return mass_from(k) >= p.top_p; });
    const double target = p.uniform * mass_from(0);
    unsigned long long pick = search([&](unsigned long long k) { return mass_from(k) > target; });
    if (pick == 0) {
      // The running mass never passed the target (rounding at its very end): the last kept token.
      unsigned long long last = 0;
      for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) last = kept(c, 0) ? Max()(last, ~rank_key(x[c], c)) : last;
      pick = ~block_reduce(last, keys, 0ull, Max());
    }
    if (threadIdx.x == 0) out[r] = key_col(pick);
  }
}

}  // namespace

Status sample_cuda(const SampleArgs& a, void* stream) {
  if (a.vocab < 1 || a.vocab > INT32_MAX) return invalid_argument("sample: vocab must be in [1, 2^31)");
  if (a.rows == 0) return Status::Ok();
  if (a.workspace == nullptr) return invalid_argument("sample: the CUDA kernel needs a workspace of rows x vocab doubles");
  const int threads = static_cast<int>(std::min<int64_t>(1024, (a.vocab + 31) / 32 * 32));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.rows, 65535));
  sample_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(a.logits, a.rows, a.vocab, a.params, a.penalty_start,
                                                                            a.penalty_ids, a.out, a.workspace);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("sample: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
