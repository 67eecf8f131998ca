#include "tensor.h"

#include <cstring>

#include "async.h"
#include "errors.h"
#include "instance.h"

namespace kvf::napi {
namespace {

// Tags NativeTensor objects so a method called on some other object is rejected ("Illegal
// invocation") instead of reinterpreting its memory.
const napi_type_tag kTensorTag = {0x6b76666f63757354ULL, 0x656e736f72000001ULL};

struct PendingTensor {
  BufferRef buffer;
  DType dtype;
  std::vector<int64_t> shape;
};

}  // namespace

Napi::Function NativeTensor::define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {
                         InstanceMethod<&NativeTensor::read>("read"),
                         InstanceMethod<&NativeTensor::copy_to>("copyTo"),
                         InstanceMethod<&NativeTensor::view>("view"),
                         InstanceMethod<&NativeTensor::release>("release"),
                         InstanceAccessor<&NativeTensor::byte_length>("byteLength"),
                         InstanceAccessor<&NativeTensor::released>("released"),
                     });
}

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    throw_invalid(env, "NativeTensor cannot be constructed directly; use the Tensor factories");
  }
  auto* pending = info[0].As<Napi::External<PendingTensor>>().Data();
  buffer_ = std::move(pending->buffer);
  dtype_ = pending->dtype;
  shape_ = std::move(pending->shape);
  reported_bytes_ = static_cast<int64_t>(nbytes());
  Napi::MemoryManagement::AdjustExternalMemory(env, reported_bytes_);
  info.This().As<Napi::Object>().TypeTag(&kTensorTag);
}

NativeTensor::~NativeTensor() {
  // Finalizers may run during environment teardown; only the buffer reference is dropped here.
  buffer_.reset();
}

void NativeTensor::drop(Napi::Env env) {
  if (!buffer_) return;
  buffer_.reset();
  Napi::MemoryManagement::AdjustExternalMemory(env, -reported_bytes_);
  reported_bytes_ = 0;
}

Napi::Object NativeTensor::create(Napi::Env env, BufferRef buffer, DType dtype, std::vector<int64_t> shape) {
  PendingTensor pending{std::move(buffer), dtype, std::move(shape)};
  return Instance::get(env)->tensor_ctor.New({Napi::External<PendingTensor>::New(env, &pending)});
}

NativeTensor* NativeTensor::unwrap(Napi::Value v, const char* what) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kTensorTag)) {
    throw_invalid(env, std::string(what) + ": expected a tensor (Illegal invocation)");
  }
  NativeTensor* t = NativeTensor::Unwrap(v.As<Napi::Object>());
  if (t == nullptr || !t->buffer_) {
    throw_status(env, Status(StatusCode::disposed, std::string(what) + ": the tensor has been disposed"));
  }
  return t;
}

int64_t NativeTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

// read(): Promise<ArrayBuffer> with the tensor's bytes, after every op queued before it.
Napi::Value NativeTensor::read(const Napi::CallbackInfo& info) {
  return guarded(info, [&](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env env = info.Env();
    NativeTensor* self = unwrap(info.This(), "read");
    const size_t n = self->nbytes();
    // The job writes straight into the ArrayBuffer's backing store, which V8 never moves; the
    // completion holds a reference so it stays alive until then.
    Napi::ArrayBuffer out = Napi::ArrayBuffer::New(env, n);
    auto completion = std::make_shared<Completion>(env);
    completion->keep(out);
    void* dst = out.Data();
    BufferRef src = self->buffer_;
    src->device()->queue.push([completion, src, dst, n] {
      Status st = src->error();
      if (st.ok()) {
        // The ArrayBuffer belongs to the environment: write only while it is alive, and hold
        // its teardown off until the copy is done.
        EnvWriteGuard guard(*completion);
        if (!guard) return;
        st = src->device()->backend->copy_to_host(dst, src->data(), n);
      }
      completion->finish(st, [](Napi::Env, const KeptValues& kept) -> Napi::Value { return kept.at(0); });
    });
    return completion->promise();
  });
}

