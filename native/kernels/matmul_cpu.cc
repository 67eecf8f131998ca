// CPU twin of matmul.cu: C = A @ op(B), f32 accumulation (matmul.h has the contract).
//
// Two paths, picked by the number of rows of A (a broadcast B folds the batch into the rows):
// - GEMV, at most 4 rows: decode. Memory-bound, so B is streamed exactly once in its own dtype
//   and widened to f32 in registers; threads split the columns of C. With trans_b (weights
//   [n, k]) each output is a dot product of an A row with a weight row, read one weight row
//   at a time (one sequential stream) into two 16-lane sums; without, a group of up to 512 columns keeps its sums in L1 while B's rows stream past.
// - GEMM, more rows: prefill. BLIS-style blocking. C is cut into tasks of mc x nc; a task packs
//   a kc x nc block of B (widened to f32) into NR-wide column panels that stay in L2, and for
//   each MR-row panel of A (packed into L1) runs a register-blocked MR x NR micro-kernel over
//   every B panel. k is cut into kc = 256 blocks; partial sums accumulate in C (f32) or in a
//   per-task f32 tile (f16/bf16 C, rounded once at the end). Packing row-major operands (A,
//   and B with trans_b) is a 4x8 register transpose, so it costs about as much as a copy.
//
// The functions holding the hot loops are compiled for baseline x86-64, x86-64-v3 (AVX2+FMA)
// and x86-64-v4 (AVX-512) through KVF_CPU_CLONES; the loader picks one, and the micro-kernel
// shape follows the host: 12x32 with 24 zmm accumulators, 6x16 with 12 ymm, or 6x8 with 12 xmm.
//
// Determinism: every element of C is one fixed-order chain over k (GEMM: an FMA chain per
// kc block, blocks added in order; GEMV: 32 lane chains reduced pairwise, then the k % 16
// tail; plain-B GEMV: one chain), independent of the thread count and of how C is cut into tasks.
// The path depends only on the shapes, so for a given host ISA results are bitwise identical
// for any KVFOCUS_THREADS, and on the GEMM path a row of C does not depend on the other rows.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "matmul.h"
#include "parallel.h"

#define KVF_ALWAYS_INLINE inline __attribute__((always_inline))

// Vector values only cross always-inlined helpers, never a real call, so the ABI note GCC
// gives for wide vectors in the baseline clone does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// Lane shuffle of two 8-float vectors, indices 0-7 from a and 8-15 from b (GCC and clang).
#if defined(__clang__)
#define KVF_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define KVF_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, v8i32{__VA_ARGS__})
#endif

namespace kvf {
namespace {

typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));
typedef int32_t v8i32 __attribute__((vector_size(32)));
typedef uint32_t v16u32 __attribute__((vector_size(64)));

constexpr int64_t KC = 256;      // k block: a kc x NR B panel is 32 KB at NR = 32
constexpr int64_t NC_MAX = 512;  // a kc x nc packed B block is at most 512 KB (L2)
constexpr int64_t MC_MAX = 512;  // rows per task; B is packed once per task
constexpr int MR_MAX = 12;
constexpr int64_t GEMV_MAX_ROWS = 4;

