// matmul on CUDA: C = A @ op(B), f32 accumulation, one rounding to C's dtype (matmul.h has the
// contract). No cuBLAS: plain CUDA cores, written to be right first and reasonably fast.
//
// Two paths, picked by the rows of A (a broadcast B folds the batch into the rows, as on the CPU):
// - GEMM, more than 4 rows (prefill): the classic shared-memory tiled SGEMM. A block of 256
//   threads owns a BM x BN tile of C; for each BK-deep slice of k it stages an A tile and a B
//   tile in shared memory (widened to f32 on load, zero outside the matrices, so any m/n/k
//   works), and each thread accumulates a TM x TN register tile. The next slice is loaded into
//   registers while the current one is multiplied. A thread's rows and columns are strided by
//   16 so shared-memory reads are conflict-free or broadcast and C stores are coalesced.
//   128x128x8 tiles (8x8 per thread; ~230 registers, one block per SM) when they fill the GPU,
//   else 64x64x16 (4x4 per thread). Operand dtypes are read at run time here (a uniform branch
//   per load, next to 32-64 FMAs per loaded value): 4 kernels instead of 36 type combinations.
// - GEMV, at most 4 rows (decode): memory-bound, so the aim is to stream B once at full
//   bandwidth. With trans_b (weights [n, k]) one warp per weight row, 16-byte loads when rows
//   are 16-byte aligned, and a shuffle reduction. Without, each block takes 32 columns and 16
//   k-slices (coalesced rows of B) and sums the slices through shared memory.
// Every output is a fixed-order sum, so results are deterministic run to run.
//
// Later pass: tensor cores (mma.sync for sm_80/89, wgmma for sm_90a) for f16/bf16 operands, and
// a split-k GEMV for short, wide products; the CUDA-core kernels then stay as the f32 fallback.
#include <cuda_runtime.h>

#include <algorithm>

#include "matmul.h"

namespace kvf {
namespace {

constexpr int GEMV_MAX_ROWS = 4;
constexpr int GEMM_THREADS = 256;
constexpr unsigned MAX_GRID_YZ = 65535;

__device__ __forceinline__ void store_out(void* c, DType t, int64_t i, float v) {
  switch (t) {
    case DType::f16: static_cast<f16_t*>(c)[i] = f32_to_f16(v); break;
    case DType::bf16: static_cast<bf16_t*>(c)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(c)[i] = v; break;
  }
}

template <typename T>
__device__ __forceinline__ float load_f32(const T* p) {
  return to_f32(*p);
}

// Element i of a float array whose dtype is known only at run time (uniform across the grid,
// so the branch costs nothing next to the FMAs each loaded value feeds).
__device__ __forceinline__ float load_f32(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::f16: return to_f32(static_cast<const f16_t*>(base)[i]);
    case DType::bf16: return to_f32(static_cast<const bf16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

// V consecutive elements from a 16-byte (or, for 8 bytes in all, 8-byte) aligned address.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
  constexpr int BYTES = V * static_cast<int>(sizeof(T));
  static_assert(BYTES == 8 || BYTES % 16 == 0, "load_vec: 8, 16 or 32 bytes");
  T vals[V];
  if constexpr (BYTES == 8) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    memcpy(vals, &raw, BYTES);
  } else {
    uint4 raw[BYTES / 16];
#pragma unroll
    for (int r = 0; r < BYTES / 16; ++r) raw[r] = reinterpret_cast<const uint4*>(p)[r];
    memcpy(vals, raw, BYTES);
  }
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = to_f32(vals[v]);
}

// ---- GEMM ---------------------------------------------------------------------------------

template <bool TRANS_B, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(GEMM_THREADS)
    gemm_kernel(const void* __restrict__ A, DType at, const void* __restrict__ B, DType bt, void* __restrict__ C,
                DType ct, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t b_stride) {
  constexpr int TX = BN / TN, TY = BM / TM;  // thread grid over the tile
  static_assert(TX * TY == GEMM_THREADS, "one output sub-tile per thread");
  constexpr int A_LOADS = BM * BK / GEMM_THREADS;
  constexpr int B_LOADS = BN * BK / GEMM_THREADS;
  // k-major tiles: a thread's k step reads TM values of As and TN of Bs. The padding spreads
  // the transposing stores over more banks.
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];

  const int tid = threadIdx.x;
  const int tx = tid % TX, ty = tid / TX;
  const int64_t m_tiles = (M + BM - 1) / BM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * BN;

