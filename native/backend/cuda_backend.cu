// The CUDA backend: stream-ordered device memory (cudaMallocAsync on the device's stream, so
// freeing a buffer that a queued kernel still reads is safe) and the CUDA kernels on that one
// stream. Every CUDA error becomes a Status; nothing here aborts.
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>

#include "backend.h"

namespace kvf {
namespace {

Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  // A failed runtime call also sets this thread's last error, and every launcher checks
  // cudaGetLastError after its launches: clear it (a sticky error stays) so the failure is
  // reported once, here, and not again by the next op on this thread.
  (void)cudaGetLastError();
  std::string msg = std::string(what) + ": " + cudaGetErrorString(err);
  if (err == cudaErrorMemoryAllocation) return out_of_memory(msg);
  return device_error(msg);
}

#define KVF_CUDA_TRY(call, what) KVF_RETURN_IF_ERROR(cuda_status((call), (what)))

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int index) : index_(index) {}

  Status init() {
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    // Every allocation is cudaMallocAsync: without stream-ordered pools (old drivers, some
    // virtualised GPUs) each one would fail with a less helpful message.
    int pools = 0;
    KVF_CUDA_TRY(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, index_), "cudaDeviceGetAttribute");
    if (pools == 0) return unsupported(name() + ": the device or driver has no stream-ordered memory pools (cudaMallocAsync)");
    KVF_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    // Keep freed blocks in the pool instead of returning them to the driver at every sync.
    // Best effort: a failure only costs speed (and its error is cleared, not left for an op).
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, index_) == cudaSuccess) {
      uint64_t threshold = UINT64_MAX;
      (void)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    }
    (void)cudaGetLastError();
    return Status::Ok();
  }

  DeviceKind kind() const override { return DeviceKind::cuda; }
  std::string name() const override { return "cuda:" + std::to_string(index_); }

  Status alloc(size_t bytes, void** ptr) override {
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    const cudaError_t err = cudaMallocAsync(ptr, bytes == 0 ? 256 : bytes, stream_);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the non-sticky error so the device stays usable
      return out_of_memory(name() + ": could not allocate " + std::to_string(bytes) + " bytes of device memory");
    }
    return cuda_status(err, "cudaMallocAsync");
  }
  void free(void* ptr) override {
    if (ptr == nullptr) return;
    // Nothing to report to (a destructor calls this, maybe on the JS thread): a failure is at
    // worst a leak, and clearing it keeps it out of the next launcher's cudaGetLastError.
    if (cudaSetDevice(index_) != cudaSuccess || cudaFreeAsync(ptr, stream_) != cudaSuccess) (void)cudaGetLastError();
  }
  Status memset_zero(void* ptr, size_t bytes) override {
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    return cuda_status(cudaMemsetAsync(ptr, 0, bytes, stream_), "cudaMemsetAsync");
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    count_host_sync();
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    KVF_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpy (device to host)");
    return cuda_status(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  Status copy_from_host(void* dst, const void* src, size_t bytes) override {
    count_host_sync();
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    KVF_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpy (host to device)");
    // Pageable source: the copy is staged before cudaMemcpyAsync returns, but sync anyway so the
    // caller may free the host buffer at once.
    return cuda_status(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  Status copy_on_device(void* dst, const void* src, size_t bytes) override {
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpy (device)");
  }
  Status copy_from_host_async(void* dst, const void* src, size_t bytes) override {
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    // From pageable memory the driver may stage the copy (and even wait for it) before this
    // returns; either way the caller keeps `src` alive until its next wait.
    return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpy (host to device)");
  }
  Status synchronize() override {
    count_host_sync();
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    return cuda_status(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  Status matmul(const MatmulArgs& a) override { return run(matmul_cuda, a); }
  Status rmsnorm(const RmsNormArgs& a) override { return run(rmsnorm_cuda, a); }
  Status rope(const RopeArgs& a) override { return run(rope_cuda, a); }
  Status rerotate(const RerotateArgs& a) override { return run(rerotate_cuda, a); }
  Status rerotate_pages(const RerotatePagesArgs& a) override { return run(rerotate_pages_cuda, a); }
  Status softmax(const SoftmaxArgs& a) override { return run(softmax_cuda, a); }
  Status silu_mul(const SiluMulArgs& a) override { return run(silu_mul_cuda, a); }
  Status embedding(const EmbeddingArgs& a) override { return run(embedding_cuda, a); }
  Status topk(const TopKArgs& a) override { return run(topk_cuda, a); }
  Status cast(const CastArgs& a) override { return run(cast_cuda, a); }
  Status add(const AddArgs& a) override { return run(add_cuda, a); }
  Status kv_write(const KvWriteArgs& a) override { return run(kv_write_cuda, a); }
  Status paged_attention(const PagedAttentionArgs& a) override { return run(paged_attention_cuda, a); }
  Status sample(const SampleArgs& a) override { return run(sample_cuda, a); }

  // Kernels launch asynchronously: a launch error is reported by the launcher, an execution
  // error at the next synchronisation (the read that waits for it).
 private:
  // Launches go to the current device, and launchers query it (SM counts): select ours on the
  // calling thread first. The queue thread may never have allocated (so still be on device 0),
  // or may have been left on another device (napi/tensor.cc stages GPU-to-GPU copies through
  // the host from the destination's queue thread). Then drop a stale error left by a call whose
  // result was ignored, so the launcher's cudaGetLastError sees only its own launches.
  template <typename Args>
  Status run(Status (*launch)(const Args&, void*), const Args& a) {
    KVF_CUDA_TRY(cudaSetDevice(index_), "cudaSetDevice");
    (void)cudaGetLastError();
    return launch(a, stream_);
  }

  int index_;
  cudaStream_t stream_ = nullptr;
};

struct CudaState {
  std::mutex mu;
  bool probed = false;
  int count = 0;
  std::string reason;
  std::vector<CudaBackend*> backends;  // leaked on purpose: live as long as the process
};

CudaState& state() {
  static CudaState* s = new CudaState();
  return *s;
}

void probe_locked(CudaState& s) {
  if (s.probed) return;
  s.probed = true;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    s.count = 0;
    s.reason = std::string("no usable CUDA driver or device (") + cudaGetErrorString(err) + ")";
    return;
  }
  s.count = count;
  if (count == 0) s.reason = "no CUDA device found";
  s.backends.assign(static_cast<size_t>(count), nullptr);
}

}  // namespace

bool cuda_compiled() { return true; }

int cuda_device_count() {
  CudaState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  probe_locked(s);
  return s.count;
}

std::string cuda_unavailable_reason() {
  CudaState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  probe_locked(s);
  return s.reason;
}

std::vector<DeviceInfo> cuda_devices() {
  std::vector<DeviceInfo> out;
  const int n = cuda_device_count();
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      (void)cudaGetLastError();  // not left behind for a later launcher to report
      continue;
    }
    DeviceInfo d;
    d.name = prop.name;
    d.memory_bytes = prop.totalGlobalMem;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    out.push_back(d);
  }
  return out;
}

Backend* cuda_backend(int index, Status* why) {
  CudaState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  probe_locked(s);
  if (index < 0 || index >= s.count) {
    *why = device_error(s.count == 0 ? "cuda:" + std::to_string(index) + " is not available: " + s.reason
                                     : "cuda:" + std::to_string(index) + " does not exist (" +
                                           std::to_string(s.count) + " device(s))");
    return nullptr;
  }
  if (s.backends[index] == nullptr) {
    auto* b = new CudaBackend(index);
    Status st = b->init();
    if (!st.ok()) {
      delete b;
      *why = st;
      return nullptr;
    }
    s.backends[index] = b;
  }
  return s.backends[index];
}

}  // namespace kvf
