// Per-environment state (main thread and each worker_thread get their own), so the addon is
// safe to load in workers: the JS classes it needs and the tensor constructor.
#pragma once

#include <napi.h>

namespace kvf::napi {

struct Instance {
  Napi::FunctionReference error_factory;  // (code, message) => KvfocusError subclass
  Napi::FunctionReference tensor_ctor;
  Napi::FunctionReference model_ctor;
  Napi::FunctionReference sequence_ctor;

  static Instance* get(Napi::Env env) { return env.GetInstanceData<Instance>(); }
};

}  // namespace kvf::napi