template <typename V>
KVF_ALWAYS_INLINE V loadu(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
KVF_ALWAYS_INLINE void storeu(float* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// 8 consecutive elements of a float storage type widened to f32, bit-identical to to_f32.
KVF_ALWAYS_INLINE v8f load8(const float* p) { return loadu<v8f>(p); }

// 8 consecutive 16-bit values as the high halves of eight 32-bit lanes (h << 16, low half 0):
// a bf16 is then already its f32. Spread words 0-3 and 4-7 to the two 128-bit halves and
// interleave with zeros (vpermq + vpunpcklwd): GCC 12 turns __builtin_convertvector from 16 to
// 32 bits into four instructions instead of one vpmovzxwd, and this is the hot decode loop.
KVF_ALWAYS_INLINE v8u32 load8_high16(const void* p) {
  v8u16 h;
  __builtin_memcpy(&h, p, sizeof(h));
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  typedef uint16_t v16u16 __attribute__((vector_size(32)));
  const v16u16 spread = __builtin_shufflevector(h, h, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7);
  return reinterpret_cast<v8u32>(
      __builtin_shufflevector(v16u16{}, spread, 0, 16, 0, 17, 0, 18, 0, 19, 0, 24, 0, 25, 0, 26, 0, 27));
#else
  return __builtin_convertvector(h, v8u32) << 16;
#endif
}

// f16 bits held in the high halves of 32-bit lanes (low halves zero) -> f32, on integer lanes
// (no F16C needed, so every clone shares it): move exponent and mantissa into place and
// rebias; infinities and NaNs get the rest of the f32 exponent; zeros and subnormals are
// renormalised exactly by subtracting 2^-14. Bit-identical to f16_to_f32.
template <typename VU, typename VF = std::conditional_t<sizeof(VU) == 32, v8f, v16f>>
KVF_ALWAYS_INLINE VF f16_high_to_f32(const VU& u) {
  const VU sign = u & 0x80000000u;
  VU o = (u & 0x7fff0000u) >> 3;
  const VU exp = o & 0x0f800000u;
  o += (127u - 15u) << 23;
  o = exp == 0x0f800000u ? o + ((128u - 16u) << 23) : o;
  const VF magic = reinterpret_cast<VF>(VU{} + (113u << 23));  // 2^-14
  const VU renorm = reinterpret_cast<VU>(reinterpret_cast<VF>(o + (1u << 23)) - magic);
  o = exp == 0u ? renorm : o;
  return reinterpret_cast<VF>(o | sign);
}

KVF_ALWAYS_INLINE v8f load8(const bf16_t* p) { return reinterpret_cast<v8f>(load8_high16(p)); }
KVF_ALWAYS_INLINE v8f load8(const f16_t* p) { return f16_high_to_f32(load8_high16(p)); }

// 32 consecutive 16-bit values widened as two vectors, the even-indexed elements and the
// odd-indexed ones: no lane shuffles at all (shift and mask), for loops whose other operand
// can be stored in the same even/odd order.
KVF_ALWAYS_INLINE void load32_split(const bf16_t* p, v16f& even, v16f& odd) {
  v16u32 u;
  __builtin_memcpy(&u, p, sizeof(u));
  even = reinterpret_cast<v16f>(u << 16);
  odd = reinterpret_cast<v16f>(u & 0xffff0000u);
}

KVF_ALWAYS_INLINE void load32_split(const f16_t* p, v16f& even, v16f& odd) {
  v16u32 u;
  __builtin_memcpy(&u, p, sizeof(u));
  even = f16_high_to_f32(u << 16);
  odd = f16_high_to_f32(u & 0xffff0000u);
}

KVF_ALWAYS_INLINE v16f concat(const v8f& lo, const v8f& hi) {
  v16f v;
  __builtin_memcpy(&v, &lo, sizeof(lo));
  __builtin_memcpy(reinterpret_cast<char*>(&v) + sizeof(lo), &hi, sizeof(hi));
  return v;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVF_F16C_GEMV 1
// f16 weights in the GEMV, read through F16C's vcvtph2ps: a marker storage type whose load8 is
// that one instruction. Only instantiated inside gemv_range_f16c, which is compiled for
// x86-64-v3 and called only on such hosts (inline asm, as the baseline clone has no F16C).
struct f16c_t {
  uint16_t bits;
};
using ::kvf::to_f32;  // keep common.h's overloads visible beside this one
KVF_ALWAYS_INLINE float to_f32(f16c_t h) { return f16_to_f32(f16_t{h.bits}); }
KVF_ALWAYS_INLINE v8f load8(const f16c_t* p) {
  v8u16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  v8f out;
  asm("vcvtph2ps %1, %0" : "=x"(out) : "xm"(h));
  return out;
}
#endif

template <typename T>
KVF_ALWAYS_INLINE void convert_row(const T* src, float* dst, int64_t len) {
  int64_t p = 0;
  for (; p + 8 <= len; p += 8) storeu(dst + p, load8(src + p));
  for (; p < len; ++p) dst[p] = to_f32(src[p]);
}

KVF_ALWAYS_INLINE void store_c(void* c, DType t, int64_t i, float v) {
  switch (t) {
    case DType::f16: static_cast<f16_t*>(c)[i] = f32_to_f16(v); break;
    case DType::bf16: static_cast<bf16_t*>(c)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(c)[i] = v; break;
  }
}

// Pairwise: (l0 + l4) + (l2 + l6) + ((l1 + l5) + (l3 + l7)).
KVF_ALWAYS_INLINE float hsum(const v8f& v) {
  const float a = (v[0] + v[4]) + (v[2] + v[6]);
  const float b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

// Halves added lane by lane, then hsum.
KVF_ALWAYS_INLINE float hsum(const v16f& v) {
  v8f lo, hi;
  __builtin_memcpy(&lo, &v, sizeof(lo));
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return hsum(lo + hi);
}

// ---- Packing ------------------------------------------------------------------------------

KVF_ALWAYS_INLINE void store4(float* dst, const v8f& v, int half) {
  __builtin_memcpy(dst, reinterpret_cast<const char*>(&v) + 16 * half, 16);
}

// Interleaves `valid` rows (leading dimension ld) of kc elements into panel[p * R + r] as f32;
// rows valid..R-1 are zero. Packs A's MR-row panels and, with trans_b, B's NR-column panels.
// Four rows at a time: load 8 columns of each (widening 16-bit types), transpose 4x8 in
// registers, store 8 runs of 4. Reading a few rows sequentially, instead of R rows one element
// at a time, also avoids the L1 set conflicts of rows whose stride is a multiple of 4 KB.
template <int R, typename T>
KVF_ALWAYS_INLINE void pack_rows_typed(const T* src, int64_t ld, int valid, int64_t kc, float* panel) {
  const int64_t k8 = kc / 8 * 8;
  int r = 0;
  for (; r + 4 <= valid; r += 4) {
    const T* s0 = src + r * ld;
    const T* s1 = s0 + ld;
    const T* s2 = s1 + ld;
    const T* s3 = s2 + ld;
    for (int64_t p = 0; p < k8; p += 8) {
      const v8f a = load8(s0 + p), b = load8(s1 + p), c = load8(s2 + p), d = load8(s3 + p);
      const v8f ab_lo = KVF_SHUFFLE8(a, b, 0, 8, 1, 9, 4, 12, 5, 13);  // a0 b0 a1 b1 | a4 b4 a5 b5
      const v8f ab_hi = KVF_SHUFFLE8(a, b, 2, 10, 3, 11, 6, 14, 7, 15);
      const v8f cd_lo = KVF_SHUFFLE8(c, d, 0, 8, 1, 9, 4, 12, 5, 13);
      const v8f cd_hi = KVF_SHUFFLE8(c, d, 2, 10, 3, 11, 6, 14, 7, 15);
      const v8f col04 = KVF_SHUFFLE8(ab_lo, cd_lo, 0, 1, 8, 9, 4, 5, 12, 13);  // a0 b0 c0 d0 | a4 b4 c4 d4
      const v8f col15 = KVF_SHUFFLE8(ab_lo, cd_lo, 2, 3, 10, 11, 6, 7, 14, 15);
      const v8f col26 = KVF_SHUFFLE8(ab_hi, cd_hi, 0, 1, 8, 9, 4, 5, 12, 13);
      const v8f col37 = KVF_SHUFFLE8(ab_hi, cd_hi, 2, 3, 10, 11, 6, 7, 14, 15);
      float* dst = panel + p * R + r;
      store4(dst + 0 * R, col04, 0);
      store4(dst + 1 * R, col15, 0);
      store4(dst + 2 * R, col26, 0);
      store4(dst + 3 * R, col37, 0);
      store4(dst + 4 * R, col04, 1);
      store4(dst + 5 * R, col15, 1);
      store4(dst + 6 * R, col26, 1);
      store4(dst + 7 * R, col37, 1);
    }
    for (int64_t p = k8; p < kc; ++p)
      for (int q = 0; q < 4; ++q) panel[p * R + r + q] = to_f32(src[(r + q) * ld + p]);
  }
  for (; r < valid; ++r)
    for (int64_t p = 0; p < kc; ++p) panel[p * R + r] = to_f32(src[r * ld + p]);
  for (; r < R; ++r)
    for (int64_t p = 0; p < kc; ++p) panel[p * R + r] = 0.0f;
}

template <int R>
KVF_ALWAYS_INLINE void pack_rows(const void* base, DType t, int64_t offset, int64_t ld, int valid, int64_t kc,
                                 float* panel) {
  switch (t) {
    case DType::f16: return pack_rows_typed<R>(static_cast<const f16_t*>(base) + offset, ld, valid, kc, panel);
    case DType::bf16: return pack_rows_typed<R>(static_cast<const bf16_t*>(base) + offset, ld, valid, kc, panel);
    default: return pack_rows_typed<R>(static_cast<const float*>(base) + offset, ld, valid, kc, panel);
  }
}

// B without trans_b: kc rows of `valid` contiguous columns into panel[p * R + c], zero-padded.
template <int R, typename T>
KVF_ALWAYS_INLINE void pack_cols_typed(const T* src, int64_t ld, int valid, int64_t kc, float* panel) {
  if (valid == R) {
    for (int64_t p = 0; p < kc; ++p) convert_row(src + p * ld, panel + p * R, R);
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      convert_row(src + p * ld, panel + p * R, valid);
      for (int c = valid; c < R; ++c) panel[p * R + c] = 0.0f;
    }
  }
}

template <int R>
KVF_ALWAYS_INLINE void pack_cols(const void* base, DType t, int64_t offset, int64_t ld, int valid, int64_t kc,
                                 float* panel) {
  switch (t) {
    case DType::f16: return pack_cols_typed<R>(static_cast<const f16_t*>(base) + offset, ld, valid, kc, panel);
    case DType::bf16: return pack_cols_typed<R>(static_cast<const bf16_t*>(base) + offset, ld, valid, kc, panel);
    default: return pack_cols_typed<R>(static_cast<const float*>(base) + offset, ld, valid, kc, panel);
  }
}

// ---- GEMM ---------------------------------------------------------------------------------

// One matmul with a broadcast B already folded into the rows, and its task grid.
struct Gemm {
  const void* a;
  DType at;
  const void* b;
  DType bt;
  void* c;
  DType ct;
  int64_t batch, m, n, k;
  bool trans_b, broadcast_b;
  int64_t mc, nc, mblocks, nblocks;  // GEMM task grid: batch x mblocks x nblocks; GEMV: nc columns
};

enum class Shape { sse, avx2, avx512 };

// MR x NR micro-kernel: acc = A panel (kc x MR) times B panel (kc x NR), then C = acc
// (first k block) or C += acc. The accumulators stay in registers for the whole k loop; each
// step loads NV vectors of B and broadcasts MR scalars of A.
template <typename V, int MR, int NV>
KVF_ALWAYS_INLINE void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c,
                                    int64_t ldc, bool accumulate, int mr, int nr) {
  constexpr int W = sizeof(V) / sizeof(float);
  constexpr int NR = NV * W;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = V{};
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = loadu<V>(b + p * NR + j * W);
    for (int i = 0; i < MR; ++i) {
      const float av = a[p * MR + i];
      for (int j = 0; j < NV; ++j) acc[i][j] += bv[j] * av;
    }
  }
  if (mr == MR && nr == NR) {
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NV; ++j) {
        float* dst = c + i * ldc + j * W;
        storeu(dst, accumulate ? loadu<V>(dst) + acc[i][j] : acc[i][j]);
      }
    }
  } else {
    alignas(64) float tile[MR * NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NV; ++j) storeu(tile + i * NR + j * W, acc[i][j]);
    for (int i = 0; i < mr; ++i) {
      for (int j = 0; j < nr; ++j) {
        float& dst = c[i * ldc + j];
        dst = accumulate ? dst + tile[i * NR + j] : tile[i * NR + j];
      }
    }
  }
}

