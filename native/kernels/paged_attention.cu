// paged_attention on CUDA (paged_attention.h has the contract; paged_attention_cpu.cc is the twin).
//
// attention_kernel: one block of 4 warps per (query row, head, split). The row's visible slots
// (or, with a split, its split-th share of them) are dealt to the warps in tiles of 32 slots.
// In a tile, lane jj looks up slot jj's page once (the page table is read per slot, so any
// table layout works); the warp then walks the tile's slots with the lanes splitting head_dim
// (DPL = head_dim / 32 elements each, held in registers with the query row): a warp-reduced
// dot product per slot, one online-softmax step per tile (lane jj keeps score jj, so the tile
// max and the probabilities are one warp reduction each), and acc += p_j v_j. The four warps'
// (max, sum, acc) are merged through shared memory. f32 scores and accumulation, full-precision
// expf.
//
// Decode (few rows x heads for the GPU): each row's slots are split over blockIdx.y
// (flash-decoding); every split leaves (max, sum, acc) in a workspace and combine_kernel merges
// them. The split count is chosen on the host from the SM count and, when set, max_kv (the
// slot ranges per split are cut on the device from each row's own visible count).
//
// attn_sum_kernel: a second pass, one block per (sequence, head, tile of 32 slots). The tile's
// keys are staged in shared memory as f32; each warp takes query rows of the sequence, lane jj
// recomputes the score of slot jj and adds exp(s - max) / sum with the row's final (max, sum)
// from the first pass. One thread adds each column's total: no atomics, deterministic.
//
// Sliding window: a row sees slots [first_visible, visible); the split and the warps share out
// that range only, and attn_sum leaves the slots before it alone.
//
// Bad data: nothing here can read outside the buffers. A row's visible count is clamped to
// [0, min(kv_len, table pages * page_size)] (0 for a table range outside the page table) and its
// first visible slot to [0, visible], a
// slot whose page id is outside the pool is skipped, and a row outside every sequence gets
// zeros. The CPU twin reports these as invalid_argument; here a report would cost a stream
// sync per call (per layer), so the engine, which owns the tables, is trusted to have checked
// them.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "paged_attention.h"

