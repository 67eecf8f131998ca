// paged_attention: softmax attention of new query tokens over a paged KV cache, for a batch
// of sequences (prefill chunks and decode steps alike), with grouped-query heads.
//
// For sequence s, its queries are rows q_start[s] .. q_start[s+1]-1 of q, and its cache is the
// slots 0 .. kv_len[s]-1 of its page table page_table[table_start[s] .. table_start[s+1]-1]:
// slot j is row j % page_size of pool page page_table[table_start[s] + j / page_size].
// Query row t of sequence s sees slots first_visible[t] <= j < visible[t] (slot-ordered causal
// masking: a prefill token at slot p sets visible = p + 1; a decode token sees the whole cache).
// first_visible is the lower bound of sliding-window attention (HF: a query at position i sees
// keys at positions > i - window, so first_visible = max(0, visible - window)); null means 0.
//
//   q:      (total_q, heads, head_dim), dtype q_dtype, already rotated (RoPE) at its positions
//   k_pool, v_pool: (num_pages, page_size, kv_heads, head_dim), dtype kv_dtype (keys rotated)
//   out:    (total_q, heads, head_dim), dtype out_dtype
//   head h reads kv head h / (heads / kv_heads).
//   out[t, h] = sum_j p_j v_j,  p = softmax_j(scale * q[t, h] . k_j)  over visible j
// f32 scores and accumulation (online softmax). A row that sees no slot gets zeros.
//
// Optional, for sequences over stored documents (kv_cache.h): when v_page_table is not null,
// slot j's value is row j % page_size of v_page_table[table_start[s] + j / page_size] (keys
// still come from page_table); when page_rows is not null, only rows [0, page_rows[i]) of
// page-table entry i hold tokens and later rows are holes: masked like invisible slots, and
// their value rows are never read.
//
// Scores, for score-based cache policies (H2O, SnapKV, Cascading) and CacheFocus pruning: the
// attention probabilities p[t, h, j] behind `out` can also be reported, each output off (and
// free) while its pointer is null. All three come from the same probabilities as `out`:
//  - attn_sum (seqs, heads, max_kv) f32, added into: attn_sum[s][h][j] += sum over the
//    sequence's query rows t of p[t, h, j] (the column sums per query head).
//  - kv_attn_sum (seqs, kv_heads, max_kv) f32, added into: kv_attn_sum[s][g][j] += sum over the
//    sequence's query rows t and over the query heads h of kv head g's group of p[t, h, j].
//    Columns j >= kv_len[s] of either are left alone.
//  - col_log_decay (seqs) f32, optional: weighs each probability in attn_sum and kv_attn_sum by
//    row age, for EMA scores (Cascading KV cache). With d = col_log_decay[s] (ln beta; 0: no
//    weighting), the sequence's q query rows i = 0..q-1 and c0 = visible[first row] - 1 the slot
//    of its first query token (the chunk's tokens hold slots c0.., one each, in row order):
//    p[t, h, j] counts as exp(s_j - M + d * a) / L with a = q-1-i for a cached slot j < c0 and
//    a = i - (j - c0) for the chunk's own slot j (beta^a folded into the exponent: no extra exp).
//  - col_last_rows (seqs) i32, optional: only the sequence's last col_last_rows[s] query rows
//    add into attn_sum and kv_attn_sum (0: all of them): SnapKV's observation window.