  // This thread's part of each slice load, fixed for the whole k loop. A, and B with trans_b:
  // column kk of rows r, r + STEP, ... (BK threads read BK consecutive k of one row). Plain B:
  // column c of k rows p, p + STEP, ... (consecutive threads read consecutive columns).
  constexpr int ROW_STEP = GEMM_THREADS / BK;
  constexpr int KROW_STEP = GEMM_THREADS / BN;
  const int a_kk = tid % BK, a_r = tid / BK;
  const int b_kk = TRANS_B ? tid % BK : tid / BN;  // trans_b: k column; plain: first k row
  const int b_rc = TRANS_B ? tid / BK : tid % BN;  // trans_b: first weight row; plain: column

  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    for (int64_t mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
      const int64_t row0 = mt * BM;
      // Element offsets of this thread's first A and B loads.
      const int64_t a_at = bz * M * K + (row0 + a_r) * K + a_kk;
      const int64_t b_at = TRANS_B ? bz * b_stride + (col0 + b_rc) * K + b_kk
                                   : bz * b_stride + static_cast<int64_t>(b_kk) * N + col0 + b_rc;
      uint32_t a_ok = 0, b_ok = 0;  // bit l: the l-th row (column) this thread loads exists
#pragma unroll
      for (int l = 0; l < A_LOADS; ++l) a_ok |= (row0 + a_r + l * ROW_STEP < M ? 1u : 0u) << l;
#pragma unroll
      for (int l = 0; l < B_LOADS; ++l) {
        if constexpr (TRANS_B) {
          b_ok |= (col0 + b_rc + l * ROW_STEP < N ? 1u : 0u) << l;
        } else {
          b_ok |= (col0 + b_rc < N ? 1u : 0u) << l;
        }
      }
      float ra[A_LOADS], rb[B_LOADS];

      auto load_slice = [&](int64_t k0) {
        const bool a_k_ok = k0 + a_kk < K;
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l)
          ra[l] = (a_k_ok && (a_ok >> l & 1u)) ? load_f32(A, at, a_at + l * ROW_STEP * K + k0) : 0.0f;
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
          if constexpr (TRANS_B) {
            rb[l] = (k0 + b_kk < K && (b_ok >> l & 1u)) ? load_f32(B, bt, b_at + l * ROW_STEP * K + k0) : 0.0f;
          } else {
            const int64_t p = k0 + l * KROW_STEP;  // relative to this thread's first k row
            rb[l] = (p + b_kk < K && (b_ok >> l & 1u)) ? load_f32(B, bt, b_at + p * N) : 0.0f;
          }
        }
      };
      auto store_slice = [&]() {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l) As[a_kk][a_r + l * ROW_STEP] = ra[l];
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
          if constexpr (TRANS_B) {
            Bs[b_kk][b_rc + l * ROW_STEP] = rb[l];
          } else {
            Bs[b_kk + l * KROW_STEP][b_rc] = rb[l];
          }
        }
      };

      float acc[TM][TN];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

      load_slice(0);
      for (int64_t k0 = 0; k0 < K; k0 += BK) {
        store_slice();
        __syncthreads();
        if (k0 + BK < K) load_slice(k0 + BK);  // in flight while this slice is multiplied
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          float av[TM], bv[TN];
#pragma unroll
          for (int i = 0; i < TM; ++i) av[i] = As[kk][ty + i * TY];
#pragma unroll
          for (int j = 0; j < TN; ++j) bv[j] = Bs[kk][tx + j * TX];
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();  // everyone is done reading before the next slice is stored
      }

#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int64_t row = row0 + ty + i * TY;
        if (row >= M) continue;
        const int64_t c_row = (bz * M + row) * N;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int64_t col = col0 + tx + j * TX;
          if (col < N) store_out(C, ct, c_row + col, acc[i][j]);
        }
      }
    }
  }
}

template <bool TRANS_B, int BM, int BN, int BK, int TM, int TN>
void launch_gemm(const MatmulArgs& a, int64_t batch, int64_t m, cudaStream_t stream) {
  const int64_t m_tiles = (m + BM - 1) / BM;
  const int64_t n_tiles = (a.n + BN - 1) / BN;
  const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(std::min<int64_t>(m_tiles, MAX_GRID_YZ)),
                  static_cast<unsigned>(std::min<int64_t>(batch, MAX_GRID_YZ)));
  const int64_t b_stride = a.broadcast_b ? 0 : a.k * a.n;
  gemm_kernel<TRANS_B, BM, BN, BK, TM, TN><<<grid, GEMM_THREADS, 0, stream>>>(a.a, a.a_dtype, a.b, a.b_dtype, a.c,
                                                                             a.c_dtype, m, a.n, a.k, batch, b_stride);
}

