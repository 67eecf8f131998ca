// Completions: Promises settled on the JavaScript thread when jobs on a device queue end.
//
// Device queues are process-wide and outlive any one environment (the main thread, each
// worker_thread), so a job may finish after the environment that queued it has gone
// (worker.terminate(), process.exit() in a worker). Each pending promise has its own
// thread-safe function (referenced, so the event loop waits for it, and released exactly once:
// by the job that finishes it, or on the JS thread if the call fails before handing the promise
// out). Each environment has a CompletionHub: a liveness flag that job threads check under a
// lock before touching the environment's thread-safe functions or memory. Teardown clears the
// flag, waits for jobs writing into the environment's memory, and drops its pending promises;
// later results are discarded on the job thread. Nothing here throws across threads.
#pragma once

#include <napi.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../kernels/common.h"

namespace kvf::napi {

// JS values a completion keeps alive until it settles (an ArrayBuffer a job writes into).
class KeptValues {
 public:
  Napi::Value at(size_t i) const { return refs_.at(i).Value(); }

 private:
  friend class CompletionHub;
  std::vector<Napi::Reference<Napi::Value>> refs_;
};

using Resolver = std::function<Napi::Value(Napi::Env, const KeptValues&)>;

class CompletionHub {
 public:
  // JS thread, once per environment at module load: registers the teardown hook.
  static std::shared_ptr<CompletionHub> create(Napi::Env env);

 private:
  friend class Completion;
  friend class EnvWriteGuard;
  struct Pending {
    Napi::Promise::Deferred deferred;
    KeptValues kept;
  };
  struct Settlement {
    std::shared_ptr<CompletionHub> hub;
    uint64_t id;
    Status status;
    Resolver resolver;
  };

  CompletionHub() : js_thread_(std::this_thread::get_id()) {}
  static void call_js(napi_env env, napi_value, void*, void* data);
  static void on_env_teardown(void* data);

  // JS thread.
  uint64_t open(Napi::Env env);
  void keep(uint64_t id, Napi::Value v) { pending_.at(id).kept.refs_.push_back(Napi::Persistent(v)); }
  Napi::Promise promise(uint64_t id) const { return pending_.at(id).deferred.Promise(); }
  void forget(uint64_t id) { pending_.erase(id); }
  void settle(Napi::Env env, Settlement& s);
  bool on_js_thread() const { return std::this_thread::get_id() == js_thread_; }

  // Any thread.
  bool alive() const;
  void post(napi_threadsafe_function tsfn, Settlement* s);
  bool begin_write();
  void end_write();

  std::thread::id js_thread_;
  mutable std::mutex mu_;
  std::condition_variable writers_done_;
  bool alive_ = true;  // guarded by mu_; cleared at teardown
  int writers_ = 0;    // guarded by mu_; jobs writing into this environment's memory now
  // JS thread only.
  std::unordered_map<uint64_t, Pending> pending_;
  uint64_t next_id_ = 1;
};

// A job's handle on one pending promise: created on the JS thread, finished from any thread.
class Completion {
 public:
  explicit Completion(Napi::Env env);
  // Unfinished: on the JS thread (the call failed before handing out the promise) the promise
  // is dropped; elsewhere (a job dropped without running) it is rejected.
  ~Completion();
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;

  Napi::Promise promise() const { return hub_->promise(id_); }  // JS thread
  void keep(Napi::Value v) { hub_->keep(id_, v); }               // JS thread

  // Any thread: the environment has been torn down, nobody will see the result.
  bool cancelled() const { return !hub_->alive(); }
  const std::shared_ptr<CompletionHub>& hub() const { return hub_; }

  // Any thread, at most once: resolve with resolver(env, kept) on success, else reject with the
  // typed error for `status`. Discarded if the environment has gone.
  void finish(Status status, Resolver resolver);

 private:
  std::shared_ptr<CompletionHub> hub_;
  uint64_t id_;
  napi_threadsafe_function tsfn_ = nullptr;
  std::unique_ptr<CompletionHub::Settlement> settlement_;  // null once finished
};

// Held by a job while it writes into memory the environment owns (a kept ArrayBuffer): the
// environment's teardown waits for it. False when the environment has already gone; then the
// job must not write.
class EnvWriteGuard {
 public:
  explicit EnvWriteGuard(const Completion& c) : hub_(c.hub().get()), held_(hub_->begin_write()) {}
  ~EnvWriteGuard() {
    if (held_) hub_->end_write();
  }
  EnvWriteGuard(const EnvWriteGuard&) = delete;
  EnvWriteGuard& operator=(const EnvWriteGuard&) = delete;
  explicit operator bool() const { return held_; }

 private:
  CompletionHub* hub_;
  bool held_;
};

}  // namespace kvf::napi