// copyTo(device): a new tensor on `device` holding a copy, ordered after the source's producers.
Napi::Value NativeTensor::copy_to(const Napi::CallbackInfo& info) {
  return guarded(info, [&](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env env = info.Env();
    NativeTensor* self = unwrap(info.This(), "to");
    Device* dst_dev = parse_device(env, info[0]);
    Device* src_dev = self->device();
    const size_t n = self->nbytes();
    Status st;
    BufferRef dst = Buffer::create(dst_dev, n, &st);
    if (!dst) throw_status(env, st);
    BufferRef src = self->buffer_;
    if (dst_dev == src_dev) {
      enqueue_op(dst_dev, {src}, {dst}, [src, dst, n](Backend& be) { return be.copy_on_device(dst->data(), src->data(), n); });
    } else {
      // Wait until the source device has finished writing it, then copy on the destination's
      // queue so later ops there are ordered after the copy.
      Backend* src_be = src_dev->backend;
      std::shared_future<void> ready = src_dev->queue.fence([src_be] { src_be->synchronize(); });
      enqueue_op(dst_dev, {src}, {dst}, [src, dst, n, ready, src_be](Backend& dst_be) -> Status {
        ready.wait();
        if (src_be->kind() == DeviceKind::cpu) return dst_be.copy_from_host(dst->data(), src->data(), n);
        if (dst_be.kind() == DeviceKind::cpu) return src_be->copy_to_host(dst->data(), src->data(), n);
        std::vector<uint8_t> staging(n);  // GPU to GPU through the host: rare, kept simple
        KVF_RETURN_IF_ERROR(src_be->copy_to_host(staging.data(), src->data(), n));
        return dst_be.copy_from_host(dst->data(), staging.data(), n);
      });
    }
    return create(env, dst, self->dtype_, self->shape_);
  });
}

// view(shape): a tensor sharing this buffer with another shape of the same element count.
Napi::Value NativeTensor::view(const Napi::CallbackInfo& info) {
  return guarded(info, [&](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env env = info.Env();
    NativeTensor* self = unwrap(info.This(), "view");
    std::vector<int64_t> shape = parse_shape(env, info[0], "view: shape");
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (n != self->numel()) throw_invalid(env, "view: shape has " + std::to_string(n) + " elements, the tensor has " + std::to_string(self->numel()));
    return create(env, self->buffer_, self->dtype_, std::move(shape));
  });
}

Napi::Value NativeTensor::release(const Napi::CallbackInfo& info) {
  drop(info.Env());
  return info.Env().Undefined();
}

Napi::Value NativeTensor::byte_length(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(nbytes()));
}

Napi::Value NativeTensor::released(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !buffer_);
}

Device* parse_device(Napi::Env env, Napi::Value v) {
  if (!v.IsString()) throw_invalid(env, "device: expected 'cpu', 'cuda' or 'cuda:N'");
  const std::string s = v.As<Napi::String>().Utf8Value();
  Status why;
  Device* d = nullptr;
  if (s == "cpu") {
    d = get_device(DeviceKind::cpu, 0, &why);
  } else if (s == "cuda") {
    d = get_device(DeviceKind::cuda, 0, &why);
  } else if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
             s.find_first_not_of("0123456789", 5) == std::string::npos) {
    d = get_device(DeviceKind::cuda, std::stoi(s.substr(5)), &why);
  } else {
    throw_invalid(env, "device: expected 'cpu', 'cuda' or 'cuda:N' but received '" + s + "'");
  }
  if (d == nullptr) throw_status(env, why);
  return d;
}

DType parse_dtype(Napi::Env env, Napi::Value v, const char* what) {
  if (v.IsString()) {
    const std::string s = v.As<Napi::String>().Utf8Value();
    for (DType t : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::u8}) {
      if (s == dtype_name(t)) return t;
    }
  }
  throw_invalid(env, std::string(what) + ": expected one of f32, f16, bf16, i32, u8");
}

std::vector<int64_t> parse_shape(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsArray()) throw_invalid(env, std::string(what) + ": expected an array of dimensions");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value d = a.Get(i);
    const double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 0 && x <= 9007199254740991.0) || static_cast<double>(static_cast<int64_t>(x)) != x) {
      throw_invalid(env, std::string(what) + ": dimension " + std::to_string(i) + " must be a non-negative integer");
    }
    shape.push_back(static_cast<int64_t>(x));
  }
  return shape;
}

}  // namespace kvf::napi
