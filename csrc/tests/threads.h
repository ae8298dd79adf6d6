// For the tests that run the CPU kernels at several thread counts.
#pragma once

#include <ATen/Parallel.h>

namespace sktest {

// Restores the thread count when a test ends.
struct ThreadCountGuard {
  int saved = at::get_num_threads();
  ~ThreadCountGuard() { at::set_num_threads(saved); }
};

}  // namespace sktest
