// One job queue per device: a worker thread that runs device work in submission order, so
// JavaScript never waits on a kernel and ops on one device never race each other.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace kvf {

class JobQueue {
 public:
  JobQueue();
  ~JobQueue();
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  void push(std::function<void()> job);

  // A future that becomes ready after every job pushed before this call has run. Jobs on
  // another queue wait on it to order cross-device copies (a fence only waits on earlier
  // work, so two queues can never wait on each other in a cycle).
  std::shared_future<void> fence(std::function<void()> before_signal = {});

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::thread worker_;
};

}  // namespace kvf
