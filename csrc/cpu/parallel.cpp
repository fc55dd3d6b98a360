// The thread count the CPU kernels use (parallel.h).
#include "scalselect/parallel.h"

namespace scalselect {
namespace {
std::atomic<int> g_threads{0};  // 0: not set
}

int num_threads() {
  const int set = g_threads.load(std::memory_order_relaxed);
  return set > 0 ? set : int(std::max(1u, std::thread::hardware_concurrency()));
}

void set_num_threads(int n) { g_threads.store(std::max(1, n), std::memory_order_relaxed); }

}  // namespace scalselect
