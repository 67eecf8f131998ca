// CPU twin of paged_attention.cu (paged_attention.h has the contract).
//
// Validation first: everything that comes from data (q_start, table_start, kv_len, page ids,
// visible, first_visible) is checked before any slot is read, and a bad value is an invalid_argument status.
//
// Work item: (query row t, kv head g, chunk c). One item serves the `group` query heads that
// share kv head g, so each key and value row is read (and, for 16-bit pools, widened to f32)
// once per group. Slots are visited in blocks of kBlock: the block's scores for every head,
// then a flash-attention update per head (new running max, one rescale of the accumulator per
// block, p = exp(s - max), acc += p v). No scores buffer beyond one block.
//
// Decode (few rows x kv heads for the threads): the visible slots are also cut into chunks
// (flash-decoding); each chunk leaves (max, sum, acc) per head and a merge combines them.
//
// range_mass: kept in the first pass beside the running sum. Per head and range, a running mass
// takes the block's exp(s - max) terms of the range's slots (the same terms that weight the
// values, and that the running sum takes) and the same rescale by exp(old max - new max) as the
// sum and the accumulator; the decode split merges masses as it merges sums. At the end
// mass / sum is the range's probability: for ranges that cover every slot, the masses add up to
// sum / sum = 1 up to f32 rounding.
//
// attn_sum and kv_attn_sum: a second pass, parallel over (sequence, kv head, block of kSumBlock
// slots), so each item owns its slice of both outputs and nothing races. It recomputes the
// scores with the same arithmetic as the first pass (bitwise identical: every dot product has
// one fixed order) and adds exp(s - max) / sum with the row's final (max, sum), rows in order:
// deterministic for any thread count.
//
// Two-part (APE) attention (ctx_split): per work item, attend_range runs once over the row's
// context slots (scores scaled by 1 / T) into a second state, then over the other slots (before
// and after the context) into the first; store_two_part merges the two normalised outputs with
// the weights softmax([S T lse_c, lse_o]). The decode split keeps both states per chunk and merges
// each part over the chunks first. Sequences without a context run the one-part path.
//
// Vector code: GCC vector extensions (8 x f32) inside always-inline helpers, compiled into the
// KVF_CPU_CLONES functions for baseline x86-64, AVX2+FMA and AVX-512. Each dot product is one
// 8-lane FMA chain over head_dim reduced in a fixed pairwise order, then the head_dim % 8 tail;
// dotn runs N such chains side by side; the value accumulation keeps strips of the output row
// in registers across a block of slots.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "paged_attention.h"
#include "cpu_math.h"
#include "parallel.h"

#define KVF_ALWAYS_INLINE inline __attribute__((always_inline))

// Vector values only cross always-inlined helpers, never a real call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace kvf {
namespace {

using cpu::exp_f32;
using cpu::mask_if;
using cpu::select_f32;

typedef float v8f __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

constexpr int64_t kBlock = 32;       // slots per online-softmax step (a block of keys stays in L1)
constexpr int64_t kSumBlock = 256;   // slots of attn_sum owned by one second-pass item
constexpr int64_t kMinChunk = 256;   // decode split: no chunk shorter than this

// ---- Scalar helpers ------------------------------------------------------------------------

// q and out are touched once per work item, so their dtype is a run-time switch rather than
// more template instantiations.
void load_row(const void* base, DType t, int64_t offset, int64_t n, float* dst) {
  switch (t) {
    case DType::f16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(static_cast<const f16_t*>(base)[offset + i]);
      break;
    case DType::bf16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<const bf16_t*>(base)[offset + i]);
      break;
    default: std::memcpy(dst, static_cast<const float*>(base) + offset, static_cast<size_t>(n) * sizeof(float)); break;
  }
}

// dst = src * mul, rounded once to the dtype (mul = 1 / sum, or 0 for a row that sees nothing).
void store_row(void* base, DType t, int64_t offset, int64_t n, const float* src, float mul) {
  switch (t) {
    case DType::f16:
      for (int64_t i = 0; i < n; ++i) static_cast<f16_t*>(base)[offset + i] = f32_to_f16(src[i] * mul);
      break;
    case DType::bf16:
      for (int64_t i = 0; i < n; ++i) static_cast<bf16_t*>(base)[offset + i] = f32_to_bf16(src[i] * mul);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) static_cast<float*>(base)[offset + i] = src[i] * mul;
      break;
  }
}

// ---- Vector helpers (always inlined into the cloned functions) ----------------------------