// ---- GEMV ---------------------------------------------------------------------------------

constexpr int GEMV_T_THREADS = 256;  // trans_b: 8 warps, one weight row each

template <typename TA, typename TB>
__global__ void __launch_bounds__(GEMV_T_THREADS)
    gemv_trans_kernel(const TA* __restrict__ A, const TB* __restrict__ B, void* __restrict__ C, DType ct, int M,
                      int64_t N, int64_t K, int64_t batch, int64_t b_stride, bool aligned16) {
  const int lane = threadIdx.x % 32;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (GEMV_T_THREADS / 32) + threadIdx.x / 32;
  if (j >= N) return;  // whole warps only: j is per warp
  for (int64_t bz = blockIdx.y; bz < batch; bz += gridDim.y) {
    const TA* a = A + bz * M * K;
    const TB* w = B + bz * b_stride + j * K;
    float acc[GEMV_MAX_ROWS] = {};
    int64_t p_tail = 0;
    if (aligned16) {  // rows of A and B start on 16 bytes and K is a whole number of vectors
      constexpr int V = 16 / sizeof(TB);  // 4 f32 or 8 f16/bf16 weights per load
#pragma unroll 4
      for (int64_t p = static_cast<int64_t>(lane) * V; p < K; p += 32 * V) {
        float wv[V];
        load_vec<TB, V>(w + p, wv);
#pragma unroll
        for (int i = 0; i < GEMV_MAX_ROWS; ++i) {
          if (i < M) {
            float av[V];
            load_vec<TA, V>(a + i * K + p, av);
#pragma unroll
            for (int v = 0; v < V; ++v) acc[i] = fmaf(av[v], wv[v], acc[i]);
          }
        }
      }
      p_tail = K;
    }
#pragma unroll 4
    for (int64_t p = p_tail + lane; p < K; p += 32) {
      const float wv = load_f32(w + p);
#pragma unroll
      for (int i = 0; i < GEMV_MAX_ROWS; ++i)
        if (i < M) acc[i] = fmaf(load_f32(a + i * K + p), wv, acc[i]);
    }
#pragma unroll
    for (int i = 0; i < GEMV_MAX_ROWS; ++i) {
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
    }
    if (lane == 0) {
      for (int i = 0; i < M; ++i) store_out(C, ct, (bz * M + i) * N + j, acc[i]);
    }
  }
}

constexpr int GEMV_COLS = 32, GEMV_SLICES = 16;  // plain B: 32 columns x 16 k-slices per block

