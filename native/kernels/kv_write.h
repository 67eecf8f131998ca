// kv_write: scatter new keys and values into the paged KV pool.
//   k, v:       (tokens, kv_heads, head_dim), dtype src_dtype (the projections' output)
//   k_pool, v_pool: (num_pages, page_size, kv_heads, head_dim), dtype pool_dtype
//   slots:      (tokens) i32, the destination of token t: page = slots[t] / page_size,
//               row = slots[t] % page_size, with page an index into the pool (not a table).
// One conversion to the pool's dtype. Slots must be distinct and inside the pool (checked by
// the engine, which owns the page tables).
#pragma once
#include "common.h"

namespace kvf {

struct KvWriteArgs {
  const void* k = nullptr;
  const void* v = nullptr;
  DType src_dtype = DType::f32;
  void* k_pool = nullptr;
  void* v_pool = nullptr;
  DType pool_dtype = DType::f32;
  int64_t tokens = 0, kv_heads = 0, head_dim = 0, page_size = 16, num_pages = 0;
  const int32_t* slots = nullptr;
};

Status kv_write_cpu(const KvWriteArgs& args);
Status kv_write_cuda(const KvWriteArgs& args, void* stream);

}  // namespace kvf