template <typename V>
KVF_ALWAYS_INLINE V loadu(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

KVF_ALWAYS_INLINE void storeu(float* p, const v8f& v) { __builtin_memcpy(p, &v, sizeof(v8f)); }

// 8 consecutive pool elements widened to f32, bit-identical to to_f32.
KVF_ALWAYS_INLINE v8f load8(const float* p) { return loadu<v8f>(p); }

KVF_ALWAYS_INLINE v8f load8(const bf16_t* p) {
  v8u16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  return reinterpret_cast<v8f>(__builtin_convertvector(h, v8u32) << 16);
}

// f16 -> f32 on integer lanes (no F16C, so every clone shares it): exponent and mantissa moved
// into place and rebiased; inf/NaN get the rest of the f32 exponent; zeros and subnormals are
// renormalised exactly by subtracting 2^-14.
KVF_ALWAYS_INLINE v8f load8(const f16_t* p) {
  v8u16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  const v8u32 u = __builtin_convertvector(h, v8u32);
  const v8u32 sign = (u & 0x8000u) << 16;
  v8u32 o = (u & 0x7fffu) << 13;
  const v8u32 exp = o & 0x0f800000u;
  o += (127u - 15u) << 23;
  o = exp == 0x0f800000u ? o + ((128u - 16u) << 23) : o;
  const v8f magic = reinterpret_cast<v8f>(v8u32{} + (113u << 23));  // 2^-14
  const v8u32 renorm = reinterpret_cast<v8u32>(reinterpret_cast<v8f>(o + (1u << 23)) - magic);
  o = exp == 0u ? renorm : o;
  return reinterpret_cast<v8f>(o | sign);
}

template <typename T>
KVF_ALWAYS_INLINE void widen_row(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) storeu(dst + i, load8(src + i));
  for (; i < n; ++i) dst[i] = to_f32(src[i]);
}

// Pairwise: (l0 + l4) + (l2 + l6) + ((l1 + l5) + (l3 + l7)).
KVF_ALWAYS_INLINE float hsum(const v8f& v) {
  const float a = (v[0] + v[4]) + (v[2] + v[6]);
  const float b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

KVF_ALWAYS_INLINE float dot1(const float* q, const float* k, int64_t d) {
  v8f acc = {};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) acc += loadu<v8f>(q + i) * loadu<v8f>(k + i);
  float s = hsum(acc);
  for (; i < d; ++i) s += q[i] * k[i];
  return s;
}

// Dot products with N key rows side by side (N independent FMA chains, one query load per N
// FMAs); each is computed exactly as dot1 computes it.
template <int N>
KVF_ALWAYS_INLINE void dotn(const float* q, const float* const* k, int64_t d, float* out) {
  v8f acc[N];
  for (int r = 0; r < N; ++r) acc[r] = v8f{};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    const v8f qv = loadu<v8f>(q + i);
    for (int r = 0; r < N; ++r) acc[r] += qv * loadu<v8f>(k[r] + i);
  }
  for (int r = 0; r < N; ++r) {
    float s = hsum(acc[r]);
    for (int64_t e = i; e < d; ++e) s += q[e] * k[r][e];
    out[r] = s;
  }
}

// scores[j] = scale * (q . rows[j]) for j < n.
KVF_ALWAYS_INLINE void block_scores(const float* q, const float* const* rows, int64_t n, int64_t d, float scale,
                                    float* scores) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) dotn<8>(q, rows + j, d, scores + j);
  for (; j + 4 <= n; j += 4) dotn<4>(q, rows + j, d, scores + j);
  for (; j < n; ++j) scores[j] = dot1(q, rows[j], d);
  for (j = 0; j < n; ++j) scores[j] *= scale;
}

// acc[i0 .. i0 + 8W) += sum_j p[j] * rows[j][...]: the strip stays in W registers over the
// block's slots (W independent FMA chains, one value load per FMA).
template <int W>
KVF_ALWAYS_INLINE void accumulate_strip(float* acc, const float* p, const float* const* rows, int64_t n, int64_t i0) {
  v8f a[W];
  for (int w = 0; w < W; ++w) a[w] = loadu<v8f>(acc + i0 + 8 * w);
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const float* r = rows[j] + i0;
    for (int w = 0; w < W; ++w) a[w] += pj * loadu<v8f>(r + 8 * w);
  }
  for (int w = 0; w < W; ++w) storeu(acc + i0 + 8 * w, a[w]);
}

// acc += sum_j p[j] * rows[j] over the block.
KVF_ALWAYS_INLINE void accumulate(float* acc, const float* p, const float* const* rows, int64_t n, int64_t d) {
  int64_t i = 0;
  for (; i + 64 <= d; i += 64) accumulate_strip<8>(acc, p, rows, n, i);
  for (; i + 8 <= d; i += 8) accumulate_strip<1>(acc, p, rows, n, i);
  for (; i < d; ++i) {
    float a = acc[i];
    for (int64_t j = 0; j < n; ++j) a += p[j] * rows[j][i];
    acc[i] = a;
  }
}

// ---- Layout --------------------------------------------------------------------------------

struct Layout {
  const PagedAttentionArgs& a;
  int64_t group;            // query heads per kv head
  int64_t row_stride;       // kv_heads * head_dim: one slot of the pool
  int64_t ranges;           // ranges of range_mass per sequence; 0 when range_mass is off
  std::vector<int32_t> row_seq;  // sequence of every query row
};

