// rerotate_pages on CUDA (rerotate_pages.h has the contract; rerotate_pages_cpu.cc is the twin).
//
// Memory-bound: every moved key element is read once and written once, so the goal is the
// device's copy bandwidth (scripts/bench/rerotate.mjs compares the two). One launch covers
// every run of every layer. Block (run, tile of up to kMaxTileRows rows):
//   1. the tile's shifts q - p into shared memory; rows that repeat the previous row's shift
//      (a moved block shifts every token alike) reuse its table row;
//   2. the sin/cos table of each distinct shift (accurate sincosf: rerotate_math.h), in shared
//      memory: one sincosf per (distinct shift, pair) instead of one per (row, head, pair);
//   3. the rotation in 16-byte vectors: the split layout reads the vectors at i and
//      i + rotary_dim/2 of a head (V pairs), the adjacent layout one vector of V/2 pairs; each
//      thread loads kUnroll items before it computes any, so enough bytes are in flight
//      (about 64 KB per SM at two blocks of 256 threads). The tile's heads are consecutive in
//      memory, so an item is (head, group) = (idx / groups, idx % groups): a shift for the usual
//      power-of-two head sizes, no division in the hot loop;
//   4. partial rotary: the dimensions past rotary_dim are copied as vectors (skipped in place).
// Narrower vectors when the head size, the rotary width or the pool's alignment ask for them.
// Budget (H200, bf16): ~1e12 elements/s at copy bandwidth against ~3e13 thread instructions/s,
// so at most ~15 instructions per element: conversions, 3 flops, and the decode amortised over
// the 2V elements of an item. f16 converts with the hardware's cvt for that reason.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "rerotate.h"
#include "rerotate_math.h"
#include "rerotate_pages.h"