// Per-thread packing buffers, allocated on first use and kept (the pool's threads live for the
// process). Allocation failure is reported, never thrown: these run on pool threads.
struct Scratch {
  float* b_block = nullptr;  // KC x NC_MAX packed B
  float* a_panel = nullptr;  // KC x MR_MAX packed A
  float* c_tile = nullptr;   // MC_MAX x NC_MAX f32 partial sums when C is f16/bf16

  ~Scratch() {
    std::free(b_block);
    std::free(a_panel);
    std::free(c_tile);
  }

  static float* alloc(size_t floats) { return static_cast<float*>(std::aligned_alloc(64, floats * sizeof(float))); }

  bool ready(bool need_c_tile) {
    if (b_block == nullptr) b_block = alloc(KC * NC_MAX);
    if (a_panel == nullptr) a_panel = alloc(KC * MR_MAX);
    if (need_c_tile && c_tile == nullptr) c_tile = alloc(MC_MAX * NC_MAX);
    return b_block != nullptr && a_panel != nullptr && (!need_c_tile || c_tile != nullptr);
  }
};

thread_local Scratch tl_scratch;

template <typename V, int MR, int NV>
KVF_ALWAYS_INLINE void gemm_task(const Gemm& g, int64_t task, Scratch& s) {
  constexpr int NR = NV * static_cast<int>(sizeof(V) / sizeof(float));
  const int64_t nb = task % g.nblocks;
  const int64_t mb = (task / g.nblocks) % g.mblocks;
  const int64_t bi = task / (g.nblocks * g.mblocks);
  const int64_t i0 = mb * g.mc, i1 = std::min(g.m, i0 + g.mc);
  const int64_t j0 = nb * g.nc, j1 = std::min(g.n, j0 + g.nc);
  const int64_t a_off = bi * g.m * g.k;
  const int64_t b_off = g.broadcast_b ? 0 : bi * g.k * g.n;
  const int64_t c_off = bi * g.m * g.n + i0 * g.n + j0;

  const bool direct = g.ct == DType::f32;
  float* c = direct ? static_cast<float*>(g.c) + c_off : s.c_tile;
  const int64_t ldc = direct ? g.n : j1 - j0;

  for (int64_t pc = 0; pc < g.k; pc += KC) {
    const int64_t kc = std::min(KC, g.k - pc);
    for (int64_t j = j0; j < j1; j += NR) {
      const int valid = static_cast<int>(std::min<int64_t>(NR, j1 - j));
      float* panel = s.b_block + (j - j0) * KC;
      if (g.trans_b) {
        pack_rows<NR>(g.b, g.bt, b_off + j * g.k + pc, g.k, valid, kc, panel);
      } else {
        pack_cols<NR>(g.b, g.bt, b_off + pc * g.n + j, g.n, valid, kc, panel);
      }
    }
    for (int64_t i = i0; i < i1; i += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, i1 - i));
      pack_rows<MR>(g.a, g.at, a_off + i * g.k + pc, g.k, mr, kc, s.a_panel);
      for (int64_t j = j0; j < j1; j += NR) {
        const int nr = static_cast<int>(std::min<int64_t>(NR, j1 - j));
        micro_kernel<V, MR, NV>(kc, s.a_panel, s.b_block + (j - j0) * KC, c + (i - i0) * ldc + (j - j0), ldc, pc > 0,
                                mr, nr);
      }
    }
  }

  if (!direct) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = j0; j < j1; ++j) store_c(g.c, g.ct, c_off + (i - i0) * g.n + (j - j0), c[(i - i0) * ldc + (j - j0)]);
  }
}