// Element offsets in the pools of slots j0 .. j0+n-1 of sequence s, kv head g: one division
// per block, then the page walk. With a value page table, voffs gets the values' offsets; with
// page_rows, a hole gets voffs -1 (and *holes counts them).
inline void slot_offsets(const Layout& L, int64_t s, int64_t j0, int64_t n, int64_t g, int64_t* offs, int64_t* voffs = nullptr,
                         int64_t* holes = nullptr) {
  const PagedAttentionArgs& a = L.a;
  const int32_t* pages = a.page_table + a.table_start[s];
  const int32_t* vpages = a.v_page_table != nullptr ? a.v_page_table + a.table_start[s] : pages;
  const int32_t* rows = a.page_rows != nullptr ? a.page_rows + a.table_start[s] : nullptr;
  int64_t p = j0 / a.page_size, r = j0 % a.page_size;
  if (holes) *holes = 0;
  for (int64_t jj = 0; jj < n; ++jj) {
    offs[jj] = (static_cast<int64_t>(pages[p]) * a.page_size + r) * L.row_stride + g * a.head_dim;
    if (voffs) {
      const bool hole = rows != nullptr && r >= rows[p];
      voffs[jj] = hole ? -1 : (static_cast<int64_t>(vpages[p]) * a.page_size + r) * L.row_stride + g * a.head_dim;
      if (hole) ++*holes;
    }
    if (++r == a.page_size) r = 0, ++p;
  }
}

inline bool has_holes_or_split(const PagedAttentionArgs& a) { return a.v_page_table != nullptr || a.page_rows != nullptr; }

// First slot row t sees (the sliding window's lower bound; 0 without one).
inline int64_t first_visible(const PagedAttentionArgs& a, int64_t t) { return a.first_visible != nullptr ? a.first_visible[t] : 0; }

// Per-thread scratch for one parallel_for chunk.
struct Scratch {
  std::vector<float> q, acc, m, l, mass, scores, kbuf, vbuf;
  std::vector<float> acc_c, m_c, l_c, out_row;  // two-part attention: the context part's state
  std::vector<const float*> krows, vrows;
  std::vector<int64_t> offs, voffs, next_offs;
  std::vector<float> zeros;  // the value row a hole reads (its weight is 0; pool rows may hold NaN)
  Scratch(int64_t group, int64_t d, int64_t block, int64_t ranges) {
    mass.resize(group * ranges);
    voffs.resize(block);
    zeros.assign(d, 0.0f);
    q.resize(group * d);
    acc.resize(group * d);
    m.resize(group);
    l.resize(group);
    scores.resize(group * block);
    kbuf.resize(block * d);
    vbuf.resize(block * d);
    krows.resize(block);
    vrows.resize(block);
    offs.resize(block);
    next_offs.resize(block);
    acc_c.resize(group * d);
    m_c.resize(group);
    l_c.resize(group);
    out_row.resize(d);
  }
};

// Pointers to n slots' rows as f32: into the pool for f32, else widened into buf.
template <typename KV>
KVF_ALWAYS_INLINE void gather_rows(const KV* pool, const int64_t* offs, int64_t n, int64_t d, float* buf,
                                   const float** rows) {
  for (int64_t jj = 0; jj < n; ++jj) {
    const KV* src = pool + offs[jj];
    if constexpr (std::is_same_v<KV, float>) {
      rows[jj] = src;
    } else {
      widen_row(src, buf + jj * d, d);
      rows[jj] = buf + jj * d;
    }
  }
}

// Asks for n rows of d elements ahead of their use. A kv head's rows are 256-byte pieces
// scattered over the pool's pages (one slice of every slot, pages in table order), a pattern the
// hardware prefetchers do not follow; in decode they come from DRAM, the weights streamed
// through the caches since the last step having evicted them.
template <typename KV>
KVF_ALWAYS_INLINE void prefetch_rows(const KV* pool, const int64_t* offs, int64_t n, int64_t d) {
  const int64_t bytes = d * static_cast<int64_t>(sizeof(KV));
  for (int64_t jj = 0; jj < n; ++jj) {
    const char* row = reinterpret_cast<const char*>(pool + offs[jj]);
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b);
    __builtin_prefetch(row + bytes - 1);  // a row not aligned to 64 bytes ends in one more line
  }
}

// ---- Pass 1: attention ---------------------------------------------------------------------

