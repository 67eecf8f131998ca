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
// Optional, for score-based cache policies: when attn_sum is not null, the softmax
// probabilities are also added into attn_sum[s][h][j] (f32, (heads, max_kv) per sequence at
// attn_sum + s * heads * max_kv), summed over the sequence's query rows.
#pragma once
#include "common.h"

namespace kvf {

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
  float* attn_sum = nullptr;             // optional (seqs, heads, max_kv)
  int64_t max_kv = 0;
};

Status paged_attention_cpu(const PagedAttentionArgs& args);
Status paged_attention_cuda(const PagedAttentionArgs& args, void* stream);

}  // namespace kvf
