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
// range_mass, in attention_kernel itself: each warp keeps a running mass per range in shared
// memory (lane r % 32 owns range r, so no lane reads another's entry before the final merge).
// Per tile, ranges that meet the tile take the warp sum of their slots' p = exp(s - m) (the very
// p that weights the values and goes into l), and every mass is rescaled by alpha with l. The
// warps' and the splits' masses merge with the weights of their sums; mass / L at the end.
//
// col_sum_kernel (attn_sum, kv_attn_sum): a second pass, one block per (sequence, kv head, tile
// of 32 slots). The tile's keys are staged in shared memory as f32; each warp takes query rows of
// the sequence and, for each head of the group, recomputes the tile's scores exactly as
// attention_kernel computes them (score_part: the same lanes, the same FMA chain, the same warp
// reduction, so bitwise the same score) and adds exp(s - M) / L with the row's final (M, L) from
// the first pass. That is the probability the first pass applied: its weight for slot j was
// exp(s_j - m) times the rescales exp(m - m') ... exp(. - M) of later tiles, warps and splits,
// all divided by L, which is exp(s_j - M) / L but for the f32 rounding of those factors. One
// thread adds each column's total (heads of the group in order, then their sum): no atomics,
// deterministic.
//
// two_part_kernel (ctx_split, APE): attention_kernel's walk with two online-softmax states per
// warp, [0] over the other slots and [1] over the sequence's context slots (scores scaled by
// 1 / T); whether a slot is context depends on its index only, so it is warp-uniform in the
// score loop. The warps' states merge per part; then, without a split, the two parts merge with
// softmax([S T lse_c, lse_o]) (two_part_weights); with one, each part's (M, L, acc) goes to the
// workspace and two_part_combine_kernel merges the splits per part, then the parts. A sequence
// without context (begin >= end) has L_c = 0, so its rows get plain attention. Score outputs are
// refused with ctx_split (paged_attention.h).
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
constexpr int64_t kMaxRanges = 2048;  // range_mass: kWarps x 2048 f32 of shared memory (32 KB)
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