// Slots [j_begin, j_end) of row t for the heads of kv head g: leaves (m, l, acc) per head in
// the scratch (m = -inf, l = 0, acc = 0 for an empty range), and with range_mass, the unscaled
// mass of every range per head (l's share of each range). The q rows are in scratch.q. Scores
// are `scale` * q . k; with fresh = false the state already in the scratch is carried on (one
// softmax over two disjoint ranges).
template <typename KV>
KVF_ALWAYS_INLINE void attend_range(const Layout& L, int64_t s, int64_t g, int64_t j_begin, int64_t j_end, Scratch& w,
                                    float scale, bool fresh = true) {
  const PagedAttentionArgs& a = L.a;
  const int64_t d = a.head_dim, G = L.group;
  const KV* kp = static_cast<const KV*>(a.k_pool);
  const KV* vp = static_cast<const KV*>(a.v_pool);
  if (fresh) {
    std::fill(w.acc.begin(), w.acc.end(), 0.0f);
    std::fill(w.m.begin(), w.m.end(), -INFINITY);
    std::fill(w.l.begin(), w.l.end(), 0.0f);
    std::fill(w.mass.begin(), w.mass.end(), 0.0f);
  }
  const int64_t R = L.ranges;
  const int32_t* ranges = R > 0 ? a.mass_ranges + s * R * 2 : nullptr;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlock) {
    const int64_t n = std::min(kBlock, j_end - j0);
    const bool paged_values = has_holes_or_split(a);
    int64_t holes = 0;
    slot_offsets(L, s, j0, n, g, w.offs.data(), paged_values ? w.voffs.data() : nullptr, &holes);
    if (holes == n) continue;  // nothing but holes
    // While this block's scores are computed: its values and the next block's keys load.
    if (!paged_values) prefetch_rows(vp, w.offs.data(), n, d);
    const int64_t next_n = std::min(kBlock, j_end - (j0 + kBlock));
    if (next_n > 0) {
      slot_offsets(L, s, j0 + kBlock, next_n, g, w.next_offs.data());
      prefetch_rows(kp, w.next_offs.data(), next_n, d);
    }
    gather_rows(kp, w.offs.data(), n, d, w.kbuf.data(), w.krows.data());
    for (int64_t hh = 0; hh < G; ++hh) block_scores(&w.q[hh * d], w.krows.data(), n, d, scale, &w.scores[hh * kBlock]);
    if (!paged_values) {
      gather_rows(vp, w.offs.data(), n, d, w.vbuf.data(), w.vrows.data());
    } else {
      for (int64_t jj = 0; jj < n; ++jj) {
        if (w.voffs[jj] >= 0) {
          gather_rows(vp, &w.voffs[jj], 1, d, w.vbuf.data() + jj * d, &w.vrows[jj]);
          continue;
        }
        w.vrows[jj] = w.zeros.data();
        for (int64_t hh = 0; hh < G; ++hh) w.scores[hh * kBlock + jj] = -INFINITY;
      }
    }
    for (int64_t hh = 0; hh < G; ++hh) {
      float* sc = &w.scores[hh * kBlock];
      float block_max = -INFINITY;
      for (int64_t jj = 0; jj < n; ++jj) block_max = std::max(block_max, sc[jj]);
      const float m_new = std::max(w.m[hh], block_max);
      const float alpha = exp_f32(w.m[hh] - m_new);  // 0 on the first block (m = -inf)
      for (int64_t jj = 0; jj < n; ++jj) sc[jj] = exp_f32(sc[jj] - m_new);
      float sum = 0.0f;
      for (int64_t jj = 0; jj < n; ++jj) sum += sc[jj];
      float* acc = &w.acc[hh * d];
      if (alpha != 1.0f) {
        for (int64_t i = 0; i < d; ++i) acc[i] *= alpha;
      }
      accumulate(acc, sc, w.vrows.data(), n, d);
      w.l[hh] = w.l[hh] * alpha + sum;
      w.m[hh] = m_new;
      // Each range's share of this block's terms (holes are exp(-inf) = 0), rescaled as l is.
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = std::max<int64_t>(ranges[2 * r], j0) - j0, e = std::min<int64_t>(ranges[2 * r + 1], j0 + n) - j0;
        float part = 0.0f;
        for (int64_t jj = b; jj < e; ++jj) part += sc[jj];
        w.mass[hh * R + r] = w.mass[hh * R + r] * alpha + part;
      }
    }
  }
}

// Sequence s's context for two-part attention, or null when it has none (or the mode is off).
inline const ContextSplit* context_of(const PagedAttentionArgs& a, int64_t s) {
  if (a.ctx_split == nullptr) return nullptr;
  const ContextSplit* c = a.ctx_split + s;
  return c->begin < c->end ? c : nullptr;
}

// Two-part attention over slots [jb, je): the context's share of them into (m_c, l_c, acc_c),
// scores scaled by 1 / T; the rest (before and after it) into (m, l, acc), one softmax.
template <typename KV>
KVF_ALWAYS_INLINE void attend_two_part(const Layout& L, int64_t s, int64_t g, int64_t jb, int64_t je, const ContextSplit& c,
                                       Scratch& w) {
  const int64_t cb = std::min<int64_t>(std::max<int64_t>(c.begin, jb), je);
  const int64_t ce = std::min<int64_t>(std::max<int64_t>(c.end, cb), je);
  attend_range<KV>(L, s, g, cb, ce, w, L.a.scale / c.temperature);
  std::swap(w.m, w.m_c);
  std::swap(w.l, w.l_c);
  std::swap(w.acc, w.acc_c);
  attend_range<KV>(L, s, g, jb, cb, w, L.a.scale);
  attend_range<KV>(L, s, g, ce, je, w, L.a.scale, false);
}

// Row t, head h of out from the two parts' states: o = w_c acc_c / l_c + w_o acc_o / l_o with
// [w_c, w_o] = softmax([S T lse_c, lse_o]), lse = m + log l (paged_attention.h). A part with
// l = 0 (no visible slot) weighs 0; a row that sees nothing gets zeros.
inline void store_two_part(const PagedAttentionArgs& a, int64_t t, int64_t h, const ContextSplit& c, float m_c, float l_c,
                           const float* acc_c, float m_o, float l_o, const float* acc_o, float* row) {
  const int64_t d = a.head_dim;
  const float x_c = l_c > 0.0f ? c.scale * c.temperature * (m_c + std::log(l_c)) : -INFINITY;
  const float x_o = l_o > 0.0f ? m_o + std::log(l_o) : -INFINITY;
  const float x = std::max(x_c, x_o);
  float w_c = 0.0f, w_o = 0.0f;
  if (x != -INFINITY) {
    const float e_c = x_c == -INFINITY ? 0.0f : std::exp(x_c - x), e_o = x_o == -INFINITY ? 0.0f : std::exp(x_o - x);
    if (l_c > 0.0f) w_c = e_c / (e_c + e_o) / l_c;
    if (l_o > 0.0f) w_o = e_o / (e_c + e_o) / l_o;
  }
  for (int64_t i = 0; i < d; ++i) row[i] = w_c * acc_c[i] + w_o * acc_o[i];
  store_row(a.out, a.out_dtype, (t * a.heads + h) * d, d, row, 1.0f);
}