namespace kvf {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxTileRows = 16;
constexpr int kUnroll = 4;
constexpr size_t kTableBytes = 48 * 1024;  // the default dynamic shared-memory limit

// Device conversions, bit-identical to common.h's to_f32 / from_f32 for every input: f16 goes
// through the hardware's cvt (one instruction instead of common.h's branchy bit arithmetic),
// except NaNs, which take common.h's path (the hardware would return a canonical NaN rather
// than keep the payload). bf16 widening is a shift either way, and its rounding is a few
// integer operations, common.h's.
__device__ __forceinline__ float load_f32(float x) { return x; }
__device__ __forceinline__ float load_f32(bf16_t x) { return bf16_to_f32(x); }
__device__ __forceinline__ float load_f32(f16_t x) {
  if ((x.bits & 0x7fffu) > 0x7c00u) return f16_to_f32(x);
  return __half2float(__ushort_as_half(x.bits));
}

template <typename T>
__device__ __forceinline__ T store_as(float x);
template <>
__device__ __forceinline__ float store_as<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16_t store_as<bf16_t>(float x) { return f32_to_bf16(x); }
template <>
__device__ __forceinline__ f16_t store_as<f16_t>(float x) {
  if ((__float_as_uint(x) & 0x7fffffffu) > 0x7f800000u) return f32_to_f16(x);
  return f16_t{__half_as_ushort(__float2half_rn(x))};
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& x) {
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// V consecutive table entries (16-byte aligned when V is a multiple of 4: the table rows and the
// offsets are multiples of V floats).
template <int V>
__device__ __forceinline__ void load_table(const float* t, float (&out)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int j = 0; j < V; j += 4) {
      const float4 q = *reinterpret_cast<const float4*>(t + j);
      out[j] = q.x;
      out[j + 1] = q.y;
      out[j + 2] = q.z;
      out[j + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = t[j];
  }
}

struct Shape {
  int page_size, kv_heads, head_dim, rotary_dim, tile_rows;
  int groups_shift;  // log2 of the rotation items per head when a power of two, else -1
};

// a / b for the item decode: a shift when b is a power of two (the usual head sizes), so the
// hot loop carries no integer division.
__device__ __forceinline__ int div_by(int a, int b, int shift) { return shift >= 0 ? a >> shift : a / b; }

template <typename T, int V, bool kAdjacent>
__global__ void __launch_bounds__(kThreads) rerotate_pages_kernel(const T* src, T* dst,  // may be one pool
                                                                   const RerotateRun* __restrict__ runs, int64_t num_runs,
                                                                   const int32_t* __restrict__ positions,
                                                                   const float* __restrict__ inv_freq, Shape sh) {
  extern __shared__ float4 table_storage[];
  float* cos_t = reinterpret_cast<float*>(table_storage);  // (tile_rows, half)
  const int half = sh.rotary_dim / 2;
  float* sin_t = cos_t + sh.tile_rows * half;  // (tile_rows, half)
  __shared__ int64_t shift[kMaxTileRows];
  __shared__ int table_row[kMaxTileRows];

  // Rotation items per head: V pairs each (split: two vectors; adjacent: one vector).
  const int groups = kAdjacent ? sh.rotary_dim / V : half / V;
  const int copies = (sh.head_dim - sh.rotary_dim) / V;
  const int row_elems = sh.kv_heads * sh.head_dim;

  for (int64_t r = blockIdx.x; r < num_runs; r += gridDim.x) {
    const RerotateRun run = runs[r];
    const int row0 = static_cast<int>(blockIdx.y) * sh.tile_rows;
    if (row0 >= run.rows) continue;  // the same for the whole block: no barrier is skipped by some threads only
    const int rows = min(sh.tile_rows, run.rows - row0);

    const int t = threadIdx.x;
    if (t < rows) shift[t] = static_cast<int64_t>(positions[run.to + row0 + t]) - positions[run.from + row0 + t];
    __syncthreads();
    int first_row = 0;
    if (t < rows) {
      first_row = t;
      while (first_row > 0 && shift[first_row - 1] == shift[t]) --first_row;
      table_row[t] = first_row;
    }
    // One shift for the whole tile (a moved block): every item reads table row 0.
    const bool uniform = __syncthreads_and(first_row == 0);
    for (int idx = t; idx < rows * half; idx += blockDim.x) {
      const int k = idx / half;
      const int i = idx - k * half;
      if (table_row[k] == k) rerotation_sincos(shift[k], inv_freq[i], &sin_t[k * half + i], &cos_t[k * half + i]);
    }
    __syncthreads();

    // The tile's rows are consecutive rows of one page, so its heads are consecutive too:
    // item idx is rotation group g of head idx / groups. A one-head run (run.head > 0) has one
    // head per row: its "head" index is the row, at a stride of row_elems.
    const bool one_head = run.head > 0;
    const int heads_per_row = one_head ? 1 : sh.kv_heads;
    const int64_t head_at = one_head ? static_cast<int64_t>(run.head - 1) * sh.head_dim : 0;
    const T* in = src + (static_cast<int64_t>(run.src_page) * sh.page_size + run.src_row + row0) * row_elems + head_at;
    T* out = dst + (static_cast<int64_t>(run.dst_page) * sh.page_size + run.dst_row + row0) * row_elems + head_at;
    const int head_stride = one_head ? row_elems : sh.head_dim;
    const int items = rows * heads_per_row * groups;
    for (int first = t; first < items; first += kUnroll * blockDim.x) {
      Pack<T, V> lo[kUnroll], hi[kUnroll];
      int at[kUnroll], table_at[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int idx = first + u * static_cast<int>(blockDim.x);
        if (idx >= items) continue;
        const int head = div_by(idx, groups, sh.groups_shift);
        const int g = idx - head * groups;
        const int trow = uniform ? 0 : table_row[one_head ? head : head / sh.kv_heads];
        at[u] = head * head_stride + g * V;
        table_at[u] = trow * half + (kAdjacent ? g * (V / 2) : g * V);
        lo[u] = load<T, V>(in + at[u]);
        if constexpr (!kAdjacent) hi[u] = load<T, V>(in + at[u] + half);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (first + u * static_cast<int>(blockDim.x) >= items) continue;
        const float* c = cos_t + table_at[u];
        const float* s = sin_t + table_at[u];
        if constexpr (kAdjacent) {
          float cs[V / 2 > 0 ? V / 2 : 1], sn[V / 2 > 0 ? V / 2 : 1];
          load_table<V / 2>(c, cs);
          load_table<V / 2>(s, sn);
          Pack<T, V> o;
#pragma unroll
          for (int j = 0; j < V / 2; ++j) {
            float y0, y1;
            rotate_pair(load_f32(lo[u].v[2 * j]), load_f32(lo[u].v[2 * j + 1]), cs[j], sn[j], &y0, &y1);
            o.v[2 * j] = store_as<T>(y0);
            o.v[2 * j + 1] = store_as<T>(y1);
          }
          store<T, V>(out + at[u], o);
        } else {
          float cs[V], sn[V];
          load_table<V>(c, cs);
          load_table<V>(s, sn);
          Pack<T, V> o0, o1;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            float y0, y1;
            rotate_pair(load_f32(lo[u].v[j]), load_f32(hi[u].v[j]), cs[j], sn[j], &y0, &y1);
            o0.v[j] = store_as<T>(y0);
            o1.v[j] = store_as<T>(y1);
          }
          store<T, V>(out + at[u], o0);
          store<T, V>(out + at[u] + half, o1);
        }
      }
    }

    // Partial rotary: the dimensions past rotary_dim travel unchanged.
    if (copies > 0 && in != out) {
      const int per_row_copies = heads_per_row * copies;
      for (int idx = t; idx < rows * per_row_copies; idx += blockDim.x) {
        const int k = idx / per_row_copies;
        const int rem = idx - k * per_row_copies;
        const int h = rem / copies;  // within the run's heads (offset by head_at)
        const int e = k * row_elems + h * sh.head_dim + sh.rotary_dim + (rem - h * copies) * V;
        store<T, V>(out + e, load<T, V>(in + e));
      }
    }
    __syncthreads();  // the next run rewrites the table and the shifts
  }
}

template <typename T, int V, bool kAdjacent>
Status launch(const RerotatePagesArgs& a, const Shape& sh, cudaStream_t stream) {
  const size_t table_bytes = 2 * static_cast<size_t>(sh.tile_rows) * (sh.rotary_dim / 2) * sizeof(float);
  const int64_t tiles = (a.page_size + sh.tile_rows - 1) / sh.tile_rows;
  const int64_t grid_x = std::min<int64_t>(a.num_runs, 0x7fffffffLL);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(tiles));
  rerotate_pages_kernel<T, V, kAdjacent><<<grid, kThreads, table_bytes, stream>>>(
      static_cast<const T*>(a.src_pool), static_cast<T*>(a.dst_pool), a.runs, a.num_runs, a.positions, a.inv_freq, sh);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("rerotate_pages: ") + cudaGetErrorString(err));
  return Status::Ok();
}