//  - range_mass (total_q, heads, num_ranges) f32, written: range_mass[t][h][r] = sum of
//    p[t, h, j] over the slots j in [begin, end) of range r of row t's sequence, where
//    mass_ranges (seqs, num_ranges, 2) i32 holds the [begin, end) pairs in slot order (the
//    sequence's page-table order). Ranges may overlap or reach past what a row sees; slots a row
//    does not see (causal mask, sliding window, holes) weigh 0, so ranges that cover every
//    slot give masses that sum to 1 (0 for a row that sees no slot). On CUDA, num_ranges is at
//    most 2048 (the running masses live in shared memory).
// Exactness: p[t, h, j] = exp(s_j - M) / L with s_j the row's score of slot j and (M, L) the
// row's final max and sum of exp(s - M). range_mass is accumulated in the attention pass itself,
// from the very exp(s_j - m) terms that weight the values, under the same online rescaling as
// L. The column sums need every row of a sequence per column, so a second pass recomputes s_j
// with the first pass's arithmetic (bitwise the same score) and adds exp(s_j - M) / L with the
// row's final (M, L) taken from the first pass: the same probability, not an estimate.
//
// Two-part attention (APE, Yang et al., ICLR 2025, arXiv 2502.05431; "adaptive parallel
// encoding"), when ctx_split is not null: sequence s's slots [ctx_split[s].begin,
// ctx_split[s].end) (slot order, i.e. page-table order) are its context (the stored documents,
// encoded in parallel), every other visible slot is "other" (the shared prefix, the query, what
// is generated). Each query row t, head h then runs two online softmaxes over what it sees:
//   context: s_j = scale * q . k_j / T            -> o_c = sum p_j v_j,  lse_c = log sum exp(s_j)
//   other:   s_j = scale * q . k_j                -> o_o,                lse_o
//   out = w_c o_c + w_o o_o,   [w_c, w_o] = softmax([S * T * lse_c, lse_o])
// with T = ctx_split[s].temperature, S = ctx_split[s].scale. The S * T factor is the authors'
// code (Infini-AI-Lab/APE, ape/ape_llama.py, llama_attention_prefill_query: flash-attention's
// lse with softmax_scale 1 / (sqrt(d) T), multiplied by `scale * temperature` before the softmax
// that merges the two parts). A part the row does not see (no visible slot in it) weighs 0; a row
// that sees neither gets zeros. T = S = 1 is plain attention over both parts. A sequence with
// begin >= end has no context and runs plain attention. Off (null): costs nothing. The score
// outputs (attn_sum, kv_attn_sum, range_mass) are not defined for the two-part mixture and are
// refused with it (unsupported).
#pragma once
#include "common.h"

namespace kvf {

// One sequence's context part for two-part (APE) attention: 16 bytes, so the engine packs a
// table of them into its i32 upload (8-byte aligned).
struct ContextSplit {
  int32_t begin = 0, end = 0;  // [begin, end) slots of the context (documents)
  float temperature = 1.0f;    // T: the context's logits are divided by it
  float scale = 1.0f;          // S: the context's log-sum-exp is multiplied by S * T
};

struct PagedAttentionArgs {
  const void* q = nullptr;
  DType q_dtype = DType::f32;
  void* out = nullptr;
  DType out_dtype = DType::f32;
  const void* k_pool = nullptr;
  const void* v_pool = nullptr;
  DType kv_dtype = DType::f32;
  int64_t page_size = 16, num_pages = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t seqs = 0;
  int64_t total_q = 0;
  const int32_t* q_start = nullptr;      // (seqs + 1)
  const int32_t* kv_len = nullptr;       // (seqs)
  const int32_t* table_start = nullptr;  // (seqs + 1)
  const int32_t* page_table = nullptr;   // concatenated page ids
  int64_t page_table_len = 0;            // entries in page_table (bounds table_start)
  const int32_t* v_page_table = nullptr;  // optional, as page_table: the values' pages
  const int32_t* page_rows = nullptr;     // optional, as page_table: rows of each page that hold tokens
  const int32_t* visible = nullptr;      // (total_q)
  const int32_t* first_visible = nullptr;  // optional (total_q), 0 <= first_visible <= visible
  float scale = 1.0f;
  // Scores (see above); null: not computed.
  float* attn_sum = nullptr;             // optional (seqs, heads, max_kv), added into
  float* kv_attn_sum = nullptr;          // optional (seqs, kv_heads, max_kv), added into
  int64_t max_kv = 0;                    // columns of attn_sum and kv_attn_sum (>= every kv_len)
  const float* col_log_decay = nullptr;  // optional (seqs): EMA weighting of the column sums
  const int32_t* col_last_rows = nullptr;  // optional (seqs): rows that count in the column sums
  const int32_t* mass_ranges = nullptr;  // (seqs, num_ranges, 2): [begin, end) slot ranges
  int64_t num_ranges = 0;
  float* range_mass = nullptr;           // optional (total_q, heads, num_ranges), written
  // Two-part (APE) attention (see above); null: off.
  const ContextSplit* ctx_split = nullptr;  // optional (seqs)
};

Status paged_attention_cpu(const PagedAttentionArgs& args);
Status paged_attention_cuda(const PagedAttentionArgs& args, void* stream);

}  // namespace kvf