// Per (row, kv head, chunk) partial state in the decode split: per head [m, l, acc[d], mass[R]].
struct Split {
  int64_t chunks = 1;
  int64_t chunk_len = 0;
  int64_t stride = 0;          // d + 2 + R: one head's partial state; two-part: 2 (d + 2), other then context
  std::vector<float> partial;  // (total_q, kv_heads, chunks, group, stride)
};

// Row t, head h's masses: mass / l, or zeros for a row that sees nothing.
inline void store_mass(const Layout& L, int64_t t, int64_t h, const float* mass, float l) {
  const int64_t R = L.ranges;
  float* dst = L.a.range_mass + (t * L.a.heads + h) * R;
  for (int64_t r = 0; r < R; ++r) dst[r] = l > 0.0f ? mass[r] / l : 0.0f;
}

// Items [u0, u1) of (row, kv head, chunk). Without a split, each item writes its rows of out
// (and the (max, sum) per head into stats when attn_sum needs them).
template <typename KV>
KVF_CPU_CLONES void attend_items(const Layout& L, Split& sp, float* stats, int64_t u0, int64_t u1) {
  const PagedAttentionArgs& a = L.a;
  const int64_t d = a.head_dim, G = L.group;
  Scratch w(G, d, kBlock, L.ranges);
  const int64_t R = L.ranges;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t c = u % sp.chunks;
    const int64_t tg = u / sp.chunks;
    const int64_t g = tg % a.kv_heads, t = tg / a.kv_heads;
    const int64_t s = L.row_seq[t];
    const int64_t vis = a.visible[t];
    const int64_t jb = std::min(vis, first_visible(a, t) + c * sp.chunk_len);
    const int64_t je = sp.chunks == 1 ? vis : std::min(vis, jb + sp.chunk_len);
    const int64_t h0 = g * G;
    load_row(a.q, a.q_dtype, (t * a.heads + h0) * d, G * d, w.q.data());
    if (const ContextSplit* ctx = context_of(a, s)) {
      attend_two_part<KV>(L, s, g, jb, je, *ctx, w);
      for (int64_t hh = 0; hh < G; ++hh) {
        if (sp.chunks == 1) {
          store_two_part(a, t, h0 + hh, *ctx, w.m_c[hh], w.l_c[hh], &w.acc_c[hh * d], w.m[hh], w.l[hh], &w.acc[hh * d], w.out_row.data());
          continue;
        }
        float* part = &sp.partial[u * G * sp.stride] + hh * sp.stride;
        part[0] = w.m[hh];
        part[1] = w.l[hh];
        std::copy(&w.acc[hh * d], &w.acc[hh * d] + d, part + 2);
        part[d + 2] = w.m_c[hh];
        part[d + 3] = w.l_c[hh];
        std::copy(&w.acc_c[hh * d], &w.acc_c[hh * d] + d, part + d + 4);
      }
      continue;
    }
    attend_range<KV>(L, s, g, jb, je, w, a.scale);
    if (sp.chunks == 1) {
      for (int64_t hh = 0; hh < G; ++hh) {
        const float l = w.l[hh];
        store_row(a.out, a.out_dtype, (t * a.heads + h0 + hh) * d, d, &w.acc[hh * d], l > 0.0f ? 1.0f / l : 0.0f);
        if (R > 0) store_mass(L, t, h0 + hh, &w.mass[hh * R], l);
        if (stats != nullptr) {
          stats[2 * (t * a.heads + h0 + hh)] = w.m[hh];
          stats[2 * (t * a.heads + h0 + hh) + 1] = l;
        }
      }
    } else {
      float* dst = &sp.partial[u * G * sp.stride];
      for (int64_t hh = 0; hh < G; ++hh) {
        float* part = dst + hh * sp.stride;
        part[0] = w.m[hh];
        part[1] = w.l[hh];
        std::copy(&w.acc[hh * d], &w.acc[hh * d] + d, part + 2);
        if (R > 0) std::copy(&w.mass[hh * R], &w.mass[hh * R] + R, part + 2 + d);  // (no mass vector without ranges)
      }
    }
  }
}

