#include "job_queue.h"

#include <memory>

namespace kvf {

JobQueue::JobQueue() : worker_([this] { loop(); }) {}

// Devices live for the whole process, so this only runs if a Device is destroyed explicitly.
JobQueue::~JobQueue() {
  push({});  // an empty job stops the worker
  if (worker_.joinable()) worker_.join();
}

void JobQueue::push(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

std::shared_future<void> JobQueue::fence(std::function<void()> before_signal) {
  auto done = std::make_shared<std::promise<void>>();
  std::shared_future<void> f = done->get_future().share();
  push([done, before_signal = std::move(before_signal)] {
    if (before_signal) before_signal();
    done->set_value();
  });
  return f;
}

void JobQueue::loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !jobs_.empty(); });
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    if (!job) return;
    try {
      job();
    } catch (...) {
      // An exception leaving this thread would terminate the process. What the job owned is
      // released with it (a completion it held rejects).
    }
  }
}

}  // namespace kvf
