// The CPU kernels' threads: plain std::threads, no OpenMP. torch brings its own OpenMP runtime;
// a second one linked here would keep its own spinning pool beside torch's (oversubscribed
// cores) and tie the module to the build machine's libgomp.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace scalselect {

// How many threads a kernel may use: what Python set last (torch.get_num_threads(), before each
// call), else the machine's hardware threads.
int num_threads();
void set_num_threads(int n);

// The number of workers parallel_for(tasks, threads, ...) runs: the size of per-worker scratch.
inline int worker_count(int64_t tasks, int threads) {
  return int(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
}

// Calls body(task, worker) once for every task in [0, tasks), on at most `threads` workers
// (worker 0 is the calling thread; worker < worker_count(tasks, threads)). Each worker takes the
// next task not yet taken, so a core that another process holds slows only its own share. A
// thread that cannot be started leaves its share to the others. An exception thrown by body
// (std::bad_alloc, say) stops the workers taking tasks and is rethrown here once all have joined.
template <typename Body>
void parallel_for(int64_t tasks, int threads, Body&& body) {
  const int workers = worker_count(tasks, threads);
  if (workers == 1) {
    for (int64_t t = 0; t < tasks; ++t) body(t, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr failed;
  std::mutex failed_lock;
  auto work = [&](int worker) {
    try {
      for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) body(t, worker);
    } catch (...) {
      std::lock_guard<std::mutex> hold(failed_lock);
      if (!failed) failed = std::current_exception();
      next.store(tasks);  // the others stop at their next task
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(size_t(workers - 1));
  for (int w = 1; w < workers; ++w) {
    try {
      pool.emplace_back(work, w);
    } catch (const std::system_error&) {
      break;  // out of threads: the ones running (and this one) do the rest
    }
  }
  work(0);
  for (auto& thread : pool) thread.join();
  if (failed) std::rethrow_exception(failed);
}

}  // namespace scalselect