// The widest vector (in elements, up to 16 bytes) that every access of this shape can use.
template <typename T>
int vector_width(const RerotatePagesArgs& a, int64_t rotary_dim, bool adjacent) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(a.src_pool) | reinterpret_cast<uintptr_t>(a.dst_pool);
  for (int v = static_cast<int>(16 / sizeof(T)); v >= 1; v /= 2) {
    if (a.head_dim % v != 0 || rotary_dim % v != 0) continue;
    if (!adjacent && (rotary_dim / 2) % v != 0) continue;
    if (adjacent && v < 2) continue;
    if (addr % (v * sizeof(T)) != 0) continue;
    return v;
  }
  return 0;
}

template <typename T, bool kAdjacent>
Status launch_width(const RerotatePagesArgs& a, const Shape& sh, int v, cudaStream_t stream) {
  switch (v) {
    case 8:
      if constexpr (sizeof(T) == 2) return launch<T, 8, kAdjacent>(a, sh, stream);
      break;
    case 4: return launch<T, 4, kAdjacent>(a, sh, stream);
    case 2: return launch<T, 2, kAdjacent>(a, sh, stream);
    case 1:
      if constexpr (!kAdjacent) return launch<T, 1, kAdjacent>(a, sh, stream);
      break;
  }
  return Status(StatusCode::internal, "rerotate_pages: no vector width fits the shape");
}

}  // namespace

Status rerotate_pages_cuda(const RerotatePagesArgs& a, void* stream) {
  int64_t rotary_dim = 0;
  KVF_RETURN_IF_ERROR(rerotate_rotary_dim("rerotate_pages", a.head_dim, a.rotary_dim, &rotary_dim));
  if (a.page_size <= 0 || a.kv_heads < 0 || a.num_runs < 0) return invalid_argument("rerotate_pages: bad pool shape");
  if (a.num_runs == 0 || a.kv_heads == 0 || a.head_dim == 0) return Status::Ok();
  if (a.page_size > 0x7fffffff || a.kv_heads * a.head_dim > 0x7fffffff) return unsupported("rerotate_pages: pages this large are not supported");
  // As many rows per block as the table fits in the default shared-memory limit.
  const int64_t half = rotary_dim / 2;
  const int64_t fit = half == 0 ? kMaxTileRows : static_cast<int64_t>(kTableBytes / (2 * sizeof(float) * half));
  if (fit < 1) return unsupported("rerotate_pages: rotary_dim " + std::to_string(rotary_dim) + " is too large");
  Shape sh;
  sh.page_size = static_cast<int>(a.page_size);
  sh.kv_heads = static_cast<int>(a.kv_heads);
  sh.head_dim = static_cast<int>(a.head_dim);
  sh.rotary_dim = static_cast<int>(rotary_dim);
  sh.tile_rows = static_cast<int>(std::min<int64_t>({kMaxTileRows, fit, a.page_size}));
  // The tile (rows x kv_heads x head_dim elements) is indexed in int.
  if (static_cast<int64_t>(sh.tile_rows) * a.kv_heads * a.head_dim > 0x3fffffff) return unsupported("rerotate_pages: pages this large are not supported");
  const bool adjacent = a.layout == RopeLayout::adjacent;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dispatch_float(a.dtype, "rerotate_pages", [&](auto tag) {
    using T = decltype(tag);
    const int v = vector_width<T>(a, rotary_dim, adjacent);
    if (v == 0) return invalid_argument("rerotate_pages: the pools are not aligned to their element size");
    const int groups = static_cast<int>(adjacent ? rotary_dim / v : rotary_dim / 2 / v);
    sh.groups_shift = (groups & (groups - 1)) == 0 ? __builtin_ctz(static_cast<unsigned>(groups)) : -1;
    return adjacent ? launch_width<T, true>(a, sh, v, s) : launch_width<T, false>(a, sh, v, s);
  });
}

}  // namespace kvf
