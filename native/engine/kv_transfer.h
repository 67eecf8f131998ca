// Moving a KvBlock between the KV pool and host memory: the store's host and disk tiers keep a
// document's KV as two dense arrays, K and V, each (layers, tokens, kv_heads, head_dim) in the
// pool's dtype, so a page's rows are one contiguous copy each way.
#pragma once

#include "kv_cache.h"

namespace kvf {

// Bytes of one of the two arrays (K or V) of a block of `tokens` tokens.
size_t block_array_bytes(const KvPoolSpec& spec, int64_t tokens);

// Device queue: copies the block's keys into k_dst and values into v_dst (host memory).
Status read_block(const KvBlock& block, void* k_dst, void* v_dst);

// JS thread: a block of `tokens` tokens at positions start.. (every layer), on fresh pages
// (all or nothing). Its pages hold nothing until write_block fills them.
Status new_block(const std::shared_ptr<KvPool>& pool, int32_t start, int64_t tokens, std::shared_ptr<KvBlock>* out);

// Device queue: fills the block's pages from the two host arrays (the layout read_block writes).
Status write_block(const KvBlock& block, const void* k_src, const void* v_src);

}  // namespace kvf
