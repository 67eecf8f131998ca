#include "async.h"

#include "errors.h"
#include "instance.h"

namespace kvf::napi {

std::shared_ptr<CompletionHub> CompletionHub::create(Napi::Env env) {
  std::shared_ptr<CompletionHub> hub(new CompletionHub());
  // The hook holds the hub, so it outlives the instance data whichever is torn down first.
  napi_add_env_cleanup_hook(env, on_env_teardown, new std::shared_ptr<CompletionHub>(hub));
  return hub;
}

// Environment teardown, on the JS thread while references can still be deleted and before any
// thread-safe function of the environment is freed (Node frees them when handles close, after
// the cleanup hooks). From here on job threads leave the environment alone; jobs writing into
// its memory right now are waited for.
void CompletionHub::on_env_teardown(void* data) {
  std::unique_ptr<std::shared_ptr<CompletionHub>> holder(static_cast<std::shared_ptr<CompletionHub>*>(data));
  CompletionHub& h = **holder;
  {
    std::unique_lock<std::mutex> lock(h.mu_);
    h.alive_ = false;
    h.writers_done_.wait(lock, [&h] { return h.writers_ == 0; });
  }
  // Node closes the pending thread-safe functions itself; results still queued in them reach
  // call_js without an environment and are dropped there.
  h.pending_.clear();
}

void CompletionHub::call_js(napi_env env, napi_value, void*, void* data) {
  std::unique_ptr<Settlement> s(static_cast<Settlement*>(data));
  if (env == nullptr || !s) return;  // the function is being torn down with its environment
  s->hub->settle(Napi::Env(env), *s);
}

uint64_t CompletionHub::open(Napi::Env env) {
  const uint64_t id = next_id_++;
  pending_.emplace(id, Pending{Napi::Promise::Deferred::New(env), {}});
  return id;
}

void CompletionHub::settle(Napi::Env env, Settlement& s) {
  auto it = pending_.find(s.id);
  if (it == pending_.end()) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  try {
    Napi::HandleScope scope(env);
    if (!s.status.ok()) {
      p.deferred.Reject(make_error(env, s.status).Value());
      return;
    }
    Napi::Value value;
    try {
      value = s.resolver ? s.resolver(env, p.kept) : env.Undefined();
    } catch (const Napi::Error& e) {
      p.deferred.Reject(e.Value());
      return;
    } catch (const std::bad_alloc&) {
      p.deferred.Reject(make_error(env, out_of_memory("host memory exhausted")).Value());
      return;
    } catch (const std::exception& e) {
      p.deferred.Reject(make_error(env, Status(StatusCode::internal, e.what())).Value());
      return;
    }
    p.deferred.Resolve(value);
  } catch (...) {
    // JavaScript can no longer run here (the worker is being terminated): the promise goes
    // away unsettled with its environment. An exception must not leave this callback.
  }
}

bool CompletionHub::alive() const {
  std::lock_guard<std::mutex> lock(mu_);
  return alive_;
}

void CompletionHub::post(napi_threadsafe_function tsfn, Settlement* s) {
  std::unique_ptr<Settlement> owned(s);  // freed after the lock unless queued
  std::lock_guard<std::mutex> lock(mu_);
  // Teardown clears alive_ under this lock before Node can free the function, so it is valid
  // here; after teardown the result is dropped on this thread.
  if (!alive_) return;
  if (napi_call_threadsafe_function(tsfn, s, napi_tsfn_nonblocking) == napi_ok) owned.release();
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
}

bool CompletionHub::begin_write() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!alive_) return false;
  ++writers_;
  return true;
}

void CompletionHub::end_write() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --writers_;
  }
  writers_done_.notify_all();
}

// Everything that can fail is done here, on the JS thread, so finishing on a job thread never
// allocates (running out of memory there would leave the promise, and the event loop, pending).
Completion::Completion(Napi::Env env) : hub_(Instance::get(env)->completions), id_(hub_->open(env)) {
  try {
    settlement_.reset(new CompletionHub::Settlement{hub_, id_, {}, {}});
  } catch (...) {
    hub_->forget(id_);
    throw;
  }
  napi_status st = napi_create_threadsafe_function(env, nullptr, nullptr, Napi::String::New(env, "kvfocus.completion"), 0, 1,
                                                   nullptr, nullptr, nullptr, CompletionHub::call_js, &tsfn_);
  if (st != napi_ok) {
    hub_->forget(id_);
    throw Napi::Error::New(env, "kvfocus: cannot create a completion");
  }
}

Completion::~Completion() {
  if (!settlement_) return;
  if (hub_->on_js_thread()) {
    // The call failed before handing the promise out: drop it and let the loop go.
    hub_->forget(id_);
    if (hub_->alive()) napi_release_threadsafe_function(tsfn_, napi_tsfn_release);
  } else {
    finish(Status(StatusCode::internal, "the job was dropped before it finished"), nullptr);
  }
}

void Completion::finish(Status status, Resolver resolver) {
  if (!settlement_) return;
  settlement_->status = std::move(status);
  settlement_->resolver = std::move(resolver);
  hub_->post(tsfn_, settlement_.release());
}

}  // namespace kvf::napi
