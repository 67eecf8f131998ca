#include "async.h"

#include "errors.h"

namespace kvf::napi {

Completion::Completion(Napi::Env env, const char* resource)
    : deferred_(Napi::Promise::Deferred::New(env)), tsfn_(CompletionTsfn::New(env, resource, 0, 1)) {}

void Completion::finish(Status status, Resolver resolver) {
  status_ = std::move(status);
  resolver_ = std::move(resolver);
  auto* call = new CompletionCall{shared_from_this()};
  if (tsfn_.BlockingCall(call) != napi_ok) {
    // The environment is shutting down; nobody is left to settle. Leak the call on purpose:
    // its references may only be released on the (gone) JS thread.
    return;
  }
  tsfn_.Release();
}

void Completion::settle(Napi::Env env) {
  Napi::HandleScope scope(env);
  if (status_.ok()) {
    try {
      deferred_.Resolve(resolver_(env, *this));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(make_error(env, Status(StatusCode::internal, e.what())).Value());
    }
  } else {
    deferred_.Reject(make_error(env, status_).Value());
  }
  // Release JS references here, on the JS thread, whichever thread drops the last owner.
  kept_.clear();
  resolver_ = nullptr;
}

void completion_call_js(Napi::Env env, Napi::Function, std::nullptr_t*, CompletionCall* call) {
  if (env != nullptr) call->completion->settle(env);
  delete call;
}

}  // namespace kvf::napi
