// Per-environment state (main thread and each worker_thread get their own), so the addon is
// safe to load in workers: the JS classes it needs, the tensor constructor, and the hub that
// settles this environment's promises.
#pragma once

#include <napi.h>

#include <memory>

#include "async.h"

namespace kvf::napi {

struct Instance {
  Napi::FunctionReference error_factory;  // (code, message) => KvfocusError subclass
  Napi::FunctionReference tensor_ctor;
  Napi::FunctionReference model_ctor;
  Napi::FunctionReference sequence_ctor;
  Napi::FunctionReference block_ctor;
  std::shared_ptr<CompletionHub> completions;

  static Instance* get(Napi::Env env) { return env.GetInstanceData<Instance>(); }
};

}  // namespace kvf::napi