namespace kvf {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 32;          // slots per warp step, and per attn_sum block
constexpr int kMaxSplits = 64;
constexpr int64_t kMinChunk = 128;  // decode split: no split shorter than this
constexpr unsigned kFull = 0xffffffffu;

// q and out are touched once per block: their dtype is a run-time switch, not a template.
__device__ __forceinline__ float load_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f16: return f16_to_f32(static_cast<const f16_t*>(p)[i]);
    case DType::bf16: return bf16_to_f32(static_cast<const bf16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_f32(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::f16: static_cast<f16_t*>(p)[i] = f32_to_f16(v); break;
    case DType::bf16: static_cast<bf16_t*>(p)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

__device__ __forceinline__ int64_t min64(int64_t x, int64_t y) { return x < y ? x : y; }
__device__ __forceinline__ int64_t max64(int64_t x, int64_t y) { return x > y ? x : y; }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

// Slots of sequence s that the data can back: min(kv_len, table pages * page_size), >= 0.
// A table range outside [0, page_table_len) backs nothing: slot_offset would read the page
// table out of bounds (the ops API passes table_start unchecked; the CPU twin rejects it).
__device__ __forceinline__ int64_t backed_slots(const PagedAttentionArgs& a, int64_t s) {
  if (a.table_start[s] < 0 || a.table_start[s + 1] > a.page_table_len) return 0;
  const int64_t pages = static_cast<int64_t>(a.table_start[s + 1]) - a.table_start[s];
  const int64_t cap = min64(a.kv_len[s], pages * a.page_size);
  return cap > 0 ? cap : 0;
}

struct Row {
  int64_t seq;  // -1: the row belongs to no sequence
  int64_t first, visible;  // the row sees slots [first, visible)
};

// Row t's first visible slot, clamped to [0, visible].
__device__ __forceinline__ int64_t first_visible(const PagedAttentionArgs& a, int64_t t, int64_t visible) {
  if (a.first_visible == nullptr) return 0;
  const int64_t f = a.first_visible[t];
  return f < 0 ? 0 : (f > visible ? visible : f);
}

// Query row t's sequence (the last s with q_start[s] <= t, so empty sequences are passed over)
// and its visible slot range, clamped to what the table backs.
__device__ Row find_row(const PagedAttentionArgs& a, int64_t t) {
  if (a.seqs <= 0) return {-1, 0, 0};
  int64_t lo = 0, hi = a.seqs - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (a.q_start[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  if (t < a.q_start[lo] || t >= a.q_start[lo + 1]) return {-1, 0, 0};
  const int64_t cap = backed_slots(a, lo);
  const int64_t v = a.visible[t];
  const int64_t vis = v < 0 ? 0 : (v > cap ? cap : v);
  return {lo, first_visible(a, t, vis), vis};
}

// Element offset of slot j (of the table starting at `table`) for kv head g, in the key table
// or (values) in v_page_table when there is one; -1 when the page id is outside the pool or the
// slot is a hole (page_rows), so a hole is skipped as a bad slot is.
__device__ __forceinline__ int64_t slot_offset(const PagedAttentionArgs& a, int64_t table, int64_t j, int64_t g,
                                               bool values = false) {
  const int64_t i = table + j / a.page_size;
  const int64_t page = values && a.v_page_table != nullptr ? a.v_page_table[i] : a.page_table[i];
  if (page < 0 || page >= a.num_pages) return -1;
  if (a.page_rows != nullptr && j % a.page_size >= a.page_rows[i]) return -1;
  return ((page * a.page_size + j % a.page_size) * a.kv_heads + g) * a.head_dim;
}

template <typename KV, int DPL>
__global__ void __launch_bounds__(kThreads) attention_kernel(PagedAttentionArgs a, int splits, float* __restrict__ partial,
                                                             float2* __restrict__ stats) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t th = blockIdx.x;  // t * heads + h
  const int64_t t = th / a.heads, h = th % a.heads;
  const int split = blockIdx.y;
  const int64_t d = a.head_dim;
  const int64_t g = h / (a.heads / a.kv_heads);
  const Row row = find_row(a, t);
  const int64_t chunk = (row.visible - row.first + splits - 1) / splits;
  const int64_t begin = min64(row.visible, row.first + split * chunk);
  const int64_t end = min64(row.visible, begin + chunk);
  const int64_t table = row.seq >= 0 ? a.table_start[row.seq] : 0;
  const KV* __restrict__ kp = static_cast<const KV*>(a.k_pool);
  const KV* __restrict__ vp = static_cast<const KV*>(a.v_pool);

  float q[DPL], acc[DPL];
#pragma unroll
  for (int k = 0; k < DPL; ++k) {
    const int64_t i = k * 32 + lane;
    q[k] = i < d ? load_f32(a.q, a.q_dtype, th * d + i) : 0.0f;
    acc[k] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  for (int64_t tile = begin + warp * kTile; tile < end; tile += kWarps * kTile) {
    const int n = static_cast<int>(min64(kTile, end - tile));  // warp-uniform
    const int64_t my_off = lane < n ? slot_offset(a, table, tile + lane, g) : -1;
    const int64_t my_voff = a.v_page_table == nullptr ? my_off : (lane < n ? slot_offset(a, table, tile + lane, g, true) : -1);
    float my_s = -INFINITY;  // lane jj: score of slot tile + jj
#pragma unroll 4
    for (int jj = 0; jj < n; ++jj) {
      const int64_t off = __shfl_sync(kFull, my_off, jj);
      float part = 0.0f;
      if (off >= 0) {
#pragma unroll
        for (int k = 0; k < DPL; ++k) {
          const int64_t i = k * 32 + lane;
          if (i < d) part += q[k] * to_f32(kp[off + i]);
        }
      }
      const float s = warp_sum(part) * a.scale;
      if (lane == jj && off >= 0) my_s = s;
    }
    const float m_new = fmaxf(m, warp_max(my_s));
    if (m_new == -INFINITY) continue;  // nothing valid yet (warp-uniform)
    const float alpha = expf(m - m_new);  // 0 while m = -inf
    const float p = my_s == -INFINITY ? 0.0f : expf(my_s - m_new);
    l = l * alpha + warp_sum(p);
#pragma unroll
    for (int k = 0; k < DPL; ++k) acc[k] *= alpha;
#pragma unroll 4
    for (int jj = 0; jj < n; ++jj) {
      const int64_t off = __shfl_sync(kFull, my_voff, jj);
      const float pj = __shfl_sync(kFull, p, jj);
      if (off >= 0) {
#pragma unroll
        for (int k = 0; k < DPL; ++k) {
          const int64_t i = k * 32 + lane;
          if (i < d) acc[k] += pj * to_f32(vp[off + i]);
        }
      }
    }
    m = m_new;
  }

  // Merge the warps: weights exp(m_w - M), an empty warp (m_w = -inf) weighs 0.
  __shared__ float s_m[kWarps], s_l[kWarps];
  __shared__ float s_acc[kWarps][DPL * 32];
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int k = 0; k < DPL; ++k) s_acc[warp][k * 32 + lane] = acc[k];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w]);
  float wgt[kWarps];
  float L = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    wgt[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - M);
    L += s_l[w] * wgt[w];
  }
  float* part = partial + (th * splits + split) * (d + 2);  // used only with a split
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += s_acc[w][i] * wgt[w];
    if (splits == 1) store_f32(a.out, a.out_dtype, th * d + i, L > 0.0f ? o / L : 0.0f);
    else part[2 + i] = o;
  }
  if (threadIdx.x == 0) {
    if (splits > 1) {
      part[0] = M;
      part[1] = L;
    } else if (stats != nullptr) {
      stats[th] = make_float2(M, L);
    }
  }
}