// Lane's share of q . k for one slot: lanes split head_dim (DPL elements each, in registers for
// q). warp_sum(score_part(...)) * scale is the slot's score; both passes compute it this way so
// that the second pass's score is bitwise the first's.
template <int DPL, typename K>
__device__ __forceinline__ float score_part(const float (&q)[DPL], const K* __restrict__ k, int64_t d, int lane) {
  float part = 0.0f;
#pragma unroll
  for (int e = 0; e < DPL; ++e) {
    const int64_t i = e * 32 + lane;
    if (i < d) part += q[e] * to_f32(k[i]);
  }
  return part;
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

// Dynamic shared memory: the warps' running range masses [kWarps][ranges] (none without ranges).
// With a split, a (row, head, split)'s partial state is [M, L, acc[d], mass[ranges]] (pstride).
template <typename KV, int DPL>
__global__ void __launch_bounds__(kThreads) attention_kernel(PagedAttentionArgs a, int splits, int ranges, int64_t pstride,
                                                             float* __restrict__ partial, float2* __restrict__ stats) {
  extern __shared__ float s_mass[];
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
  float* w_mass = s_mass + warp * ranges;  // this warp's masses; lane r % 32 owns entry r
  const int32_t* rng = ranges > 0 && row.seq >= 0 ? a.mass_ranges + row.seq * ranges * 2 : nullptr;
  for (int r = lane; r < ranges; r += 32) w_mass[r] = 0.0f;

  for (int64_t tile = begin + warp * kTile; tile < end; tile += kWarps * kTile) {
    const int n = static_cast<int>(min64(kTile, end - tile));  // warp-uniform
    const int64_t my_off = lane < n ? slot_offset(a, table, tile + lane, g) : -1;
    const int64_t my_voff = a.v_page_table == nullptr ? my_off : (lane < n ? slot_offset(a, table, tile + lane, g, true) : -1);
    float my_s = -INFINITY;  // lane jj: score of slot tile + jj
#pragma unroll 4
    for (int jj = 0; jj < n; ++jj) {
      const int64_t off = __shfl_sync(kFull, my_off, jj);
      const float part = off >= 0 ? score_part<DPL>(q, kp + off, d, lane) : 0.0f;
      const float s = warp_sum(part) * a.scale;
      if (lane == jj && off >= 0) my_s = s;
    }
    const float m_new = fmaxf(m, warp_max(my_s));
    if (m_new == -INFINITY) continue;  // nothing valid yet (warp-uniform)
    const float alpha = expf(m - m_new);  // 0 while m = -inf
    const float p = my_s == -INFINITY ? 0.0f : expf(my_s - m_new);
    l = l * alpha + warp_sum(p);
    if (rng != nullptr) {
      // Ranges in groups of 32 (lane r % 32 holds range r): rescale all, then add the tile's p
      // over each range that meets the tile (a warp sum per such range).
      for (int r0 = 0; r0 < ranges; r0 += 32) {
        const int r = r0 + lane;
        int64_t b = 0, e = 0;
        if (r < ranges) {
          b = rng[2 * r];
          e = rng[2 * r + 1];
          if (alpha != 1.0f) w_mass[r] *= alpha;
        }
        unsigned meets = __ballot_sync(kFull, r < ranges && b < tile + n && e > tile && b < e);
        while (meets != 0) {
          const int src = __ffs(meets) - 1;
          meets &= meets - 1;
          const int64_t rb = __shfl_sync(kFull, b, src), re = __shfl_sync(kFull, e, src);
          const int64_t j = tile + lane;
          const float share = warp_sum(j >= rb && j < re ? p : 0.0f);
          if (lane == src) w_mass[r] += share;
        }
      }
    }
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
  float* part = partial + (th * splits + split) * pstride;  // used only with a split
  for (int r = threadIdx.x; r < ranges; r += kThreads) {
    float mass = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mass += s_mass[w * ranges + r] * wgt[w];
    if (splits > 1) part[2 + d + r] = mass;
    else a.range_mass[th * ranges + r] = L > 0.0f ? mass / L : 0.0f;
  }
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
__global__ void __launch_bounds__(kThreads) combine_kernel(PagedAttentionArgs a, int splits, int ranges, int64_t pstride,
                                                           const float* __restrict__ partial, float2* __restrict__ stats) {
  const int64_t th = blockIdx.x;
  const int64_t d = a.head_dim;
  const float* p = partial + th * splits * pstride;
  __shared__ float s_w[kMaxSplits];
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, p[s * pstride]);
  for (int s = threadIdx.x; s < splits; s += kThreads) {
    const float ms = p[s * pstride];
    s_w[s] = ms == -INFINITY ? 0.0f : expf(ms - M);
  }
  __syncthreads();
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) L += p[s * pstride + 1] * s_w[s];
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float o = 0.0f;
    for (int s = 0; s < splits; ++s) o += p[s * pstride + 2 + i] * s_w[s];
    store_f32(a.out, a.out_dtype, th * d + i, L > 0.0f ? o / L : 0.0f);
  }
  for (int r = threadIdx.x; r < ranges; r += kThreads) {
    float mass = 0.0f;
    for (int s = 0; s < splits; ++s) mass += p[s * pstride + 2 + d + r] * s_w[s];
    a.range_mass[th * ranges + r] = L > 0.0f ? mass / L : 0.0f;
  }
  if (threadIdx.x == 0 && stats != nullptr) stats[th] = make_float2(M, L);
}