KVF_CPU_CLONES void gemm_tasks(const Gemm& g, Shape shape, int64_t t0, int64_t t1, std::atomic<bool>* failed) {
  Scratch& s = tl_scratch;
  if (!s.ready(g.ct != DType::f32)) {
    failed->store(true);
    return;
  }
  for (int64_t t = t0; t < t1; ++t) {
    switch (shape) {
      case Shape::avx512: gemm_task<v16f, 12, 2>(g, t, s); break;
      case Shape::avx2: gemm_task<v8f, 6, 2>(g, t, s); break;
      case Shape::sse: gemm_task<v4f, 6, 2>(g, t, s); break;
    }
  }
}

Shape host_shape() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const Shape shape = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return Shape::avx512;
    if (__builtin_cpu_supports("x86-64-v3")) return Shape::avx2;
    return Shape::sse;
  }();
  return shape;
#else
  return Shape::sse;
#endif
}

int shape_mr(Shape s) { return s == Shape::avx512 ? 12 : 6; }
int shape_nr(Shape s) { return s == Shape::avx512 ? 32 : s == Shape::avx2 ? 16 : 8; }

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

Status run_gemm(Gemm g) {
  const Shape shape = host_shape();
  const int64_t mr = shape_mr(shape), nr = shape_nr(shape);
  // Largest blocks that fit the caches, then halve the larger side until every thread has
  // several tasks to balance over. Each task packs its own A panels (redundant across column
  // blocks) and B block (redundant across row blocks), so neither side should get thin. The
  // split never changes the results.
  g.nc = std::min(NC_MAX / nr * nr, round_up(g.n, nr));
  g.mc = std::min(MC_MAX / mr * mr, round_up(g.m, mr));
  const int64_t want = 4 * static_cast<int64_t>(cpu::num_threads());
  auto tasks = [&] { return g.batch * ((g.m + g.mc - 1) / g.mc) * ((g.n + g.nc - 1) / g.nc); };
  while (tasks() < want) {
    const bool can_n = g.nc >= 4 * nr, can_m = g.mc >= 4 * mr;
    if (can_n && (g.nc >= g.mc || !can_m)) {
      g.nc = round_up(g.nc / 2, nr);
    } else if (can_m) {
      g.mc = round_up(g.mc / 2, mr);
    } else {
      break;
    }
  }
  g.mblocks = (g.m + g.mc - 1) / g.mc;
  g.nblocks = (g.n + g.nc - 1) / g.nc;
  std::atomic<bool> failed{false};
  cpu::parallel_for(g.batch * g.mblocks * g.nblocks, 1,
                    [&](int64_t t0, int64_t t1) { gemm_tasks(g, shape, t0, t1, &failed); });
  if (failed.load()) return out_of_memory("matmul: could not allocate the CPU packing buffers");
  return Status::Ok();
}