// Decode split: merges the splits of one (row, head) per block.
__global__ void __launch_bounds__(kThreads) combine_kernel(PagedAttentionArgs a, int splits, const float* __restrict__ partial,
                                                           float2* __restrict__ stats) {
  const int64_t th = blockIdx.x;
  const int64_t d = a.head_dim;
  const float* p = partial + th * splits * (d + 2);
  __shared__ float s_w[kMaxSplits];
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, p[s * (d + 2)]);
  for (int s = threadIdx.x; s < splits; s += kThreads) {
    const float ms = p[s * (d + 2)];
    s_w[s] = ms == -INFINITY ? 0.0f : expf(ms - M);
  }
  __syncthreads();
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) L += p[s * (d + 2) + 1] * s_w[s];
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float o = 0.0f;
    for (int s = 0; s < splits; ++s) o += p[s * (d + 2) + 2 + i] * s_w[s];
    store_f32(a.out, a.out_dtype, th * d + i, L > 0.0f ? o / L : 0.0f);
  }
  if (threadIdx.x == 0 && stats != nullptr) stats[th] = make_float2(M, L);
}

// Dynamic shared memory: keys [kTile][d + 1] (padded: lane jj reads row jj, conflict-free),
// then one query row per warp [kWarps][d].
template <typename KV>
__global__ void __launch_bounds__(kThreads) attn_sum_kernel(PagedAttentionArgs a, const float2* __restrict__ stats) {
  extern __shared__ float smem[];
  __shared__ long long s_off[kTile];
  __shared__ float s_red[kWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t d = a.head_dim;
  const int64_t sh = blockIdx.x;  // s * heads + h
  const int64_t s = sh / a.heads, h = sh % a.heads;
  const int64_t g = h / (a.heads / a.kv_heads);
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t cap = backed_slots(a, s);
  const int64_t cols = min64(cap, a.max_kv);
  if (tile0 >= cols) return;  // block-uniform, before any barrier
  const int64_t table = a.table_start[s];
  float* k_tile = smem;
  float* q_row = smem + kTile * (d + 1) + warp * d;

  if (threadIdx.x < kTile) {
    const int64_t j = tile0 + threadIdx.x;
    s_off[threadIdx.x] = j < cols ? slot_offset(a, table, j, g) : -1;
  }
  __syncthreads();
  const KV* __restrict__ kp = static_cast<const KV*>(a.k_pool);
  for (int64_t e = threadIdx.x; e < kTile * d; e += kThreads) {
    const int64_t jj = e / d, i = e - jj * d;
    const int64_t off = s_off[jj];
    k_tile[jj * (d + 1) + i] = off >= 0 ? to_f32(kp[off + i]) : 0.0f;
  }
  __syncthreads();

  const int64_t my_off = s_off[lane];
  const float* k_row = k_tile + lane * (d + 1);
  const int64_t r0 = max64(0, a.q_start[s]);
  const int64_t r1 = min64(a.total_q, a.q_start[s + 1]);
  float total = 0.0f;
  for (int64_t t = r0 + warp; t < r1; t += kWarps) {
    const int64_t v = a.visible[t];
    const int64_t vis = v < 0 ? 0 : (v > cap ? cap : v);
    const int64_t first = first_visible(a, t, vis);
    if (tile0 >= vis || tile0 + kTile <= first) continue;  // warp-uniform
    const float2 ml = stats[t * a.heads + h];
    __syncwarp();  // the previous row's readers of q_row are done
    for (int64_t i = lane; i < d; i += 32) q_row[i] = load_f32(a.q, a.q_dtype, (t * a.heads + h) * d + i);
    __syncwarp();
    if (tile0 + lane >= first && tile0 + lane < vis && my_off >= 0 && ml.y > 0.0f) {
      float dot = 0.0f;
      for (int64_t i = 0; i < d; ++i) dot += q_row[i] * k_row[i];
      total += expf(dot * a.scale - ml.x) / ml.y;
    }
  }
  s_red[warp][lane] = total;
  __syncthreads();
  if (threadIdx.x < 32 && tile0 + lane < cols) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += s_red[w][lane];
    a.attn_sum[sh * a.max_kv + tile0 + lane] += sum;
  }
}

template <typename KV, int DPL>
void launch_attention(const PagedAttentionArgs& a, int splits, float* partial, float2* stats, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.total_q * a.heads), static_cast<unsigned>(splits));
  attention_kernel<KV, DPL><<<grid, kThreads, 0, stream>>>(a, splits, partial, stats);
}

