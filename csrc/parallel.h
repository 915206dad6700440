// A minimal parallel-for interface so kernels know nothing about onnxruntime or pybind11.
//
// Kernels split their work into `num_tasks` coarse tasks themselves (they know the cost per task)
// and call run(); implementations may execute tasks in any order and on any thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace bort {

// Non-owning reference to a callable `void(size_t task)`; avoids std::function allocations.
class TaskRef {
 public:
  template <typename F>
  TaskRef(const F& f) : obj_(&f), call_([](const void* o, size_t i) { (*static_cast<const F*>(o))(i); }) {}
  void operator()(size_t i) const { call_(obj_, i); }

 private:
  const void* obj_;
  void (*call_)(const void*, size_t);
};

class ParallelFor {
 public:
  virtual ~ParallelFor() = default;
  // Runs task(i) for every i in [0, num_tasks). Returns when all are done.
  virtual void run(size_t num_tasks, TaskRef task) const = 0;
  // How many threads may run tasks at once: used only to pick task granularity.
  virtual size_t concurrency() const = 0;
};

class SerialFor final : public ParallelFor {
 public:
  void run(size_t num_tasks, TaskRef task) const override {
    for (size_t i = 0; i < num_tasks; ++i) task(i);
  }
  size_t concurrency() const override { return 1; }
};

// std::thread fan-out for direct (Python) calls; threads pull tasks from a shared counter.
class ThreadFor final : public ParallelFor {
 public:
  explicit ThreadFor(size_t num_threads) : num_threads_(std::max<size_t>(1, num_threads)) {}

  void run(size_t num_tasks, TaskRef task) const override {
    const size_t workers = std::min(num_threads_, num_tasks);
    if (workers <= 1) {
      for (size_t i = 0; i < num_tasks; ++i) task(i);
      return;
    }
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto worker = [&] {
      try {
        for (size_t i; (i = next.fetch_add(1)) < num_tasks;) task(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (size_t t = 1; t < workers; ++t) threads.emplace_back(worker);
    worker();
    for (auto& th : threads) th.join();
    if (error) std::rethrow_exception(error);
  }
  size_t concurrency() const override { return num_threads_; }

 private:
  size_t num_threads_;
};

// Read once: glibc answers std::thread::hardware_concurrency() by reading /sys on every call (~10 us), which
// kernels that ask on every run (task planning) would pay each time.
inline size_t hardware_threads() {
  static const size_t n = [] {
    const unsigned count = std::thread::hardware_concurrency();
    return count == 0 ? size_t{1} : size_t{count};
  }();
  return n;
}

// Splits `n` items into tasks of at least `min_items_per_task`, aiming at ~4 tasks per thread
// so uneven threads still balance, without making tiny tasks whose dispatch costs more than the work.
inline size_t choose_num_tasks(size_t n, size_t min_items_per_task, size_t concurrency) {
  if (n == 0) return 0;
  const size_t by_size = std::max<size_t>(1, n / std::max<size_t>(1, min_items_per_task));
  const size_t wanted = concurrency <= 1 ? 1 : 4 * concurrency;
  return std::min(by_size, wanted);
}

// Runs fn(r0, r1) over blocks of consecutive rows of a [rows, width] row-wise kernel. Tasks hold >= 8K
// elements (a few microseconds): more than waking a pool thread costs, so even b1 s32 shapes split
// across two threads.
template <typename F>
void for_each_row_block(int64_t rows, int64_t width, const ParallelFor& pf, const F& fn) {
  if (rows <= 0) return;
  const size_t rows_per_min_task =
      static_cast<size_t>(std::max<int64_t>(1, (int64_t{1} << 13) / std::max<int64_t>(width, 1)));
  const size_t tasks = choose_num_tasks(static_cast<size_t>(rows), rows_per_min_task, pf.concurrency());
  const int64_t per_task = (rows + static_cast<int64_t>(tasks) - 1) / static_cast<int64_t>(tasks);
  pf.run(tasks, [&](size_t t) {
    const int64_t r0 = static_cast<int64_t>(t) * per_task, r1 = std::min(rows, r0 + per_task);
    if (r0 < r1) fn(r0, r1);
  });
}

}  // namespace bort