// Dynamic shared memory: the tile's keys as f32 [kTile][d].
template <typename KV, int DPL>
__global__ void __launch_bounds__(kThreads) col_sum_kernel(PagedAttentionArgs a, const float2* __restrict__ stats) {
  extern __shared__ float k_tile[];
  __shared__ long long s_off[kTile];
  __shared__ float s_red[kWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t d = a.head_dim;
  const int64_t sg = blockIdx.x;  // s * kv_heads + g
  const int64_t s = sg / a.kv_heads, g = sg % a.kv_heads;
  const int64_t group = a.heads / a.kv_heads;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t cap = backed_slots(a, s);
  const int64_t cols = min64(cap, a.max_kv);
  if (tile0 >= cols) return;  // block-uniform, before any barrier
  const int64_t table = a.table_start[s];

  if (threadIdx.x < kTile) {
    const int64_t j = tile0 + threadIdx.x;
    s_off[threadIdx.x] = j < cols ? slot_offset(a, table, j, g) : -1;  // -1: past the columns, a hole or a bad page
  }
  __syncthreads();
  const KV* __restrict__ kp = static_cast<const KV*>(a.k_pool);
  for (int64_t e = threadIdx.x; e < kTile * d; e += kThreads) {
    const int64_t jj = e / d, i = e - jj * d;
    const int64_t off = s_off[jj];
    k_tile[e] = off >= 0 ? to_f32(kp[off + i]) : 0.0f;
  }
  __syncthreads();

  const int64_t r_first = max64(0, a.q_start[s]);
  const int64_t r1 = min64(a.total_q, a.q_start[s + 1]);
  // SnapKV's observation window: only the last col_last_rows[s] rows count (0: all).
  const int64_t last = a.col_last_rows != nullptr && a.col_last_rows[s] > 0 ? a.col_last_rows[s] : r1 - r_first;
  const int64_t r0 = max64(r_first, r1 - last);
  float kv_total = 0.0f;  // lane jj < 32 of warp 0: column tile0 + jj over the group's heads
  // EMA weighting (paged_attention.h, col_log_decay): the chunk's first slot and ln beta.
  const float decay = a.col_log_decay != nullptr ? a.col_log_decay[s] : 0.0f;
  const int64_t c0 = r1 > r_first ? static_cast<int64_t>(a.visible[r_first]) - 1 : 0;
  for (int64_t hh = 0; hh < group; ++hh) {
    const int64_t h = g * group + hh;
    float total = 0.0f;  // lane jj: column tile0 + jj over this warp's rows
    for (int64_t t = r0 + warp; t < r1; t += kWarps) {
      const int64_t v = a.visible[t];
      const int64_t vis = v < 0 ? 0 : (v > cap ? cap : v);
      const int64_t first = first_visible(a, t, vis);
      const float2 ml = stats[t * a.heads + h];
      if (tile0 >= vis || tile0 + kTile <= first || !(ml.y > 0.0f)) continue;  // warp-uniform
      float q[DPL];
#pragma unroll
      for (int e = 0; e < DPL; ++e) {
        const int64_t i = e * 32 + lane;
        q[e] = i < d ? load_f32(a.q, a.q_dtype, (t * a.heads + h) * d + i) : 0.0f;
      }
      const int j_begin = static_cast<int>(max64(0, first - tile0));
      const int j_end = static_cast<int>(min64(kTile, min64(vis, cols) - tile0));
      float my_s = -INFINITY;  // lane jj: score of slot tile0 + jj
      for (int jj = j_begin; jj < j_end; ++jj) {
        if (s_off[jj] < 0) continue;  // warp-uniform
        const float sc = warp_sum(score_part<DPL>(q, k_tile + jj * d, d, lane)) * a.scale;
        if (lane == jj) my_s = sc;
      }
      if (my_s != -INFINITY) {
        float e = my_s - ml.x;
        if (decay != 0.0f) {
          const int64_t j = tile0 + lane, i = t - r_first;
          e += decay * static_cast<float>(j < c0 ? (r1 - r_first) - 1 - i : i - (j - c0));
        }
        total += expf(e) / ml.y;
      }
    }
    s_red[warp][lane] = total;
    __syncthreads();
    if (threadIdx.x < 32 && tile0 + lane < cols) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += s_red[w][lane];
      if (a.attn_sum != nullptr) a.attn_sum[(s * a.heads + h) * a.max_kv + tile0 + lane] += sum;
      kv_total += sum;
    }
    __syncthreads();  // s_red is read before the next head writes it
  }
  if (threadIdx.x < 32 && tile0 + lane < cols && a.kv_attn_sum != nullptr)
    a.kv_attn_sum[(s * a.kv_heads + g) * a.max_kv + tile0 + lane] += kv_total;
}

