// Module entry: per-environment instance data, build and device info, tensor factories, ops.
#include <napi.h>

#include <cstring>

#include "../kernels/parallel.h"
#include "errors.h"
#include "instance.h"
#include "model.h"
#include "ops.h"
#include "tensor.h"
#include "weights.h"

#ifndef KVFOCUS_VERSION
#define KVFOCUS_VERSION "0.0.0"
#endif

namespace kvf::napi {
namespace {

Napi::Value build_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("version", KVFOCUS_VERSION);
  out.Set("cuda", cuda_compiled());
  Napi::Array devices = Napi::Array::New(env);
  uint32_t i = 0;
  for (const DeviceInfo& d : cuda_devices()) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", d.name);
    o.Set("memoryBytes", static_cast<double>(d.memory_bytes));
    o.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
    devices.Set(i++, o);
  }
  out.Set("devices", devices);
  out.Set("cudaUnavailableReason", cuda_device_count() > 0 ? std::string() : cuda_unavailable_reason());
  out.Set("cpuThreads", cpu::num_threads());
  return out;
}

// How many times the host has waited for a device so far (backend.h): tests check a forward
// step's structure with it.
Napi::Value host_syncs(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(host_sync_count()));
}

Napi::Value set_error_factory(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw_invalid(info.Env(), "setErrorFactory: expected a function");
  Instance::get(info.Env())->error_factory = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

size_t checked_bytes(Napi::Env env, DType dtype, const std::vector<int64_t>& shape) {
  // Reject shapes whose byte size would overflow before anything is allocated.
  const double limit = 9007199254740991.0;
  double n = static_cast<double>(dtype_size(dtype));
  for (int64_t d : shape) n *= static_cast<double>(d);
  if (n > limit) throw_invalid(env, "shape: tensor would be larger than 2^53 bytes");
  return static_cast<size_t>(n);
}

// empty(device, dtype, shape, zero): a new tensor; zero-filled when `zero` is true.
Napi::Value empty(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Device* dev = parse_device(env, info[0]);
  DType dtype = parse_dtype(env, info[1], "dtype");
  std::vector<int64_t> shape = parse_shape(env, info[2], "shape");
  const size_t bytes = checked_bytes(env, dtype, shape);
  Status st;
  BufferRef buf = Buffer::create(dev, bytes, &st);
  if (!buf) throw_status(env, st);
  if (info[3].ToBoolean().Value()) {
    enqueue_op(dev, {}, {buf}, [buf, bytes](Backend& be) { return be.memset_zero(buf->data(), bytes); });
  }
  return NativeTensor::create(env, buf, dtype, std::move(shape));
}

// fromBytes(device, dtype, shape, view): a new tensor holding a copy of the view's bytes.
Napi::Value from_bytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Device* dev = parse_device(env, info[0]);
  DType dtype = parse_dtype(env, info[1], "dtype");
  std::vector<int64_t> shape = parse_shape(env, info[2], "shape");
  const size_t bytes = checked_bytes(env, dtype, shape);
  if (!info[3].IsTypedArray() && !info[3].IsArrayBuffer() && !info[3].IsDataView())
    throw_invalid(env, "data: expected a TypedArray, DataView or ArrayBuffer");
  const uint8_t* src = nullptr;
  size_t src_len = 0;
  if (info[3].IsArrayBuffer()) {
    Napi::ArrayBuffer ab = info[3].As<Napi::ArrayBuffer>();
    src = static_cast<const uint8_t*>(ab.Data());
    src_len = ab.ByteLength();
  } else if (info[3].IsTypedArray()) {
    Napi::TypedArray ta = info[3].As<Napi::TypedArray>();
    src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    src_len = ta.ByteLength();
  } else {
    Napi::DataView dv = info[3].As<Napi::DataView>();
    src = static_cast<const uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    src_len = dv.ByteLength();
  }
  if (src_len != bytes)
    throw_invalid(env, "data: has " + std::to_string(src_len) + " bytes, the shape and dtype need " + std::to_string(bytes));
  Status st;
  BufferRef buf = Buffer::create(dev, bytes, &st);
  if (!buf) throw_status(env, st);
  if (dev->kind == DeviceKind::cpu) {
    // The CPU queue may still be running earlier ops, but none of them can touch a buffer that
    // did not exist until now, so the copy can be made here, synchronously.
    if (bytes > 0) std::memcpy(buf->data(), src, bytes);
  } else {
    // JS may change its array once we return: stage a host copy for the device queue.
    auto staging = std::make_shared<std::vector<uint8_t>>(src, src + bytes);
    enqueue_op(dev, {}, {buf}, [buf, staging, bytes](Backend& be) {
      return be.copy_from_host(buf->data(), staging->data(), bytes);
    });
  }
  return NativeTensor::create(env, buf, dtype, std::move(shape));
}

template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
Napi::Value guard(const Napi::CallbackInfo& info) {
  return guarded(info, Fn);
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* inst = new Instance();
  env.SetInstanceData<Instance>(inst);  // deleted by node-addon-api when the environment ends
  inst->completions = CompletionHub::create(env);
  Napi::Function ctor = NativeTensor::define(env);
  inst->tensor_ctor = Napi::Persistent(ctor);
  exports.Set("NativeTensor", ctor);
  exports.Set("buildInfo", Napi::Function::New<guard<build_info>>(env, "buildInfo"));
  exports.Set("hostSyncs", Napi::Function::New<guard<host_syncs>>(env, "hostSyncs"));
  exports.Set("setErrorFactory", Napi::Function::New<guard<set_error_factory>>(env, "setErrorFactory"));
  exports.Set("empty", Napi::Function::New<guard<empty>>(env, "empty"));
  exports.Set("fromBytes", Napi::Function::New<guard<from_bytes>>(env, "fromBytes"));
  Napi::Function model_ctor = NativeModel::define(env);
  inst->model_ctor = Napi::Persistent(model_ctor);
  Napi::Function sequence_ctor = NativeSequence::define(env);
  inst->sequence_ctor = Napi::Persistent(sequence_ctor);
  inst->block_ctor = Napi::Persistent(NativeKvBlock::define(env));
  exports.Set("createModel", Napi::Function::New<guard<NativeModel::create>>(env, "createModel"));
  exports.Set("mapTensors", Napi::Function::New<guard<map_tensors>>(env, "mapTensors"));
  register_ops(env, exports);
  return exports;
}

}  // namespace
}  // namespace kvf::napi

static Napi::Object InitKvfocus(Napi::Env env, Napi::Object exports) { return kvf::napi::init(env, exports); }

NODE_API_MODULE(kvfocus, InitKvfocus)
