#include "device.h"

#include <exception>
#include <mutex>
#include <new>
#include <vector>

namespace kvf {

Device* get_device(DeviceKind kind, int index, Status* why) {
  static std::mutex mu;
  static Device* cpu = nullptr;
  static std::vector<Device*>* cuda = new std::vector<Device*>();
  std::lock_guard<std::mutex> lock(mu);
  if (kind == DeviceKind::cpu) {
    if (cpu == nullptr) {
      cpu = new Device();
      cpu->backend = &cpu_backend();
    }
    return cpu;
  }
  Backend* b = cuda_backend(index, why);
  if (b == nullptr) return nullptr;
  if (cuda->size() <= static_cast<size_t>(index)) cuda->resize(index + 1, nullptr);
  Device*& d = (*cuda)[index];
  if (d == nullptr) {
    d = new Device();
    d->backend = b;
    d->kind = DeviceKind::cuda;
    d->index = index;
  }
  return d;
}

std::shared_ptr<Buffer> Buffer::create(Device* device, size_t bytes, Status* st) {
  void* p = nullptr;
  *st = device->backend->alloc(bytes, &p);
  if (!st->ok()) return nullptr;
  return std::shared_ptr<Buffer>(new Buffer(device, p, bytes));
}

std::shared_ptr<Buffer> Buffer::wrap(Device* device, void* data, size_t bytes, std::shared_ptr<void> owner) {
  auto b = std::shared_ptr<Buffer>(new Buffer(device, data, bytes));
  b->owner_ = std::move(owner);
  return b;
}

Buffer::~Buffer() {
  if (!owner_) device_->backend->free(data_);
}

Status Buffer::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void Buffer::set_error(const Status& s) {
  std::lock_guard<std::mutex> lock(mu_);
  error_ = s;
}

void enqueue_op(Device* device, std::vector<BufferRef> inputs, std::vector<BufferRef> outputs,
                std::function<Status(Backend&)> fn) {
  device->queue.push([device, inputs = std::move(inputs), outputs = std::move(outputs), fn = std::move(fn)] {
    Status st;
    for (const auto& in : inputs) {
      st = in->error();
      if (!st.ok()) break;
    }
    if (st.ok()) {
      try {
        st = fn(*device->backend);
      } catch (const std::bad_alloc&) {
        st = out_of_memory("host memory exhausted");
      } catch (const std::exception& e) {
        st = Status(StatusCode::internal, e.what());
      }
    }
    for (const auto& out : outputs) out->set_error(st);
  });
}

}  // namespace kvf
