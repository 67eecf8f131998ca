// The Backend interface: device memory, copies, and the one dispatch point for every op.
// CpuBackend runs the kernels' CPU twins; CudaBackend runs the CUDA kernels on its stream.
// Calls are made from the device's job queue thread (engine/job_queue.h), except alloc/free,
// which any thread may call.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../kernels/add.h"
#include "../kernels/cast.h"
#include "../kernels/embedding.h"
#include "../kernels/kv_write.h"
#include "../kernels/matmul.h"
#include "../kernels/paged_attention.h"
#include "../kernels/rerotate.h"
#include "../kernels/rerotate_pages.h"
#include "../kernels/rmsnorm.h"
#include "../kernels/rope.h"
#include "../kernels/sample.h"
#include "../kernels/silu_mul.h"
#include "../kernels/softmax.h"
#include "../kernels/topk.h"

namespace kvf {

enum class DeviceKind : int32_t { cpu = 0, cuda = 1 };

struct DeviceInfo {
  std::string name;
  uint64_t memory_bytes = 0;
  int cc_major = 0, cc_minor = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;  // "cpu", "cuda:0"

  // Memory. alloc never throws; a failure is out_of_memory (or device_error).
  virtual Status alloc(size_t bytes, void** ptr) = 0;
  virtual void free(void* ptr) = 0;
  virtual Status memset_zero(void* ptr, size_t bytes) = 0;
  // Copies between this device's memory and host memory, and within this device. They are
  // ordered with the ops enqueued before them; *_host variants complete before returning.
  virtual Status copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual Status copy_from_host(void* dst, const void* host_src, size_t bytes) = 0;
  virtual Status copy_on_device(void* dst, const void* src, size_t bytes) = 0;
  // An upload that does not wait: `host_src` must stay unchanged until the next call that
  // waits (copy_to_host, synchronize), which also reports the copy's failure.
  virtual Status copy_from_host_async(void* dst, const void* host_src, size_t bytes) = 0;
  // Waits until all work issued so far has finished.
  virtual Status synchronize() = 0;

  // Ops: the backend's single dispatch point.
  virtual Status matmul(const MatmulArgs& a) = 0;
  virtual Status rmsnorm(const RmsNormArgs& a) = 0;
  virtual Status rope(const RopeArgs& a) = 0;
  virtual Status rerotate(const RerotateArgs& a) = 0;
  virtual Status rerotate_pages(const RerotatePagesArgs& a) = 0;
  virtual Status softmax(const SoftmaxArgs& a) = 0;
  virtual Status silu_mul(const SiluMulArgs& a) = 0;
  virtual Status embedding(const EmbeddingArgs& a) = 0;
  virtual Status topk(const TopKArgs& a) = 0;
  virtual Status cast(const CastArgs& a) = 0;
  virtual Status add(const AddArgs& a) = 0;
  virtual Status kv_write(const KvWriteArgs& a) = 0;
  virtual Status paged_attention(const PagedAttentionArgs& a) = 0;
  virtual Status sample(const SampleArgs& a) = 0;
};

// Times the host has waited for a device, over every backend: each copy_to_host,
// copy_from_host and synchronize counts one (the CPU backend counts them too, so that tests
// on the CPU see the structure a step has on a GPU). For tests and benchmarks.
uint64_t host_sync_count();
void count_host_sync();

Backend& cpu_backend();

// CUDA: compiled in when KVFOCUS_WITH_CUDA is defined; otherwise these report no devices.
bool cuda_compiled();
int cuda_device_count();                       // 0 without a usable driver/GPU
std::string cuda_unavailable_reason();         // why the count is 0, for messages
std::vector<DeviceInfo> cuda_devices();
// The backend of CUDA device `index`, created on first use. Null with *why set if unavailable.
Backend* cuda_backend(int index, Status* why);

}  // namespace kvf