// ---- GEMV ---------------------------------------------------------------------------------

// trans_b: out[i][j] = dot(x[i, :], w[j, :]) for weight rows j in [j0, j1), one weight row at a
// time, so the weights are one sequential stream that the hardware prefetchers follow at full
// bandwidth (reading 8 rows side by side, each only a few KB long, was ~15% slower: many short
// streams). x, at most 4 rows of a few KB, stays in L1 and is read again for every weight row.
// Each x row keeps two 16-lane chains: per 32-block, the first half into acc0 and the second
// into acc1; a trailing 16-block goes into acc0; then (acc0 + acc1) is reduced pairwise and the
// k % 16 tail added in order. 16-bit weights are read 32 at a time and split into even and odd
// elements (load32_split); x then comes with each whole 32-block stored as its 16 even elements
// followed by its 16 odd ones (split_blocks), so the widening needs no shuffles. The order
// depends on k only: the same for any m, thread count or ISA clone.
template <typename TB>
KVF_ALWAYS_INLINE void load32(const TB* p, v16f& lo, v16f& hi) {
  if constexpr (std::is_same_v<TB, float>) {
    lo = loadu<v16f>(p);
    hi = loadu<v16f>(p + 16);
  } else if constexpr (std::is_same_v<TB, bf16_t> || std::is_same_v<TB, f16_t>) {
    load32_split(p, lo, hi);
  } else {
    lo = concat(load8(p), load8(p + 8));
    hi = concat(load8(p + 16), load8(p + 24));
  }
}