// Decode split: merges the chunks of (row, kv head) items [v0, v1) into out (and stats).
KVF_CPU_CLONES void merge_chunks(const Layout& L, const Split& sp, float* stats, int64_t v0, int64_t v1) {
  const PagedAttentionArgs& a = L.a;
  const int64_t d = a.head_dim, G = L.group, R = L.ranges;
  std::vector<float> acc(d), mass(R), acc_c(d), row(d);
  for (int64_t v = v0; v < v1; ++v) {
    const int64_t g = v % a.kv_heads, t = v / a.kv_heads;
    const ContextSplit* ctx = context_of(a, L.row_seq[t]);
    for (int64_t hh = 0; hh < G; ++hh) {
      const float* part = &sp.partial[(v * sp.chunks) * G * sp.stride + hh * sp.stride];
      const int64_t stride = G * sp.stride;  // from one chunk to the next
      if (ctx != nullptr) {
        // Each part merged over the chunks on its own, then the two parts.
        float m[2], l[2];
        for (int k = 0; k < 2; ++k) {
          const float* pk = part + k * (d + 2);
          float* dst = k == 0 ? acc.data() : acc_c.data();
          m[k] = -INFINITY;
          for (int64_t c = 0; c < sp.chunks; ++c) m[k] = std::max(m[k], pk[c * stride]);
          l[k] = 0.0f;
          std::fill(dst, dst + d, 0.0f);
          if (m[k] == -INFINITY) continue;
          for (int64_t c = 0; c < sp.chunks; ++c) {
            const float* p = pk + c * stride;
            const float wgt = exp_f32(p[0] - m[k]);
            l[k] += p[1] * wgt;
            for (int64_t i = 0; i < d; ++i) dst[i] += p[2 + i] * wgt;
          }
        }
        store_two_part(a, t, g * G + hh, *ctx, m[1], l[1], acc_c.data(), m[0], l[0], acc.data(), row.data());
        continue;
      }
      float m = -INFINITY;
      for (int64_t c = 0; c < sp.chunks; ++c) m = std::max(m, part[c * stride]);
      float l = 0.0f;
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(mass.begin(), mass.end(), 0.0f);
      if (m != -INFINITY) {
        for (int64_t c = 0; c < sp.chunks; ++c) {
          const float* p = part + c * stride;
          const float wgt = exp_f32(p[0] - m);  // 0 for an empty chunk (m = -inf)
          l += p[1] * wgt;
          for (int64_t i = 0; i < d; ++i) acc[i] += p[2 + i] * wgt;
          for (int64_t r = 0; r < R; ++r) mass[r] += p[2 + d + r] * wgt;
        }
      }
      const int64_t h = g * G + hh;
      store_row(a.out, a.out_dtype, (t * a.heads + h) * d, d, acc.data(), l > 0.0f ? 1.0f / l : 0.0f);
      if (R > 0) store_mass(L, t, h, mass.data(), l);
      if (stats != nullptr) {
        stats[2 * (t * a.heads + h)] = m;
        stats[2 * (t * a.heads + h) + 1] = l;
      }
    }
  }
}

// ---- Pass 2: attn_sum, kv_attn_sum ---------------------------------------------------------

struct SumItem {
  int32_t seq;
  int32_t block;  // slots [block * kSumBlock, ...)
};

template <typename KV>
KVF_CPU_CLONES void attn_sum_items(const Layout& L, const std::vector<SumItem>& items, const float* stats, int64_t u0,
                                   int64_t u1) {
  const PagedAttentionArgs& a = L.a;
  const int64_t d = a.head_dim, G = L.group;
  const KV* kp = static_cast<const KV*>(a.k_pool);
  std::vector<float> q(d), scores(kSumBlock), kbuf(kSumBlock * d);
  std::vector<const float*> krows(kSumBlock);
  std::vector<int64_t> offs(kSumBlock), voffs(kSumBlock);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t g = u % a.kv_heads;
    const SumItem it = items[u / a.kv_heads];
    const int64_t s = it.seq;
    const int64_t j0 = it.block * kSumBlock;
    const int64_t n = std::min<int64_t>(kSumBlock, a.kv_len[s] - j0);
    int64_t holes = 0;
    slot_offsets(L, s, j0, n, g, offs.data(), voffs.data(), &holes);
    gather_rows(kp, offs.data(), n, d, kbuf.data(), krows.data());
    const int64_t q0 = a.q_start[s], rows = a.q_start[s + 1] - q0;
    const float decay = a.col_log_decay != nullptr ? a.col_log_decay[s] : 0.0f;
    const int64_t c0 = rows > 0 ? static_cast<int64_t>(a.visible[q0]) - 1 : 0;
    const int64_t last = a.col_last_rows != nullptr && a.col_last_rows[s] > 0 ? a.col_last_rows[s] : rows;
    for (int64_t t = std::max<int64_t>(q0, q0 + rows - last); t < a.q_start[s + 1]; ++t) {
      // This row's slots in the block: [jf, nt) of it.
      const int64_t nt = std::min<int64_t>(n, a.visible[t] - j0);
      const int64_t jf = std::max<int64_t>(0, first_visible(a, t) - j0);
      if (nt <= jf) continue;
      const int64_t i = t - q0;
      for (int64_t hh = 0; hh < G; ++hh) {
        const int64_t h = g * G + hh;
        const float m = stats[2 * (t * a.heads + h)];
        const float inv_l = 1.0f / stats[2 * (t * a.heads + h) + 1];  // l >= 1: the row sees a slot
        load_row(a.q, a.q_dtype, (t * a.heads + h) * d, d, q.data());
        block_scores(q.data(), krows.data() + jf, nt - jf, d, a.scale, scores.data());
        float* dst = a.attn_sum != nullptr ? a.attn_sum + (s * a.heads + h) * a.max_kv + j0 + jf : nullptr;
        float* kv_dst = a.kv_attn_sum != nullptr ? a.kv_attn_sum + (s * a.kv_heads + g) * a.max_kv + j0 + jf : nullptr;
        for (int64_t jj = 0; jj < nt - jf; ++jj) {
          if (holes != 0 && voffs[jf + jj] < 0) continue;
          float e = scores[jj] - m;
          if (decay != 0.0f) {
            const int64_t j = j0 + jf + jj;
            e += decay * static_cast<float>(j < c0 ? rows - 1 - i : i - (j - c0));
          }
          const float p = exp_f32(e) * inv_l;
          if (dst != nullptr) dst[jj] += p;
          if (kv_dst != nullptr) kv_dst[jj] += p;
        }
      }
    }
  }
}

