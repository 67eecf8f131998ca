// The CPU backend: 64-byte aligned host memory and the kernels' CPU twins. Work runs on the
// CPU job queue's thread and fans out through the thread pool (kernels/parallel.h).
#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "backend.h"

namespace kvf {
namespace {

// Keeps freed blocks for reuse. Large allocations come from mmap and return to the kernel on
// free, so without this every op output and every forward step's scratch buffer would pay for
// page faults on fresh zeroed pages (measured: a 16 MB copy took 10 ms instead of under 1 ms).
// Blocks above kMaxBlock bypass the cache; at most kMaxCached bytes are kept (KVFOCUS_CPU_CACHE_MB).
class BlockCache {
 public:
  BlockCache() {
    if (const char* env = std::getenv("KVFOCUS_CPU_CACHE_MB")) max_cached_ = static_cast<size_t>(std::atoll(env)) << 20;
  }

  // A cached block of exactly `size` bytes, or null.
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(size);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= size;
    return p;
  }

  void note_size(void* p, size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = size;
  }

  void put(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return std::free(p);  // not ours (cannot happen), free it anyway
    const size_t size = it->second;
    if (size > kMaxBlock || size > max_cached_) {
      sizes_.erase(it);
      std::free(p);
      return;
    }
    // Evict the largest cached blocks until this one fits under the cap.
    while (cached_ + size > max_cached_ && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_ -= last->first;
      sizes_.erase(last->second);
      std::free(last->second);
      free_.erase(last);
    }
    free_.emplace(size, p);
    cached_ += size;
  }

  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, p] : free_) {
      sizes_.erase(p);
      std::free(p);
    }
    free_.clear();
    cached_ = 0;
  }

 private:
  static constexpr size_t kMaxBlock = size_t{256} << 20;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;         // size -> block, exact-size reuse
  std::unordered_map<void*, size_t> sizes_;   // every live or cached block we allocated
  size_t cached_ = 0;
  size_t max_cached_ = size_t{1} << 30;
};

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::cpu; }
  std::string name() const override { return "cpu"; }

  Status alloc(size_t bytes, void** ptr) override {
    // Round up so aligned_alloc's size contract holds; 0-byte tensors still get a real pointer.
    // Large blocks (the KV pool, copied weights) are whole 2 MB huge pages where the kernel
    // allows it: the pool is read in 256-byte pieces scattered over it on every decode step,
    // and with 4 KB pages each piece costs a TLB miss and stops the hardware prefetcher.
    const bool huge = bytes >= kHugeFrom;
    const size_t align = huge ? kHugePage : 64;
    const size_t size = huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : (bytes + 63) / 64 * 64 + 64 * (bytes == 0);
    if (void* p = cache_.take(size)) {
      *ptr = p;
      return Status::Ok();
    }
    void* p = std::aligned_alloc(align, size);
    if (p == nullptr) {
      cache_.release_all();  // cached blocks may be what stands between us and success
      p = std::aligned_alloc(align, size);
    }
    if (p != nullptr && huge) madvise(p, size, MADV_HUGEPAGE);  // advice only: failure is harmless
    if (p == nullptr) return out_of_memory("cpu: could not allocate " + std::to_string(bytes) + " bytes of host memory");
    cache_.note_size(p, size);
    *ptr = p;
    return Status::Ok();
  }
  void free(void* ptr) override { cache_.put(ptr); }
  // Zero-element tensors have null data pointers, and memcpy/memset with a null pointer is
  // undefined even for 0 bytes: every copy returns early on an empty range.
  Status memset_zero(void* ptr, size_t bytes) override {
    if (bytes) std::memset(ptr, 0, bytes);
    return Status::Ok();
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    count_host_sync();
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status copy_from_host(void* dst, const void* src, size_t bytes) override {
    count_host_sync();
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status copy_on_device(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
    return Status::Ok();
  }
  Status copy_from_host_async(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status synchronize() override {
    count_host_sync();
    return Status::Ok();
  }

  Status matmul(const MatmulArgs& a) override { return matmul_cpu(a); }
  Status rmsnorm(const RmsNormArgs& a) override { return rmsnorm_cpu(a); }
  Status rope(const RopeArgs& a) override { return rope_cpu(a); }
  Status rerotate(const RerotateArgs& a) override { return rerotate_cpu(a); }
  Status rerotate_pages(const RerotatePagesArgs& a) override { return rerotate_pages_cpu(a); }
  Status softmax(const SoftmaxArgs& a) override { return softmax_cpu(a); }
  Status silu_mul(const SiluMulArgs& a) override { return silu_mul_cpu(a); }
  Status embedding(const EmbeddingArgs& a) override { return embedding_cpu(a); }
  Status topk(const TopKArgs& a) override { return topk_cpu(a); }
  Status cast(const CastArgs& a) override { return cast_cpu(a); }
  Status add(const AddArgs& a) override { return add_cpu(a); }
  Status kv_write(const KvWriteArgs& a) override { return kv_write_cpu(a); }
  Status paged_attention(const PagedAttentionArgs& a) override { return paged_attention_cpu(a); }
  Status sample(const SampleArgs& a) override { return sample_cpu(a); }

 private:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kHugeFrom = size_t{4} << 20;  // rounding wastes at most a third
  BlockCache cache_;
};

}  // namespace

namespace {
std::atomic<uint64_t> host_syncs{0};
}  // namespace

uint64_t host_sync_count() { return host_syncs.load(std::memory_order_relaxed); }
void count_host_sync() { host_syncs.fetch_add(1, std::memory_order_relaxed); }

Backend& cpu_backend() {
  static CpuBackend* b = new CpuBackend();  // leaked on purpose: outlives every tensor
  return *b;
}

}  // namespace kvf
