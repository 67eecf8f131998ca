// The CPU backend: 64-byte aligned host memory and the kernels' CPU twins. Work runs on the
// CPU job queue's thread and fans out through the thread pool (kernels/parallel.h).
#include <cstdlib>
#include <cstring>

#include "backend.h"

namespace kvf {
namespace {

class CpuBackend final : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::cpu; }
  std::string name() const override { return "cpu"; }

  Status alloc(size_t bytes, void** ptr) override {
    // Round up so aligned_alloc's size contract holds; 0-byte tensors still get a real pointer.
    const size_t size = (bytes + 63) / 64 * 64 + 64 * (bytes == 0);
    void* p = std::aligned_alloc(64, size);
    if (p == nullptr) return out_of_memory("cpu: could not allocate " + std::to_string(bytes) + " bytes of host memory");
    *ptr = p;
    return Status::Ok();
  }
  void free(void* ptr) override { std::free(ptr); }
  Status memset_zero(void* ptr, size_t bytes) override {
    std::memset(ptr, 0, bytes);
    return Status::Ok();
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status copy_from_host(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status copy_on_device(void* dst, const void* src, size_t bytes) override {
    std::memmove(dst, src, bytes);
    return Status::Ok();
  }
  Status synchronize() override { return Status::Ok(); }

  Status matmul(const MatmulArgs& a) override { return matmul_cpu(a); }
  Status rmsnorm(const RmsNormArgs& a) override { return rmsnorm_cpu(a); }
  Status rope(const RopeArgs& a) override { return rope_cpu(a); }
  Status rerotate(const RerotateArgs& a) override { return rerotate_cpu(a); }
  Status softmax(const SoftmaxArgs& a) override { return softmax_cpu(a); }
  Status silu_mul(const SiluMulArgs& a) override { return silu_mul_cpu(a); }
  Status embedding(const EmbeddingArgs& a) override { return embedding_cpu(a); }
  Status topk(const TopKArgs& a) override { return topk_cpu(a); }
  Status cast(const CastArgs& a) override { return cast_cpu(a); }
  Status add(const AddArgs& a) override { return add_cpu(a); }
  Status kv_write(const KvWriteArgs& a) override { return kv_write_cpu(a); }
  Status paged_attention(const PagedAttentionArgs& a) override { return paged_attention_cpu(a); }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend* b = new CpuBackend();  // leaked on purpose: outlives every tensor
  return *b;
}

}  // namespace kvf