// ---- Validation ----------------------------------------------------------------------------

std::string at(const char* what, int64_t i) { return std::string(what) + "[" + std::to_string(i) + "]"; }

// max_span: the most slots one row sees (visible - first_visible).
Status validate(const PagedAttentionArgs& a, Layout& L, int64_t* max_span) {
  const std::string op = "paged_attention: ";
  if (a.heads < 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0)
    return invalid_argument(op + "kv_heads (" + std::to_string(a.kv_heads) + ") must divide heads (" + std::to_string(a.heads) + ")");
  if (a.page_size <= 0) return invalid_argument(op + "page_size must be positive");
  if (!is_float(a.q_dtype) || !is_float(a.out_dtype))
    return unsupported(op + "q and out must be f32, f16 or bf16 (got " + dtype_name(a.q_dtype) + ", " + dtype_name(a.out_dtype) + ")");
  if (a.head_dim < 0 || a.num_pages < 0 || a.seqs < 0 || a.total_q < 0 || a.max_kv < 0 || a.num_ranges < 0)
    return invalid_argument(op + "negative size");
  if (L.ranges > 0 && a.mass_ranges == nullptr) return invalid_argument(op + "range_mass needs mass_ranges");
  if (a.ctx_split != nullptr && (a.attn_sum != nullptr || a.kv_attn_sum != nullptr || L.ranges > 0))
    return unsupported(op + "scores (attn_sum, kv_attn_sum, range_mass) are not defined for two-part (ctx_split) attention");
  if (a.q_start[0] != 0) return invalid_argument(op + "q_start[0] must be 0, got " + std::to_string(a.q_start[0]));
  if (a.table_start[0] < 0) return invalid_argument(op + "table_start[0] is negative");
  L.row_seq.assign(a.total_q, 0);
  *max_span = 0;
  for (int64_t s = 0; s < a.seqs; ++s) {
    const int64_t q0 = a.q_start[s], q1 = a.q_start[s + 1];
    if (q1 < q0 || q1 > a.total_q)
      return invalid_argument(op + at("q_start", s + 1) + " = " + std::to_string(q1) + " is outside [" + std::to_string(q0) +
                              ", " + std::to_string(a.total_q) + "]");
    const int64_t t0 = a.table_start[s], t1 = a.table_start[s + 1];
    if (t1 < t0) return invalid_argument(op + at("table_start", s + 1) + " is below " + at("table_start", s));
    if (t1 > a.page_table_len)
      return invalid_argument(op + at("table_start", s + 1) + " = " + std::to_string(t1) + " is past the page table (" +
                              std::to_string(a.page_table_len) + " entries)");
    const int64_t kv = a.kv_len[s];
    if (kv < 0 || kv > (t1 - t0) * a.page_size)
      return invalid_argument(op + "sequence " + std::to_string(s) + ": kv_len " + std::to_string(kv) + " is outside its page table [0, " +
                              std::to_string((t1 - t0) * a.page_size) + "] (" + std::to_string(t1 - t0) + " pages of " +
                              std::to_string(a.page_size) + ")");
    if ((a.attn_sum != nullptr || a.kv_attn_sum != nullptr) && kv > a.max_kv)
      return invalid_argument(op + "sequence " + std::to_string(s) + ": kv_len " + std::to_string(kv) + " exceeds max_kv " +
                              std::to_string(a.max_kv) + " of attn_sum");
    for (int64_t r = 0; r < L.ranges; ++r) {
      const int64_t b = a.mass_ranges[(s * L.ranges + r) * 2], e = a.mass_ranges[(s * L.ranges + r) * 2 + 1];
      if (b < 0 || e < b)
        return invalid_argument(op + "sequence " + std::to_string(s) + ": range " + std::to_string(r) + " [" + std::to_string(b) +
                                ", " + std::to_string(e) + ") of mass_ranges is not a range of slots (0 <= begin <= end)");
    }
    if (a.ctx_split != nullptr) {
      const ContextSplit& c = a.ctx_split[s];
      if (!(c.temperature > 0.0f) || !std::isfinite(c.temperature) || !std::isfinite(c.scale))
        return invalid_argument(op + "sequence " + std::to_string(s) + ": ctx_split temperature must be positive and finite, scale finite (got " +
                                std::to_string(c.temperature) + ", " + std::to_string(c.scale) + ")");
    }
    const int64_t used_pages = (kv + a.page_size - 1) / a.page_size;
    for (int64_t i = 0; i < used_pages; ++i) {
      const int64_t page = a.page_table[t0 + i];
      if (page < 0 || page >= a.num_pages)
        return invalid_argument(op + "sequence " + std::to_string(s) + ": page " + std::to_string(i) + " is pool page " +
                                std::to_string(page) + ", outside the pool [0, " + std::to_string(a.num_pages) + ")");
      const int64_t vpage = a.v_page_table != nullptr ? a.v_page_table[t0 + i] : page;
      if (vpage < 0 || vpage >= a.num_pages)
        return invalid_argument(op + "sequence " + std::to_string(s) + ": value page " + std::to_string(i) + " is pool page " +
                                std::to_string(vpage) + ", outside the pool [0, " + std::to_string(a.num_pages) + ")");
      if (a.page_rows != nullptr && (a.page_rows[t0 + i] < 0 || a.page_rows[t0 + i] > a.page_size))
        return invalid_argument(op + at("page_rows", t0 + i) + " = " + std::to_string(a.page_rows[t0 + i]) + " is outside [0, " +
                                std::to_string(a.page_size) + "]");
    }
    for (int64_t t = q0; t < q1; ++t) {
      const int64_t v = a.visible[t];
      if (v < 0 || v > kv)
        return invalid_argument(op + at("visible", t) + " = " + std::to_string(v) + " is outside [0, " + std::to_string(kv) +
                                "] (kv_len of sequence " + std::to_string(s) + ")");
      const int64_t f = first_visible(a, t);
      if (f < 0 || f > v)
        return invalid_argument(op + at("first_visible", t) + " = " + std::to_string(f) + " is outside [0, " + std::to_string(v) +
                                "] (visible[" + std::to_string(t) + "])");
      L.row_seq[t] = static_cast<int32_t>(s);
      *max_span = std::max(*max_span, v - f);
    }
  }
  if (a.q_start[a.seqs] != a.total_q)
    return invalid_argument(op + "the sequences cover " + std::to_string(a.q_start[a.seqs]) + " query rows but total_q is " +
                            std::to_string(a.total_q));
  return Status::Ok();
}