template <typename TB>
KVF_ALWAYS_INLINE v16f load16(const TB* p) {
  if constexpr (std::is_same_v<TB, float>) {
    return loadu<v16f>(p);
  } else {
    return concat(load8(p), load8(p + 8));
  }
}

template <int M, typename TB>
KVF_ALWAYS_INLINE void gemv_trans_rows(const float* x, const TB* w, int64_t k, int64_t j0, int64_t j1, void* c,
                                       DType ct, int64_t c_off, int64_t ldc) {
  const int64_t k32 = k / 32 * 32;
  const bool block16 = k - k32 >= 16;
  const int64_t kv = k32 + (block16 ? 16 : 0);
  for (int64_t j = j0; j < j1; ++j) {
    const TB* row = w + j * k;
    v16f acc0[M], acc1[M];
    for (int i = 0; i < M; ++i) acc0[i] = acc1[i] = v16f{};
    for (int64_t p = 0; p < k32; p += 32) {
      v16f lo, hi;
      load32(row + p, lo, hi);
      for (int i = 0; i < M; ++i) {
        acc0[i] += loadu<v16f>(x + i * k + p) * lo;
        acc1[i] += loadu<v16f>(x + i * k + p + 16) * hi;
      }
    }
    if (block16) {
      const v16f v = load16(row + k32);
      for (int i = 0; i < M; ++i) acc0[i] += loadu<v16f>(x + i * k + k32) * v;
    }
    for (int i = 0; i < M; ++i) {
      float sum = hsum(acc0[i] + acc1[i]);
      for (int64_t p = kv; p < k; ++p) sum += x[i * k + p] * to_f32(row[p]);
      store_c(c, ct, c_off + i * ldc + j, sum);
    }
  }
}

// Rows of length k, each whole 32-block rewritten as its even elements then its odd ones; the
// k % 32 rest stays in place. The x operand of gemv_trans_rows for split 16-bit weights.
void split_blocks(float* rows, int64_t count, int64_t k) {
  const int64_t k32 = k / 32 * 32;
  float block[32];
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t p = 0; p < k32; p += 32) {
      float* x = rows + r * k + p;
      for (int q = 0; q < 16; ++q) {
        block[q] = x[2 * q];
        block[16 + q] = x[2 * q + 1];
      }
      std::memcpy(x, block, sizeof(block));
    }
  }
}

constexpr int64_t GEMV_COL_GROUP_MAX = 512;