// Multipliers of the two parts' unnormalised accumulators (paged_attention.h): acc_c * *w_c +
// acc_o * *w_o is the row's output. A part with l = 0 weighs 0; both 0 for a row that sees nothing.
__device__ __forceinline__ void two_part_weights(const ContextSplit& c, float m_c, float l_c, float m_o, float l_o, float* w_c,
                                                 float* w_o) {
  const float x_c = l_c > 0.0f ? c.scale * c.temperature * (m_c + logf(l_c)) : -INFINITY;
  const float x_o = l_o > 0.0f ? m_o + logf(l_o) : -INFINITY;
  const float x = fmaxf(x_c, x_o);
  *w_c = 0.0f;
  *w_o = 0.0f;
  if (x == -INFINITY) return;
  const float e_c = x_c == -INFINITY ? 0.0f : expf(x_c - x), e_o = x_o == -INFINITY ? 0.0f : expf(x_o - x);
  if (l_c > 0.0f) *w_c = e_c / (e_c + e_o) / l_c;
  if (l_o > 0.0f) *w_o = e_o / (e_c + e_o) / l_o;
}

// With a split, a (row, head, split)'s partial state is [M_o, L_o, acc_o[d], M_c, L_c, acc_c[d]]
// (pstride = 2 (d + 2)).
template <typename KV, int DPL>
__global__ void __launch_bounds__(kThreads) two_part_kernel(PagedAttentionArgs a, int splits, int64_t pstride,
                                                            float* __restrict__ partial) {
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
  const ContextSplit c = row.seq >= 0 ? a.ctx_split[row.seq] : ContextSplit{};
  const float scale_c = a.scale / c.temperature;
  const KV* __restrict__ kp = static_cast<const KV*>(a.k_pool);
  const KV* __restrict__ vp = static_cast<const KV*>(a.v_pool);

  float q[DPL], acc[2][DPL];
#pragma unroll
  for (int k = 0; k < DPL; ++k) {
    const int64_t i = k * 32 + lane;
    q[k] = i < d ? load_f32(a.q, a.q_dtype, th * d + i) : 0.0f;
    acc[0][k] = 0.0f;
    acc[1][k] = 0.0f;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  for (int64_t tile = begin + warp * kTile; tile < end; tile += kWarps * kTile) {
    const int n = static_cast<int>(min64(kTile, end - tile));  // warp-uniform
    const int64_t my_off = lane < n ? slot_offset(a, table, tile + lane, g) : -1;
    const int64_t my_voff = a.v_page_table == nullptr ? my_off : (lane < n ? slot_offset(a, table, tile + lane, g, true) : -1);
    const bool my_ctx = tile + lane >= c.begin && tile + lane < c.end;
    float my_s = -INFINITY;  // lane jj: score of slot tile + jj, in its part's scale
#pragma unroll 4
    for (int jj = 0; jj < n; ++jj) {
      const int64_t off = __shfl_sync(kFull, my_off, jj);
      const bool ctx = tile + jj >= c.begin && tile + jj < c.end;
      const float part = off >= 0 ? score_part<DPL>(q, kp + off, d, lane) : 0.0f;
      const float s = warp_sum(part) * (ctx ? scale_c : a.scale);
      if (lane == jj && off >= 0) my_s = s;
    }
    float p[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const float s = (k == 1) == my_ctx ? my_s : -INFINITY;
      const float m_new = fmaxf(m[k], warp_max(s));
      p[k] = 0.0f;
      if (m_new == -INFINITY) continue;  // nothing of this part yet (warp-uniform)
      const float alpha = expf(m[k] - m_new);  // 0 while m = -inf
      p[k] = s == -INFINITY ? 0.0f : expf(s - m_new);
      l[k] = l[k] * alpha + warp_sum(p[k]);
#pragma unroll
      for (int e = 0; e < DPL; ++e) acc[k][e] *= alpha;
      m[k] = m_new;
    }
#pragma unroll 4
    for (int jj = 0; jj < n; ++jj) {
      const int64_t off = __shfl_sync(kFull, my_voff, jj);
      const float p0 = __shfl_sync(kFull, p[0], jj), p1 = __shfl_sync(kFull, p[1], jj);
      if (off >= 0) {
#pragma unroll
        for (int e = 0; e < DPL; ++e) {
          const int64_t i = e * 32 + lane;
          if (i < d) {
            const float v = to_f32(vp[off + i]);
            acc[0][e] += p0 * v;
            acc[1][e] += p1 * v;
          }
        }
      }
    }
  }

  // Merge the warps per part: weights exp(m_w - M), an empty warp (m_w = -inf) weighs 0.
  __shared__ float s_m[2][kWarps], s_l[2][kWarps];
  __shared__ float s_acc[2][kWarps][DPL * 32];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    if (lane == 0) {
      s_m[k][warp] = m[k];
      s_l[k][warp] = l[k];
    }
#pragma unroll
    for (int e = 0; e < DPL; ++e) s_acc[k][warp][e * 32 + lane] = acc[k][e];
  }
  __syncthreads();
  float M[2], L[2], wgt[2][kWarps];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    M[k] = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M[k] = fmaxf(M[k], s_m[k][w]);
    L[k] = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      wgt[k][w] = s_m[k][w] == -INFINITY ? 0.0f : expf(s_m[k][w] - M[k]);
      L[k] += s_l[k][w] * wgt[k][w];
    }
  }
  float* part = partial + (th * splits + split) * pstride;  // used only with a split
  float w_c = 0.0f, w_o = 0.0f;
  if (splits == 1) two_part_weights(c, M[1], L[1], M[0], L[0], &w_c, &w_o);
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float o[2] = {0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < 2; ++k)
      for (int w = 0; w < kWarps; ++w) o[k] += s_acc[k][w][i] * wgt[k][w];
    if (splits == 1) {
      store_f32(a.out, a.out_dtype, th * d + i, o[1] * w_c + o[0] * w_o);
    } else {
      part[2 + i] = o[0];
      part[d + 4 + i] = o[1];
    }
  }
  if (threadIdx.x == 0 && splits > 1) {
    part[0] = M[0];
    part[1] = L[0];
    part[d + 2] = M[1];
    part[d + 3] = L[1];
  }
}

