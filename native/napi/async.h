// Completion: a Promise settled on the JavaScript thread when a job on a device queue ends.
// The job calls finish() from its own thread; a thread-safe function carries the result back.
#pragma once

#include <napi.h>

#include <functional>
#include <memory>
#include <vector>

#include "../kernels/common.h"

namespace kvf::napi {

class Completion;
struct CompletionCall {
  std::shared_ptr<Completion> completion;
};
void completion_call_js(Napi::Env env, Napi::Function, std::nullptr_t*, CompletionCall* call);
using CompletionTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, CompletionCall, completion_call_js>;

class Completion : public std::enable_shared_from_this<Completion> {
 public:
  using Resolver = std::function<Napi::Value(Napi::Env, Completion&)>;

  // Constructed on the JS thread.
  Completion(Napi::Env env, const char* resource);

  Napi::Promise promise() const { return deferred_.Promise(); }

  // Keeps a JS value alive until the promise settles (JS thread only).
  void keep(Napi::Value v) { kept_.push_back(Napi::Persistent(v)); }
  Napi::Value kept(size_t i) const { return kept_.at(i).Value(); }

  // From any thread, exactly once: resolve with resolver(env) on success, else reject with the
  // typed error for `status`.
  void finish(Status status, Resolver resolver);

 private:
  friend void completion_call_js(Napi::Env, Napi::Function, std::nullptr_t*, CompletionCall*);
  void settle(Napi::Env env);

  Napi::Promise::Deferred deferred_;
  CompletionTsfn tsfn_;
  std::vector<Napi::Reference<Napi::Value>> kept_;
  Status status_;
  Resolver resolver_;
};

}  // namespace kvf::napi
