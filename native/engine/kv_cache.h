// Paged KV storage. A KvPool is one device allocation of fixed-size pages, each holding the
// keys and values of `page_size` tokens of ONE layer:
//   k_pool, v_pool: (num_pages, page_size, kv_heads, head_dim)
// Pages are reference counted so sequences can share a document's pages. A Sequence owns, per
// layer, a page table, a length and the position of every cached slot ("positions are data,
// per layer"): layers may hold different token sets (pruning, ladders) at different positions.
//
// Threading: page tables are edited on the JavaScript thread only; queued jobs capture copies
// of the tables they read. A page freed here may be handed out again at once: every job that
// read it was queued earlier on the same device queue and so runs before any job of its new
// owner.
#pragma once

#include <mutex>
#include <vector>

#include "device.h"

namespace kvf {

struct KvPoolSpec {
  int64_t num_pages = 0, page_size = 16, layers = 0, kv_heads = 0, head_dim = 0;
  DType dtype = DType::f32;
};

class KvPool {
 public:
  static std::shared_ptr<KvPool> create(Device* device, const KvPoolSpec& spec, Status* st);

  const KvPoolSpec& spec() const { return spec_; }
  Device* device() const { return device_; }
  const BufferRef& k() const { return k_; }
  const BufferRef& v() const { return v_; }

  // Takes n free pages (refcount 1). out_of_memory, with the pool's numbers, when too few.
  Status acquire(int64_t n, std::vector<int32_t>* pages);
  void retain(int32_t page);
  void release(int32_t page);
  int64_t free_pages() const;

 private:
  KvPool(Device* d, const KvPoolSpec& s) : device_(d), spec_(s) {}
  Device* device_;
  KvPoolSpec spec_;
  BufferRef k_, v_;
  mutable std::mutex mu_;
  std::vector<int32_t> free_;  // a stack: recently freed pages are reused first (warm caches)
  std::vector<int32_t> refs_;
};

struct LayerKv {
  std::vector<int32_t> pages;      // page table
  std::vector<int32_t> positions;  // RoPE position of every slot; size == length
  int64_t length() const { return static_cast<int64_t>(positions.size()); }
};

class Sequence {
 public:
  explicit Sequence(std::shared_ptr<KvPool> pool);
  ~Sequence();  // releases every page it holds
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  const std::shared_ptr<KvPool>& pool() const { return pool_; }
  std::vector<LayerKv>& layers() { return layers_; }
  const std::vector<LayerKv>& layers() const { return layers_; }

  // Reserves `positions.size()` new slots at the end of every layer, acquiring pages as needed,
  // and records their positions. On failure nothing changes. Returns, per layer, the flat pool
  // slot (page * page_size + row) of each new token through *slots (may be null).
  Status append(const std::vector<int32_t>& positions, std::vector<std::vector<int32_t>>* slots);

  // Drops the newest n slots of every layer (releasing pages that become empty).
  void truncate(int64_t n);

  // Drops everything.
  void clear();

  // Token ids fed so far (for repetition penalties) and the sampler's random state.
  std::vector<int32_t> history;
  uint64_t rng_state = 0x853c49e6748fea9bULL;

 private:
  std::shared_ptr<KvPool> pool_;
  std::vector<LayerKv> layers_;
};

}  // namespace kvf
