// A fixed pool of worker threads for the CPU backend's data-parallel loops.
//
// Run(num_tasks, fn) calls fn(task) for every task in [0, num_tasks), spread
// over the workers and the calling thread, and returns when all are done.
// Workers spin briefly between jobs (a decode step issues hundreds of small
// jobs) and then sleep on a condition variable, so an idle pool costs nothing.
// Thread-safety: Run must be called from one thread at a time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moeserve {

class ThreadPool {
 public:
  // num_threads counts the caller; 0 means one per hardware thread.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  void Run(int num_tasks, const std::function<void(int)>& fn);

  // Splits [0, n) into contiguous ranges of at least `grain` items, about
  // `chunks_per_thread` per thread, and calls fn(begin, end) on each.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn,
                   int chunks_per_thread = 4);

 private:
  void WorkerLoop();
  void Work();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> next_task_{0};
  std::atomic<int> busy_{0};
  std::atomic<bool> stop_{false};
  int num_tasks_ = 0;
  const std::function<void(int)>* fn_ = nullptr;
};

}  // namespace moeserve