template <typename TA, typename TB>
__global__ void __launch_bounds__(GEMV_COLS* GEMV_SLICES)
    gemv_kernel(const TA* __restrict__ A, const TB* __restrict__ B, void* __restrict__ C, DType ct, int M, int64_t N,
                int64_t K, int64_t batch, int64_t b_stride) {
  __shared__ float part[GEMV_SLICES][GEMV_MAX_ROWS][GEMV_COLS];
  const int lane = threadIdx.x % GEMV_COLS, slice = threadIdx.x / GEMV_COLS;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * GEMV_COLS + lane;
  for (int64_t bz = blockIdx.y; bz < batch; bz += gridDim.y) {
    const TA* a = A + bz * M * K;
    const TB* b = B + bz * b_stride;
    float acc[GEMV_MAX_ROWS] = {};
    if (j < N) {
#pragma unroll 4
      for (int64_t p = slice; p < K; p += GEMV_SLICES) {
        const float bv = load_f32(b + p * N + j);
#pragma unroll
        for (int i = 0; i < GEMV_MAX_ROWS; ++i)
          if (i < M) acc[i] = fmaf(load_f32(a + i * K + p), bv, acc[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < GEMV_MAX_ROWS; ++i) part[slice][i][lane] = acc[i];
    __syncthreads();
    if (slice == 0 && j < N) {
      for (int i = 0; i < M; ++i) {
        float s = 0.0f;
#pragma unroll
        for (int sl = 0; sl < GEMV_SLICES; ++sl) s += part[sl][i][lane];
        store_out(C, ct, (bz * M + i) * N + j, s);
      }
    }
    __syncthreads();  // part is reused by the next batch entry
  }
}

template <typename TA, typename TB>
void launch_gemv(const MatmulArgs& a, int64_t batch, int64_t m, cudaStream_t stream) {
  const int64_t b_stride = a.broadcast_b ? 0 : a.k * a.n;
  const unsigned grid_y = static_cast<unsigned>(std::min<int64_t>(batch, MAX_GRID_YZ));
  if (a.trans_b) {
    const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
    const bool aligned16 = addr(a.a) % 16 == 0 && addr(a.b) % 16 == 0 && (a.k * sizeof(TA)) % 16 == 0 &&
                           (a.k * sizeof(TB)) % 16 == 0;
    const dim3 grid(static_cast<unsigned>((a.n + GEMV_T_THREADS / 32 - 1) / (GEMV_T_THREADS / 32)), grid_y);
    gemv_trans_kernel<TA, TB><<<grid, GEMV_T_THREADS, 0, stream>>>(static_cast<const TA*>(a.a),
                                                                   static_cast<const TB*>(a.b), a.c, a.c_dtype,
                                                                   static_cast<int>(m), a.n, a.k, batch, b_stride,
                                                                   aligned16);
  } else {
    const dim3 grid(static_cast<unsigned>((a.n + GEMV_COLS - 1) / GEMV_COLS), grid_y);
    gemv_kernel<TA, TB><<<grid, GEMV_COLS * GEMV_SLICES, 0, stream>>>(static_cast<const TA*>(a.a),
                                                                      static_cast<const TB*>(a.b), a.c, a.c_dtype,
                                                                      static_cast<int>(m), a.n, a.k, batch, b_stride);
  }
}

int multiprocessor_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();  // a failed query is not the op's error
    return 108;
  }
  return sms;
}

}  // namespace

Status matmul_cuda(const MatmulArgs& args, void* stream_ptr) {
  for (DType t : {args.a_dtype, args.b_dtype, args.c_dtype}) {
    if (!is_float(t))
      return unsupported(std::string("matmul: dtype ") + dtype_name(t) + " is not supported (expected f32, f16 or bf16)");
  }
  if (args.batch < 0 || args.m < 0 || args.n < 0 || args.k < 0)
    return invalid_argument("matmul: batch, m, n and k must be non-negative");
  if (args.batch == 0 || args.m == 0 || args.n == 0) return Status::Ok();
  if ((args.n + 7) / 8 > 0x7fffffff) return invalid_argument("matmul: n is too large for the CUDA grid");
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);

  if (args.k == 0) {  // empty sum; all-zero bits are +0 in every float dtype
    const size_t bytes = static_cast<size_t>(args.batch * args.m * args.n) * dtype_size(args.c_dtype);
    const cudaError_t err = cudaMemsetAsync(args.c, 0, bytes, stream);
    if (err != cudaSuccess) return device_error(std::string("matmul: ") + cudaGetErrorString(err));
    return Status::Ok();
  }

  // A broadcast B: A and C are contiguous over the batch, so it is one product with batch * m rows.
  const bool fold = args.broadcast_b || args.batch == 1;
  const int64_t batch = fold ? 1 : args.batch;
  const int64_t m = fold ? args.batch * args.m : args.m;

  if (m <= GEMV_MAX_ROWS) {
    const Status st = dispatch_float(args.a_dtype, "matmul", [&](auto ta) {
      return dispatch_float(args.b_dtype, "matmul", [&](auto tb) {
        launch_gemv<decltype(ta), decltype(tb)>(args, batch, m, stream);
        return Status::Ok();
      });
    });
    if (!st.ok()) return st;
  } else {
    // Big tiles only when they make at least one full wave over the SMs.
    const int64_t big_tiles = batch * ((m + 127) / 128) * ((args.n + 127) / 128);
    const bool big = big_tiles >= multiprocessor_count();
    if (args.trans_b) {
      if (big) launch_gemm<true, 128, 128, 8, 8, 8>(args, batch, m, stream);
      else launch_gemm<true, 64, 64, 16, 4, 4>(args, batch, m, stream);
    } else {
      if (big) launch_gemm<false, 128, 128, 8, 8, 8>(args, batch, m, stream);
      else launch_gemm<false, 64, 64, 16, 4, 4>(args, batch, m, stream);
    }
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return device_error(std::string("matmul: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace kvf
