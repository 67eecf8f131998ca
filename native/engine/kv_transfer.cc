#include "kv_transfer.h"

#include <climits>

namespace kvf {
namespace {

// Calls fn(pool_offset, host_offset, bytes) for each contiguous run of the block: the rows a
// page holds, for every layer, in (layer, token) order.
template <typename Fn>
Status for_each_run(const KvBlock& block, Fn fn) {
  const KvPoolSpec& s = block.pool->spec();
  const size_t row = static_cast<size_t>(s.kv_heads * s.head_dim) * dtype_size(s.dtype);
  const int64_t n = block.tokens();
  size_t host = 0;
  for (const auto& pages : block.pages) {
    for (int64_t t = 0, i = 0; t < n; t += s.page_size, ++i) {
      const int64_t rows = std::min<int64_t>(s.page_size, n - t);
      const size_t pool_off = static_cast<size_t>(pages[static_cast<size_t>(i)]) * static_cast<size_t>(s.page_size) * row;
      Status st = fn(pool_off, host, static_cast<size_t>(rows) * row);
      if (!st.ok()) return st;
      host += static_cast<size_t>(rows) * row;
    }
  }
  return Status::Ok();
}

}  // namespace

size_t block_array_bytes(const KvPoolSpec& spec, int64_t tokens) {
  return static_cast<size_t>(spec.layers * tokens * spec.kv_heads * spec.head_dim) * dtype_size(spec.dtype);
}

Status read_block(const KvBlock& block, void* k_dst, void* v_dst) {
  KvPool& pool = *block.pool;
  for (const BufferRef* b : {&pool.k(), &pool.v()}) {
    Status st = (*b)->error();
    if (!st.ok()) return st;
  }
  Backend& be = *pool.device()->backend;
  auto* k = static_cast<char*>(k_dst);
  auto* v = static_cast<char*>(v_dst);
  const char* kp = static_cast<const char*>(pool.k()->data());
  const char* vp = static_cast<const char*>(pool.v()->data());
  return for_each_run(block, [&](size_t pool_off, size_t host_off, size_t bytes) {
    Status st = be.copy_to_host(k + host_off, kp + pool_off, bytes);
    return st.ok() ? be.copy_to_host(v + host_off, vp + pool_off, bytes) : st;
  });
}

Status new_block(const std::shared_ptr<KvPool>& pool, int32_t start, int64_t tokens, std::shared_ptr<KvBlock>* out) {
  const KvPoolSpec& s = pool->spec();
  if (tokens <= 0) return invalid_argument("importBlock: a block holds at least one token");
  if (start < 0 || tokens > static_cast<int64_t>(INT32_MAX) - start) return invalid_argument("importBlock: positions out of range");
  const int64_t per_layer = (tokens + s.page_size - 1) / s.page_size;
  std::vector<int32_t> pages;
  Status st = pool->acquire(per_layer * s.layers, &pages);
  if (!st.ok()) return st;
  auto block = std::make_shared<KvBlock>();
  block->pool = pool;
  std::vector<int32_t> positions(static_cast<size_t>(tokens));
  for (int64_t i = 0; i < tokens; ++i) positions[static_cast<size_t>(i)] = static_cast<int32_t>(start + i);
  for (int64_t l = 0; l < s.layers; ++l) {
    block->pages.emplace_back(pages.begin() + l * per_layer, pages.begin() + (l + 1) * per_layer);
    block->positions.push_back(positions);
  }
  *out = std::move(block);
  return Status::Ok();
}

Status write_block(const KvBlock& block, const void* k_src, const void* v_src) {
  KvPool& pool = *block.pool;
  Backend& be = *pool.device()->backend;
  const auto* k = static_cast<const char*>(k_src);
  const auto* v = static_cast<const char*>(v_src);
  char* kp = static_cast<char*>(pool.k()->data());
  char* vp = static_cast<char*>(pool.v()->data());
  return for_each_run(block, [&](size_t pool_off, size_t host_off, size_t bytes) {
    Status st = be.copy_from_host(kp + pool_off, k + host_off, bytes);
    return st.ok() ? be.copy_from_host(vp + pool_off, v + host_off, bytes) : st;
  });
}

}  // namespace kvf
