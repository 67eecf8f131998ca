// A fixed pool of worker threads behind kvf::cpu::parallel_for. One pool per process: the CPU
// job queue is the only caller on the hot path, so chunks never compete with another op.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../kernels/parallel.h"

namespace kvf::cpu {
namespace {

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(std::max(1, threads)) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int threads() const { return threads_; }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    const int64_t max_chunks = (n + grain - 1) / grain;
    // Small jobs, a one-thread pool, or a nested call from inside a chunk: run inline.
    if (threads_ == 1 || max_chunks == 1 || in_pool_) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->chunks = std::min<int64_t>(max_chunks, static_cast<int64_t>(threads_) * 4);
    job->pending = job->chunks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = job;
      ++generation_;
    }
    cv_.notify_all();
    work(*job);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return job->pending == 0; });
    job_.reset();
  }

 private:
  // One parallel region. Workers hold it by shared_ptr, so a worker that wakes late sees an
  // exhausted counter of its own region, never the chunks of the next one.
  struct Job {
    const std::function<void(int64_t, int64_t)>* fn = nullptr;
    int64_t n = 0;
    int64_t chunks = 0;
    std::atomic<int64_t> next{0};
    int64_t pending = 0;  // guarded by mu_
  };

  void work(Job& job) {
    in_pool_ = true;
    for (;;) {
      const int64_t c = job.next.fetch_add(1);
      if (c >= job.chunks) break;
      (*job.fn)(job.n * c / job.chunks, job.n * (c + 1) / job.chunks);
      std::lock_guard<std::mutex> lock(mu_);
      if (--job.pending == 0) done_cv_.notify_all();
    }
    in_pool_ = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || (generation_ != seen && job_ != nullptr); });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      work(*job);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  static thread_local bool in_pool_;
};

thread_local bool ThreadPool::in_pool_ = false;

int configured_threads() {
  if (const char* env = std::getenv("KVFOCUS_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

ThreadPool& pool() {
  // Intentionally leaked: joining threads from a static destructor at process exit can race
  // with Node's own teardown.
  static ThreadPool* p = new ThreadPool(configured_threads());
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

int num_threads() { return pool().threads(); }

}  // namespace kvf::cpu