template <typename KV>
Status run(const PagedAttentionArgs& a) {
  const int64_t ranges = a.range_mass != nullptr ? std::max<int64_t>(0, a.num_ranges) : 0;
  Layout L{a, a.heads / a.kv_heads, a.kv_heads * a.head_dim, ranges, {}};
  int64_t max_span = 0;
  KVF_RETURN_IF_ERROR(validate(a, L, &max_span));
  if (a.total_q == 0 || a.heads == 0 || a.head_dim == 0) return Status::Ok();

  // Decode split: only when (row, kv head) items are too few to feed the threads.
  Split sp;
  const int64_t items = a.total_q * a.kv_heads;
  const int64_t threads = cpu::num_threads();
  if (items < threads && max_span >= 2 * kMinChunk) {
    sp.chunks = std::min((threads + items - 1) / items, max_span / kMinChunk);
  }
  sp.chunk_len = (max_span + sp.chunks - 1) / sp.chunks;
  sp.stride = a.ctx_split != nullptr ? 2 * (a.head_dim + 2) : a.head_dim + 2 + L.ranges;  // no ranges with ctx_split
  if (sp.chunks > 1) sp.partial.resize(items * sp.chunks * L.group * sp.stride);

  const bool col_sums = a.attn_sum != nullptr || a.kv_attn_sum != nullptr;
  std::vector<float> stats(col_sums ? 2 * a.total_q * a.heads : 0);
  float* st = col_sums ? stats.data() : nullptr;
  // Grain: about 4K slot-rows of work per chunk so short rows don't drown in dispatch.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, max_span / sp.chunks));
  cpu::parallel_for(items * sp.chunks, grain, [&](int64_t u0, int64_t u1) { attend_items<KV>(L, sp, st, u0, u1); });
  if (sp.chunks > 1) {
    cpu::parallel_for(items, 1, [&](int64_t v0, int64_t v1) { merge_chunks(L, sp, st, v0, v1); });
  }

  if (col_sums) {
    std::vector<SumItem> sum_items;
    for (int64_t s = 0; s < a.seqs; ++s) {
      const int64_t blocks = (a.kv_len[s] + kSumBlock - 1) / kSumBlock;
      for (int64_t b = 0; b < blocks; ++b) sum_items.push_back({static_cast<int32_t>(s), static_cast<int32_t>(b)});
    }
    const int64_t n = static_cast<int64_t>(sum_items.size()) * a.kv_heads;
    cpu::parallel_for(n, 1, [&](int64_t u0, int64_t u1) { attn_sum_items<KV>(L, sum_items, st, u0, u1); });
  }
  return Status::Ok();
}

}  // namespace

Status paged_attention_cpu(const PagedAttentionArgs& a) {
  return dispatch_float(a.kv_dtype, "paged_attention (kv pools)", [&](auto tag) { return run<decltype(tag)>(a); });
}

}  // namespace kvf
