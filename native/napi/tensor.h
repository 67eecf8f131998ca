// NativeTensor: the JS handle of a device buffer (lib/tensor.ts wraps it in Tensor). It holds a
// reference to a Buffer; views share the buffer; release() drops the reference at once, the
// GC finalizer does it otherwise.
#pragma once

#include <napi.h>

#include <vector>

#include "../engine/device.h"

namespace kvf::napi {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function define(Napi::Env env);
  // Creates a JS NativeTensor owning `buffer`.
  static Napi::Object create(Napi::Env env, BufferRef buffer, DType dtype, std::vector<int64_t> shape);
  // The NativeTensor behind a JS value, or a thrown InvalidArgument/Disposed error naming `what`.
  static NativeTensor* unwrap(Napi::Value v, const char* what);

  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;

  const BufferRef& buffer() const { return buffer_; }
  Device* device() const { return buffer_->device(); }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

 private:
  Napi::Value read(const Napi::CallbackInfo& info);
  Napi::Value copy_to(const Napi::CallbackInfo& info);
  Napi::Value view(const Napi::CallbackInfo& info);
  Napi::Value release(const Napi::CallbackInfo& info);
  Napi::Value byte_length(const Napi::CallbackInfo& info);
  Napi::Value released(const Napi::CallbackInfo& info);

  void drop(Napi::Env env);

  BufferRef buffer_;
  DType dtype_ = DType::f32;
  std::vector<int64_t> shape_;
  int64_t reported_bytes_ = 0;  // what this handle added to V8's external memory count
};

// Parses "cpu" / "cuda" / "cuda:N" into a device (thrown DeviceError if unavailable).
Device* parse_device(Napi::Env env, Napi::Value v);
DType parse_dtype(Napi::Env env, Napi::Value v, const char* what);
std::vector<int64_t> parse_shape(Napi::Env env, Napi::Value v, const char* what);

}  // namespace kvf::napi
