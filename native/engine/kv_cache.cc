#include "kv_cache.h"

#include <algorithm>

namespace kvf {

std::shared_ptr<KvPool> KvPool::create(Device* device, const KvPoolSpec& spec, Status* st) {
  auto pool = std::shared_ptr<KvPool>(new KvPool(device, spec));
  const size_t bytes = static_cast<size_t>(spec.num_pages * spec.page_size * spec.kv_heads * spec.head_dim) * dtype_size(spec.dtype);
  pool->k_ = Buffer::create(device, bytes, st);
  if (!pool->k_) return nullptr;
  pool->v_ = Buffer::create(device, bytes, st);
  if (!pool->v_) return nullptr;
  pool->refs_.assign(static_cast<size_t>(spec.num_pages), 0);
  pool->free_.reserve(static_cast<size_t>(spec.num_pages));
  for (int64_t p = spec.num_pages - 1; p >= 0; --p) pool->free_.push_back(static_cast<int32_t>(p));
  return pool;
}

Status KvPool::acquire(int64_t n, std::vector<int32_t>* pages) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n > static_cast<int64_t>(free_.size())) {
    return out_of_memory("KV cache is full: " + std::to_string(n) + " more page(s) of " + std::to_string(spec_.page_size) +
                         " tokens needed, " + std::to_string(free_.size()) + " of " + std::to_string(spec_.num_pages) +
                         " free (raise kvCacheTokens, or free sequences)");
  }
  for (int64_t i = 0; i < n; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    refs_[p] = 1;
    pages->push_back(p);
  }
  return Status::Ok();
}

void KvPool::retain(int32_t page) {
  std::lock_guard<std::mutex> lock(mu_);
  ++refs_[page];
}

void KvPool::release(int32_t page) {
  std::lock_guard<std::mutex> lock(mu_);
  if (refs_[page] > 0 && --refs_[page] == 0) free_.push_back(page);
}

int64_t KvPool::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size());
}

Sequence::Sequence(std::shared_ptr<KvPool> pool) : pool_(std::move(pool)), layers_(static_cast<size_t>(pool_->spec().layers)) {}

Sequence::~Sequence() { clear(); }

Status Sequence::append(const std::vector<int32_t>& positions, std::vector<std::vector<int32_t>>* slots) {
  const int64_t ps = pool_->spec().page_size;
  const int64_t n = static_cast<int64_t>(positions.size());
  // Acquire every page first so a failure leaves the sequence untouched.
  int64_t needed = 0;
  for (const LayerKv& l : layers_) {
    const int64_t have = static_cast<int64_t>(l.pages.size()) * ps;
    if (l.length() + n > have) needed += (l.length() + n - have + ps - 1) / ps;
  }
  std::vector<int32_t> fresh;
  KVF_RETURN_IF_ERROR(pool_->acquire(needed, &fresh));
  size_t next = 0;
  if (slots) slots->assign(layers_.size(), {});
  for (size_t li = 0; li < layers_.size(); ++li) {
    LayerKv& l = layers_[li];
    while (static_cast<int64_t>(l.pages.size()) * ps < l.length() + n) l.pages.push_back(fresh[next++]);
    if (slots) {
      auto& s = (*slots)[li];
      s.reserve(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t slot = l.length() + i;
        s.push_back(static_cast<int32_t>(l.pages[slot / ps] * ps + slot % ps));
      }
    }
    l.positions.insert(l.positions.end(), positions.begin(), positions.end());
  }
  return Status::Ok();
}

void Sequence::truncate(int64_t n) {
  const int64_t ps = pool_->spec().page_size;
  for (LayerKv& l : layers_) {
    const int64_t keep = std::max<int64_t>(0, l.length() - n);
    l.positions.resize(static_cast<size_t>(keep));
    const size_t pages_needed = static_cast<size_t>((keep + ps - 1) / ps);
    while (l.pages.size() > pages_needed) {
      pool_->release(l.pages.back());
      l.pages.pop_back();
    }
  }
}

void Sequence::clear() {
  for (LayerKv& l : layers_) {
    for (int32_t p : l.pages) pool_->release(p);
    l.pages.clear();
    l.positions.clear();
  }
  history.clear();
}

}  // namespace kvf