// Splits per row for decode: enough blocks for ~4 per SM and, when max_kv is known, no split
// shorter than kMinChunk (without it, short rows just leave some splits empty).
int choose_splits(const PagedAttentionArgs& a) {
  const int64_t blocks = a.total_q * a.heads;
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // clear it: the launches below report their own errors
    return 1;
  }
  if (blocks >= 2 * static_cast<int64_t>(sms)) return 1;
  const int64_t want = (4 * static_cast<int64_t>(sms) + blocks - 1) / blocks;
  const int64_t by_length = a.max_kv > 0 ? a.max_kv / kMinChunk : kMaxSplits;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, by_length, kMaxSplits})));
}

Status cuda_failure(const char* what, cudaError_t err) {
  return device_error(std::string("paged_attention: ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace

Status paged_attention_cuda(const PagedAttentionArgs& a, void* stream) {
  const std::string op = "paged_attention: ";
  if (a.heads < 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return invalid_argument(op + "kv_heads must divide heads");
  if (a.page_size <= 0) return invalid_argument(op + "page_size must be positive");
  if (a.head_dim < 0 || a.num_pages < 0 || a.seqs < 0 || a.total_q < 0 || a.max_kv < 0) return invalid_argument(op + "negative size");
  if (!is_float(a.q_dtype) || !is_float(a.out_dtype)) return unsupported(op + "q and out must be f32, f16 or bf16");
  if (a.head_dim > 256) return unsupported(op + "head_dim " + std::to_string(a.head_dim) + " > 256 is not supported on CUDA");
  const int64_t rows = a.total_q * a.heads;
  if (rows == 0 || a.head_dim == 0) return Status::Ok();
  if (rows > INT_MAX) return unsupported(op + "more than 2^31 query rows x heads in one call");
  const int64_t sum_tiles = (a.max_kv + kTile - 1) / kTile;
  if (a.attn_sum != nullptr && (a.seqs * a.heads > INT_MAX || sum_tiles > 65535))
    return unsupported(op + "attn_sum over more than 2^31 sequences x heads or 2M slots");
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  const int splits = choose_splits(a);
  const size_t stats_bytes = a.attn_sum != nullptr ? static_cast<size_t>(rows) * sizeof(float2) : 0;
  const size_t partial_bytes = splits > 1 ? static_cast<size_t>(rows) * splits * (a.head_dim + 2) * sizeof(float) : 0;
  char* workspace = nullptr;
  if (stats_bytes + partial_bytes > 0) {
    const cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&workspace), stats_bytes + partial_bytes, s);
    if (err != cudaSuccess) {
      if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        return out_of_memory(op + "no device memory for a " + std::to_string(stats_bytes + partial_bytes) + "-byte workspace");
      }
      return cuda_failure("cudaMallocAsync", err);
    }
  }
  float2* stats = stats_bytes > 0 ? reinterpret_cast<float2*>(workspace) : nullptr;
  float* partial = partial_bytes > 0 ? reinterpret_cast<float*>(workspace + stats_bytes) : nullptr;

  Status st = dispatch_float(a.kv_dtype, "paged_attention (kv pools)", [&](auto tag) {
    using KV = decltype(tag);
    if (a.head_dim <= 32) launch_attention<KV, 1>(a, splits, partial, stats, s);
    else if (a.head_dim <= 64) launch_attention<KV, 2>(a, splits, partial, stats, s);
    else if (a.head_dim <= 128) launch_attention<KV, 4>(a, splits, partial, stats, s);
    else launch_attention<KV, 8>(a, splits, partial, stats, s);
    if (splits > 1) combine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(a, splits, partial, stats);
    if (a.attn_sum != nullptr && sum_tiles > 0 && a.seqs * a.heads > 0) {
      const dim3 grid(static_cast<unsigned>(a.seqs * a.heads), static_cast<unsigned>(sum_tiles));
      const size_t smem = static_cast<size_t>(kTile * (a.head_dim + 1) + kWarps * a.head_dim) * sizeof(float);
      attn_sum_kernel<KV><<<grid, kThreads, smem, s>>>(a, stats);
    }
    return Status::Ok();
  });
  const cudaError_t launch_err = cudaGetLastError();
  if (workspace != nullptr) {
    const cudaError_t free_err = cudaFreeAsync(workspace, s);  // stream-ordered after the kernels
    if (st.ok() && launch_err == cudaSuccess && free_err != cudaSuccess) return cuda_failure("cudaFreeAsync", free_err);
  }
  if (!st.ok()) return st;
  if (launch_err != cudaSuccess) return cuda_failure("kernel launch", launch_err);
  return Status::Ok();
}

}  // namespace kvf
