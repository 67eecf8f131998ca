// A Device pairs a Backend with its job queue; a Buffer is one allocation on a device, shared
// by every tensor view and every queued job that uses it (the last owner frees it).
#pragma once

#include <memory>
#include <mutex>

#include "../backend/backend.h"
#include "job_queue.h"

namespace kvf {

struct Device {
  Backend* backend = nullptr;
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  JobQueue queue;

  std::string name() const { return backend->name(); }
};

// The process-wide device objects, created on first use and never destroyed (tensors and
// queued jobs may outlive any JavaScript environment). Null with *why set if unavailable.
Device* get_device(DeviceKind kind, int index, Status* why);

class Buffer {
 public:
  // Allocates `bytes` on `device`; on failure returns null and sets *st.
  static std::shared_ptr<Buffer> create(Device* device, size_t bytes, Status* st);
  // Memory the buffer does not own (a memory-mapped weight file): `owner` keeps it valid and
  // is dropped with the buffer; nothing is freed through the backend.
  static std::shared_ptr<Buffer> wrap(Device* device, void* data, size_t bytes, std::shared_ptr<void> owner);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  Device* device() const { return device_; }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

  // A failed op poisons its outputs; ops reading a poisoned buffer pass the failure on, and a
  // read of it rejects with the original error instead of returning garbage.
  Status error() const;
  void set_error(const Status& s);

 private:
  Buffer(Device* d, void* p, size_t n) : device_(d), data_(p), bytes_(n) {}
  Device* device_;
  void* data_;
  size_t bytes_;
  std::shared_ptr<void> owner_;
  mutable std::mutex mu_;
  Status error_;
};

using BufferRef = std::shared_ptr<Buffer>;

// Enqueues `fn` on the device's queue. Before it runs, a failure recorded on any input is
// copied to the outputs and fn is skipped; a failure of fn itself is recorded on the outputs.
void enqueue_op(Device* device, std::vector<BufferRef> inputs, std::vector<BufferRef> outputs,
                std::function<Status(Backend&)> fn);

}  // namespace kvf