// Decode split of two-part attention: merges the splits of one (row, head) per block, each part
// on its own, then the parts.
__global__ void __launch_bounds__(kThreads) two_part_combine_kernel(PagedAttentionArgs a, int splits, int64_t pstride,
                                                                    const float* __restrict__ partial) {
  const int64_t th = blockIdx.x;
  const int64_t d = a.head_dim;
  const float* p = partial + th * splits * pstride;
  const Row row = find_row(a, th / a.heads);
  const ContextSplit c = row.seq >= 0 ? a.ctx_split[row.seq] : ContextSplit{};
  __shared__ float s_w[2][kMaxSplits];
  float M[2], L[2];
  for (int k = 0; k < 2; ++k) {
    const float* pk = p + k * (d + 2);
    M[k] = -INFINITY;
    for (int s = 0; s < splits; ++s) M[k] = fmaxf(M[k], pk[s * pstride]);
    for (int s = threadIdx.x; s < splits; s += kThreads) {
      const float ms = pk[s * pstride];
      s_w[k][s] = ms == -INFINITY ? 0.0f : expf(ms - M[k]);
    }
  }
  __syncthreads();
  for (int k = 0; k < 2; ++k) {
    L[k] = 0.0f;
    for (int s = 0; s < splits; ++s) L[k] += p[k * (d + 2) + s * pstride + 1] * s_w[k][s];
  }
  float w_c, w_o;
  two_part_weights(c, M[1], L[1], M[0], L[0], &w_c, &w_o);
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float o[2] = {0.0f, 0.0f};
    for (int k = 0; k < 2; ++k)
      for (int s = 0; s < splits; ++s) o[k] += p[k * (d + 2) + s * pstride + 2 + i] * s_w[k][s];
    store_f32(a.out, a.out_dtype, th * d + i, o[1] * w_c + o[0] * w_o);
  }
}