// !trans_b: out[i][j] = sum_p x[i][p] * b[p][j] for a group of at most 512 columns [j0, j1).
// The group's sums live in an L1 array; B is read four rows at a time in runs of up to 2 KB (few
// page walks per byte, unlike narrow columns down a tall matrix), and each loaded sum takes the
// four FMAs in k order, so every element is still one sequential chain over k.
template <int M, typename TB>
KVF_ALWAYS_INLINE void gemv_cols(const float* x, const TB* b, int64_t k, int64_t n, int64_t j0, int64_t j1, void* c,
                                 DType ct, int64_t c_off) {
  alignas(64) float acc[M][GEMV_COL_GROUP_MAX];
  const int64_t w = j1 - j0, w8 = w / 8 * 8;
  for (int i = 0; i < M; ++i)
    for (int64_t v = 0; v < w; ++v) acc[i][v] = 0.0f;
  const TB* col = b + j0;
  int64_t p = 0;
  for (; p + 4 <= k; p += 4) {
    const TB* b0 = col + p * n;
    const TB* b1 = b0 + n;
    const TB* b2 = b1 + n;
    const TB* b3 = b2 + n;
    for (int64_t v = 0; v < w8; v += 8) {
      const v8f r0 = load8(b0 + v), r1 = load8(b1 + v), r2 = load8(b2 + v), r3 = load8(b3 + v);
      for (int i = 0; i < M; ++i) {
        const float* xi = x + i * k + p;
        v8f a = loadu<v8f>(acc[i] + v);
        a += r0 * xi[0];
        a += r1 * xi[1];
        a += r2 * xi[2];
        a += r3 * xi[3];
        storeu(acc[i] + v, a);
      }
    }
    for (int64_t v = w8; v < w; ++v) {
      for (int i = 0; i < M; ++i) {
        const float* xi = x + i * k + p;
        float a = acc[i][v];
        a += to_f32(b0[v]) * xi[0];
        a += to_f32(b1[v]) * xi[1];
        a += to_f32(b2[v]) * xi[2];
        a += to_f32(b3[v]) * xi[3];
        acc[i][v] = a;
      }
    }
  }
  for (; p < k; ++p) {
    const TB* b0 = col + p * n;
    for (int64_t v = 0; v < w8; v += 8) {
      const v8f r0 = load8(b0 + v);
      for (int i = 0; i < M; ++i) storeu(acc[i] + v, loadu<v8f>(acc[i] + v) + r0 * x[i * k + p]);
    }
    for (int64_t v = w8; v < w; ++v)
      for (int i = 0; i < M; ++i) acc[i][v] += to_f32(b0[v]) * x[i * k + p];
  }
  for (int i = 0; i < M; ++i)
    for (int64_t v = 0; v < w; ++v) store_c(c, ct, c_off + i * n + j0 + v, acc[i][v]);
}

template <int M, typename TB>
KVF_ALWAYS_INLINE void gemv_range_typed(const Gemm& g, const float* x, int64_t u0, int64_t u1) {
  // Work units: (batch, weight row) with trans_b, (batch, group of columns) without.
  const int64_t per_batch = g.trans_b ? g.n : (g.n + g.nc - 1) / g.nc;
  for (int64_t u = u0; u < u1;) {
    const int64_t bi = u / per_batch;
    const int64_t end = std::min(u1, (bi + 1) * per_batch);
    const int64_t lo = u - bi * per_batch, hi = end - bi * per_batch;
    const float* xb = x + bi * g.m * g.k;
    const TB* b = static_cast<const TB*>(g.b) + (g.broadcast_b ? 0 : bi * g.k * g.n);
    const int64_t c_off = bi * g.m * g.n;
    if (g.trans_b) {
      gemv_trans_rows<M>(xb, b, g.k, lo, hi, g.c, g.ct, c_off, g.n);
    } else {
      for (int64_t grp = lo; grp < hi; ++grp)
        gemv_cols<M>(xb, b, g.k, g.n, grp * g.nc, std::min(g.n, (grp + 1) * g.nc), g.c, g.ct, c_off);
    }
    u = end;
  }
}

template <int M>
KVF_ALWAYS_INLINE void gemv_range_m(const Gemm& g, const float* x, int64_t u0, int64_t u1) {
  switch (g.bt) {
    case DType::f16: return gemv_range_typed<M, f16_t>(g, x, u0, u1);
    case DType::bf16: return gemv_range_typed<M, bf16_t>(g, x, u0, u1);
    default: return gemv_range_typed<M, float>(g, x, u0, u1);
  }
}

KVF_CPU_CLONES void gemv_range(const Gemm& g, const float* x, int64_t u0, int64_t u1) {
  switch (g.m) {
    case 1: return gemv_range_m<1>(g, x, u0, u1);
    case 2: return gemv_range_m<2>(g, x, u0, u1);
    case 3: return gemv_range_m<3>(g, x, u0, u1);
    default: return gemv_range_m<4>(g, x, u0, u1);
  }
}