template <typename KV, int DPL>
void launch(const PagedAttentionArgs& a, int splits, int ranges, int64_t pstride, float* partial, float2* stats, cudaStream_t stream) {
  const int64_t rows = a.total_q * a.heads;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  if (a.ctx_split != nullptr) {  // two-part attention: no scores (refused by the caller)
    two_part_kernel<KV, DPL><<<grid, kThreads, 0, stream>>>(a, splits, pstride, partial);
    if (splits > 1) two_part_combine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(a, splits, pstride, partial);
    return;
  }
  const size_t mass_smem = static_cast<size_t>(kWarps) * ranges * sizeof(float);
  attention_kernel<KV, DPL><<<grid, kThreads, mass_smem, stream>>>(a, splits, ranges, pstride, partial, stats);
  if (splits > 1) combine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(a, splits, ranges, pstride, partial, stats);
  const int64_t sum_tiles = (a.max_kv + kTile - 1) / kTile;
  if (stats != nullptr && sum_tiles > 0 && a.seqs * a.kv_heads > 0) {
    const dim3 sum_grid(static_cast<unsigned>(a.seqs * a.kv_heads), static_cast<unsigned>(sum_tiles));
    const size_t smem = static_cast<size_t>(kTile) * a.head_dim * sizeof(float);
    col_sum_kernel<KV, DPL><<<sum_grid, kThreads, smem, stream>>>(a, stats);
  }
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
  if (a.head_dim < 0 || a.num_pages < 0 || a.seqs < 0 || a.total_q < 0 || a.max_kv < 0 || a.num_ranges < 0)
    return invalid_argument(op + "negative size");
  if (!is_float(a.q_dtype) || !is_float(a.out_dtype)) return unsupported(op + "q and out must be f32, f16 or bf16");
  if (a.head_dim > 256) return unsupported(op + "head_dim " + std::to_string(a.head_dim) + " > 256 is not supported on CUDA");
  const int64_t rows = a.total_q * a.heads;
  if (rows == 0 || a.head_dim == 0) return Status::Ok();
  if (rows > INT_MAX) return unsupported(op + "more than 2^31 query rows x heads in one call");
  const bool col_sums = a.attn_sum != nullptr || a.kv_attn_sum != nullptr;
  const int64_t sum_tiles = (a.max_kv + kTile - 1) / kTile;
  if (col_sums && (a.seqs * a.kv_heads > INT_MAX || sum_tiles > 65535))
    return unsupported(op + "attn_sum over more than 2^31 sequences x kv heads or 2M slots");
  const int64_t ranges = a.range_mass != nullptr ? a.num_ranges : 0;
  if (ranges > kMaxRanges)
    return unsupported(op + std::to_string(ranges) + " ranges for range_mass; CUDA takes at most " + std::to_string(kMaxRanges));
  if (ranges > 0 && a.mass_ranges == nullptr) return invalid_argument(op + "range_mass needs mass_ranges");
  if (a.ctx_split != nullptr && (col_sums || ranges > 0))
    return unsupported(op + "scores (attn_sum, kv_attn_sum, range_mass) are not defined for two-part (ctx_split) attention");
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  const int splits = choose_splits(a);
  const int64_t pstride = a.ctx_split != nullptr ? 2 * (a.head_dim + 2) : a.head_dim + 2 + ranges;
  const size_t stats_bytes = col_sums ? static_cast<size_t>(rows) * sizeof(float2) : 0;
  const size_t partial_bytes = splits > 1 ? static_cast<size_t>(rows) * splits * pstride * sizeof(float) : 0;
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
    const int r = static_cast<int>(ranges);
    if (a.head_dim <= 32) launch<KV, 1>(a, splits, r, pstride, partial, stats, s);
    else if (a.head_dim <= 64) launch<KV, 2>(a, splits, r, pstride, partial, stats, s);
    else if (a.head_dim <= 128) launch<KV, 4>(a, splits, r, pstride, partial, stats, s);
    else launch<KV, 8>(a, splits, r, pstride, partial, stats, s);
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