#if KVF_F16C_GEMV
__attribute__((target("arch=x86-64-v3"))) void gemv_range_f16c(const Gemm& g, const float* x, int64_t u0,
                                                               int64_t u1) {
  switch (g.m) {
    case 1: return gemv_range_typed<1, f16c_t>(g, x, u0, u1);
    case 2: return gemv_range_typed<2, f16c_t>(g, x, u0, u1);
    case 3: return gemv_range_typed<3, f16c_t>(g, x, u0, u1);
    default: return gemv_range_typed<4, f16c_t>(g, x, u0, u1);
  }
}
#endif

KVF_CPU_CLONES void widen_rows(const void* src, DType t, float* dst, int64_t count) {
  switch (t) {
    case DType::f16: return convert_row(static_cast<const f16_t*>(src), dst, count);
    case DType::bf16: return convert_row(static_cast<const bf16_t*>(src), dst, count);
    default: std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
  }
}

Status run_gemv(Gemm g) {
#if KVF_F16C_GEMV
  const bool f16c = g.bt == DType::f16 && host_shape() != Shape::sse;  // x86-64-v3 includes F16C
#else
  const bool f16c = false;
#endif
  // A is at most 4 rows per batch: widen it to f32 once, outside the hot loop (and reorder it
  // when 16-bit weights are split into even and odd elements, see gemv_trans_rows).
  const int64_t x_count = g.batch * g.m * g.k;
  const bool split = g.trans_b && (g.bt == DType::bf16 || (g.bt == DType::f16 && !f16c));
  std::vector<float> staged;
  const float* x = static_cast<const float*>(g.a);
  if (g.at != DType::f32 || split) {
    staged.resize(static_cast<size_t>(x_count));
    widen_rows(g.a, g.at, staged.data(), x_count);
    if (split) split_blocks(staged.data(), g.batch * g.m, g.k);
    x = staged.data();
  }
  // Without trans_b the columns go in groups: as wide as the L1 sums allow, narrower only when
  // the threads would otherwise run out of groups.
  const int64_t threads = cpu::num_threads();
  g.nc = std::clamp(round_up((g.n + 2 * threads - 1) / (2 * threads), 64), int64_t{64}, GEMV_COL_GROUP_MAX);
  const int64_t per_batch = g.trans_b ? g.n : (g.n + g.nc - 1) / g.nc;
  const int64_t unit_flops = g.m * g.k * (g.trans_b ? 1 : g.nc);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, unit_flops));
  cpu::parallel_for(g.batch * per_batch, grain, [&](int64_t u0, int64_t u1) {
#if KVF_F16C_GEMV
    if (f16c) return gemv_range_f16c(g, x, u0, u1);
#endif
    gemv_range(g, x, u0, u1);
  });
  return Status::Ok();
}

}  // namespace

Status matmul_cpu(const MatmulArgs& args) {
  for (DType t : {args.a_dtype, args.b_dtype, args.c_dtype}) {
    if (!is_float(t))
      return unsupported(std::string("matmul: dtype ") + dtype_name(t) + " is not supported (expected f32, f16 or bf16)");
  }
  if (args.batch < 0 || args.m < 0 || args.n < 0 || args.k < 0)
    return invalid_argument("matmul: batch, m, n and k must be non-negative");
  if (args.batch == 0 || args.m == 0 || args.n == 0) return Status::Ok();
  if (args.k == 0) {  // empty sum; all-zero bits are +0 in every float dtype
    std::memset(args.c, 0, static_cast<size_t>(args.batch * args.m * args.n) * dtype_size(args.c_dtype));
    return Status::Ok();
  }

  Gemm g{};
  g.a = args.a;
  g.at = args.a_dtype;
  g.b = args.b;
  g.bt = args.b_dtype;
  g.c = args.c;
  g.ct = args.c_dtype;
  g.batch = args.batch;
  g.m = args.m;
  g.n = args.n;
  g.k = args.k;
  g.trans_b = args.trans_b;
  g.broadcast_b = args.broadcast_b || args.batch == 1;
  if (g.broadcast_b) {  // A and C are contiguous over the batch: one matmul with batch * m rows
    g.m *= g.batch;
    g.batch = 1;
  }
  try {
    return g.m <= GEMV_MAX_ROWS ? run_gemv(g) : run_gemm(g);
  } catch (const std::bad_alloc&) {
    return out_of_memory("matmul: out of host memory");
  }
}

}  // namespace kvf
