// Self-tests of the CPU emulation of CUDA (csrc/tests/emulation), with toy kernels: the
// built-in variables, the three schedules, barrier checking, dynamic shared memory and its
// limits, launch validation and the runtime calls the kernels use.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/harness.h"

namespace {

using sinkhorn::emulation::launch;
using sinkhorn::emulation::Schedule;

constexpr Schedule kSchedules[] = {Schedule::kForward, Schedule::kReverse, Schedule::kShuffled};

const char* name(Schedule s) {
  switch (s) {
    case Schedule::kForward: return "forward";
    case Schedule::kReverse: return "reverse";
    case Schedule::kShuffled: return "shuffled";
  }
  return "?";
}

bool contains(const char* text, const std::string& part) {
  return std::string(text).find(part) != std::string::npos;
}

// ---- Toy kernels ------------------------------------------------------------------------------

// blockIdx, threadIdx, blockDim, gridDim.
struct Seen {
  unsigned v[4][3];
};

__device__ void record(Seen* out) {
  const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  Seen& s = out[block * (blockDim.x * blockDim.y * blockDim.z) + thread];
  s = Seen{{{blockIdx.x, blockIdx.y, blockIdx.z},
            {threadIdx.x, threadIdx.y, threadIdx.z},
            {blockDim.x, blockDim.y, blockDim.z},
            {gridDim.x, gridDim.y, gridDim.z}}};
}

// Records the built-ins twice: the second time after other fibers ran.
__global__ void builtins_kernel(Seen* before, Seen* after) {
  record(before);
  __syncthreads();
  record(after);
}

// Sums i < n over each block of any size up to 128 threads: a shared-memory tree.
// Without the barrier after the write, a thread reads partial[t + half] before (or after)
// its owner wrote it, depending on the order the threads run in.
template <bool kBarrierAfterWrite>
__global__ void __launch_bounds__(128) block_sum_kernel(int64_t n, int64_t* block_sums) {
  __shared__ int64_t partial[128];
  const unsigned t = threadIdx.x;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + t;
  partial[t] = i < n ? i : 0;
  if constexpr (kBarrierAfterWrite) __syncthreads();
  unsigned width = 1;
  while (width < blockDim.x) width *= 2;
  for (unsigned half = width / 2; half > 0; half /= 2) {
    if (t < half && t + half < blockDim.x) partial[t] += partial[t + half];
    __syncthreads();
  }
  if (t == 0) block_sums[blockIdx.x] = partial[0];
}

__global__ void early_return_kernel(int* out) {
  if (threadIdx.x < 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x % 2 == 0) __syncthreads();
  out[threadIdx.x] = 1;
}

// Correct in blocks 0 and 1, broken after the first barrier of block 2.
__global__ void late_mismatch_kernel(int* blocks_done) {
  __syncthreads();
  if (blockIdx.x == 2 && threadIdx.x == 3) return;
  __syncthreads();
  if (threadIdx.x == 0) ++blocks_done[blockIdx.x];
}

// Logs which thread runs, in order, before and after a barrier.
__global__ void order_kernel(unsigned* log, unsigned* next) {
  log[(*next)++] = threadIdx.x;
  __syncthreads();
  log[(*next)++] = threadIdx.x;
}

// Counts the NaNs a thread reads from dynamic shared memory it did not write, then writes it.
template <typename T>
__global__ void shared_poison_kernel(int* nan_reads, uintptr_t* misalignment) {
  T* s = static_cast<T*>(sinkhorn::emulation::dynamic_shared_memory());
  nan_reads[blockIdx.x * blockDim.x + threadIdx.x] = std::isnan(s[threadIdx.x]) ? 1 : 0;
  __syncthreads();
  s[threadIdx.x] = T(threadIdx.x);  // the next block must see NaN again
  if (threadIdx.x == 0) *misalignment = reinterpret_cast<uintptr_t>(s) % 16;
}

// Touches every byte of `bytes` of dynamic shared memory; counts those that were not 0xFF.
__global__ void fill_shared_kernel(size_t bytes, int* not_poisoned) {
  unsigned char* s = static_cast<unsigned char*>(sinkhorn::emulation::dynamic_shared_memory());
  for (size_t k = threadIdx.x; k < bytes; k += blockDim.x) {
    if (s[k] != 0xFF) ++*not_poisoned;
    s[k] = 0;
  }
}

__global__ void count_kernel(int* count) { ++*count; }

struct Counting {
  int* conversions;
  operator int() const {
    ++*conversions;
    return 7;
  }
};

struct Pair {
  int a;
  double b;
};

// Every thread must see the launch's values, whatever the others did to their copies.
__global__ void by_value_kernel(int n, int64_t wide, Pair pair, int* out) {
  const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
  out[t] = n + static_cast<int>(wide) + pair.a + static_cast<int>(pair.b);
  n = -1000;
  pair.a = -1000;
  __syncthreads();
  out[t] += n == -1000 && pair.a == -1000 ? 0 : 1;
}

__global__ void nested_launch_kernel(cudaError_t* result, int* count) {
  if (threadIdx.x == 0) *result = launch(count_kernel, 1, 1, 0, nullptr, count);
}

// ---- Tests ------------------------------------------------------------------------------------

SK_TEST(emulation, builtins) {
  const dim3 grid(3, 2, 2), block(5, 3, 2);
  const unsigned threads = block.x * block.y * block.z, blocks = grid.x * grid.y * grid.z;
  for (const Schedule schedule : kSchedules) {
    sinkhorn::emulation::set_schedule(schedule, 7);
    std::vector<Seen> before(blocks * threads, Seen{{{~0u, ~0u, ~0u}}});
    std::vector<Seen> after = before;
    SK_CHECK(launch(builtins_kernel, grid, block, 0, nullptr, before.data(), after.data()) ==
             cudaSuccess)
        << sinkhorn::emulation::last_error_message();
    int wrong = 0;
    for (unsigned b = 0; b < blocks; ++b) {
      for (unsigned t = 0; t < threads; ++t) {
        const unsigned expected[4][3] = {
            {b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)},
            {t % block.x, t / block.x % block.y, t / (block.x * block.y)},
            {block.x, block.y, block.z},
            {grid.x, grid.y, grid.z}};
        for (const Seen* seen : {&before[b * threads + t], &after[b * threads + t]}) {
          wrong += std::memcmp(seen->v, expected, sizeof expected) != 0;
        }
      }
    }
    SK_CHECK(wrong == 0) << wrong << " wrong built-ins under the " << name(schedule)
                         << " schedule";
  }
  // A 1-D launch from plain integers.
  std::vector<Seen> before(7 * 33), after(7 * 33);
  SK_CHECK(launch(builtins_kernel, 7, 33, 0, nullptr, before.data(), after.data()) ==
           cudaSuccess);
  SK_CHECK(after[7 * 33 - 1].v[0][0] == 6 && after[7 * 33 - 1].v[1][0] == 32 &&
           after[0].v[2][1] == 1 && after[0].v[3][2] == 1);
  sinkhorn::emulation::set_schedule(Schedule::kForward);
}

SK_TEST(emulation, shared_memory_reduction) {
  const int64_t n = 1000;
  const unsigned threads = 96, blocks = (n + threads - 1) / threads;  // the last block is partial
  for (const Schedule schedule : kSchedules) {
    for (const unsigned seed : {1u, 2u, 3u}) {
      sinkhorn::emulation::set_schedule(schedule, seed);
      std::vector<int64_t> sums(blocks, -1);
      SK_CHECK(launch(block_sum_kernel<true>, blocks, threads, 0, nullptr, n, sums.data()) ==
               cudaSuccess);
      int64_t total = 0;
      for (unsigned b = 0; b < blocks; ++b) {
        const int64_t lo = int64_t(b) * threads, hi = std::min<int64_t>(lo + threads, n);
        SK_CHECK(sums[b] == (hi - 1 + lo) * (hi - lo) / 2) << "block " << b;
        total += sums[b];
      }
      SK_CHECK(total == n * (n - 1) / 2) << name(schedule) << " schedule, seed " << seed;
    }
  }
  sinkhorn::emulation::set_schedule(Schedule::kForward);
}

SK_TEST(emulation, missing_barrier_is_exposed) {
  const int64_t n = 1000;
  const unsigned threads = 96, blocks = (n + threads - 1) / threads;
  int wrong_schedules = 0;
  for (const Schedule schedule : kSchedules) {
    sinkhorn::emulation::set_schedule(schedule, 1);
    std::vector<int64_t> sums(blocks, 0);
    SK_CHECK(launch(block_sum_kernel<false>, blocks, threads, 0, nullptr, n, sums.data()) ==
             cudaSuccess);
    // Per block: stale values of the previous block can even make the total come out right.
    int wrong_blocks = 0;
    for (unsigned b = 0; b < blocks; ++b) {
      const int64_t lo = int64_t(b) * threads, hi = std::min<int64_t>(lo + threads, n);
      wrong_blocks += sums[b] != (hi - 1 + lo) * (hi - lo) / 2;
    }
    if (wrong_blocks != 0) {
      ++wrong_schedules;
      sktest::info(std::string("without the barrier, the ") + name(schedule) + " schedule gets " +
                   std::to_string(wrong_blocks) + " of " + std::to_string(blocks) +
                   " block sums wrong");
    }
  }
  SK_CHECK(wrong_schedules >= 1) << "the missing __syncthreads() went unnoticed";
  sinkhorn::emulation::set_schedule(Schedule::kForward);
}

SK_TEST(emulation, barrier_mismatch_fails_the_launch) {
  std::vector<int> out(32, 0);
  cudaGetLastError();  // an earlier test's error
  SK_CHECK(cudaGetLastError() == cudaSuccess);
  SK_CHECK(launch(early_return_kernel, 2, 32, 0, nullptr, out.data()) == cudaErrorLaunchFailure);
  const char* message = sinkhorn::emulation::last_error_message();
  SK_CHECK(contains(message, "block (0, 0, 0)") &&
           contains(message, "27 of 32 threads wait at __syncthreads() while 5 returned"))
      << message;
  sktest::info(message);
  SK_CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  SK_CHECK(cudaGetLastError() == cudaSuccess);
  for (const int v : out) SK_CHECK(v == 0);  // nobody got past the barrier

  SK_CHECK(launch(divergent_barrier_kernel, 1, 10, 0, nullptr, out.data()) ==
           cudaErrorLaunchFailure);
  SK_CHECK(contains(sinkhorn::emulation::last_error_message(), "5 of 10 threads wait"))
      << sinkhorn::emulation::last_error_message();

  std::vector<int> done(4, 0);
  SK_CHECK(launch(late_mismatch_kernel, 4, 8, 0, nullptr, done.data()) == cudaErrorLaunchFailure);
  SK_CHECK(contains(sinkhorn::emulation::last_error_message(), "block (2, 0, 0) after 1 barrier: 7 of 8"))
      << sinkhorn::emulation::last_error_message();
  SK_CHECK(done[0] == 1 && done[1] == 1 && done[2] == 0 && done[3] == 0);  // it stopped there
  SK_CHECK(cudaGetLastError() == cudaErrorLaunchFailure);

  // The abandoned fibers do not get in the way of the next launch.
  std::vector<int64_t> sums(3, 0);
  SK_CHECK(launch(block_sum_kernel<true>, 3, 96, 0, nullptr, int64_t(288), sums.data()) ==
           cudaSuccess);
  SK_CHECK(sums[0] + sums[1] + sums[2] == 288 * 287 / 2);
  SK_CHECK(cudaGetLastError() == cudaSuccess);

  // A kernel cannot launch a kernel.
  cudaError_t nested = cudaSuccess;
  int count = 0;
  SK_CHECK(launch(nested_launch_kernel, 1, 4, 0, nullptr, &nested, &count) == cudaSuccess);
  SK_CHECK(nested == cudaErrorLaunchFailure && count == 0);
  SK_CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
}

SK_TEST(emulation, schedules) {
  const unsigned threads = 8, blocks = 2, entries = 2 * threads * blocks;
  const auto run = [&](Schedule schedule, unsigned seed) {
    sinkhorn::emulation::set_schedule(schedule, seed);
    std::vector<unsigned> log(entries, ~0u);
    unsigned next = 0;
    SK_CHECK(launch(order_kernel, blocks, threads, 0, nullptr, log.data(), &next) == cudaSuccess);
    SK_CHECK(next == entries);
    return log;
  };
  const std::vector<unsigned> forward = run(Schedule::kForward, 0);
  const std::vector<unsigned> reverse = run(Schedule::kReverse, 0);
  for (unsigned k = 0; k < entries; ++k) {
    SK_CHECK(forward[k] == k % threads);
    SK_CHECK(reverse[k] == threads - 1 - k % threads);
  }
  const std::vector<unsigned> shuffled = run(Schedule::kShuffled, 5);
  std::vector<std::vector<unsigned>> phases;
  for (unsigned p = 0; p < entries / threads; ++p) {
    phases.emplace_back(shuffled.begin() + p * threads, shuffled.begin() + (p + 1) * threads);
    std::vector<int> seen(threads, 0);
    for (const unsigned t : phases.back()) ++seen[t < threads ? t : 0];
    for (const int c : seen) SK_CHECK(c == 1) << "phase " << p << " is not a permutation";
  }
  bool all_same = true;
  for (const auto& phase : phases) all_same = all_same && phase == phases[0];
  SK_CHECK(!all_same) << "the shuffled order is not re-drawn per phase and block";
  SK_CHECK(run(Schedule::kShuffled, 5) == shuffled) << "the same seed gives another order";
  SK_CHECK(run(Schedule::kShuffled, 6) != shuffled) << "another seed gives the same order";
  sinkhorn::emulation::set_schedule(Schedule::kForward);
}

SK_TEST(emulation, dynamic_shared_memory) {
  using sinkhorn::emulation::max_shared_memory_per_block_optin;
  using sinkhorn::emulation::set_max_shared_memory_per_block_optin;
  SK_CHECK(max_shared_memory_per_block_optin() == 232448);
  SK_CHECK(sinkhorn::emulation::dynamic_shared_memory() == nullptr);  // outside a launch

  // Poisoned with NaN at the start of every block, 16-byte aligned.
  const unsigned threads = 24, blocks = 3;
  std::vector<int> nan_reads(threads * blocks, 0);
  uintptr_t misalignment = 1;
  SK_CHECK(launch(shared_poison_kernel<float>, blocks, threads, threads * sizeof(float), nullptr,
                  nan_reads.data(), &misalignment) == cudaSuccess);
  for (const int v : nan_reads) SK_CHECK(v == 1);
  SK_CHECK(misalignment == 0);
  SK_CHECK(launch(shared_poison_kernel<double>, blocks, threads, threads * sizeof(double), nullptr,
                  nan_reads.data(), &misalignment) == cudaSuccess);
  for (const int v : nan_reads) SK_CHECK(v == 1);

  // 48 KiB by default; more after cudaFuncSetAttribute, up to the opt-in maximum.
  int not_poisoned = 0;
  const size_t kib48 = 48 * 1024, kib64 = 64 * 1024;
  SK_CHECK(launch(fill_shared_kernel, 2, 64, kib48, nullptr, kib48, &not_poisoned) == cudaSuccess);
  SK_CHECK(not_poisoned == 0);
  SK_CHECK(launch(fill_shared_kernel, 2, 64, kib48 + 16, nullptr, kib48 + 16, &not_poisoned) ==
           cudaErrorInvalidValue);
  SK_CHECK(contains(sinkhorn::emulation::last_error_message(), "49168 bytes"))
      << sinkhorn::emulation::last_error_message();
  SK_CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  SK_CHECK(cudaFuncSetAttribute(fill_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(kib64)) == cudaSuccess);
  SK_CHECK(launch(fill_shared_kernel, 2, 64, kib64, nullptr, kib64, &not_poisoned) == cudaSuccess);
  SK_CHECK(not_poisoned == 0);
  SK_CHECK(launch(fill_shared_kernel, 2, 64, kib64 + 1, nullptr, kib64 + 1, &not_poisoned) ==
           cudaErrorInvalidValue);
  SK_CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  const int optin = max_shared_memory_per_block_optin();
  SK_CHECK(cudaFuncSetAttribute(fill_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                optin + 1) == cudaErrorInvalidValue);
  SK_CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  SK_CHECK(cudaFuncSetAttribute(fill_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                optin) == cudaSuccess);
  SK_CHECK(launch(fill_shared_kernel, 1, 256, size_t(optin), nullptr, size_t(optin),
                  &not_poisoned) == cudaSuccess);
  SK_CHECK(not_poisoned == 0);
  // The limit is per kernel.
  SK_CHECK(launch(shared_poison_kernel<float>, 1, 1, kib64, nullptr, nan_reads.data(),
                  &misalignment) == cudaErrorInvalidValue);

  // A lower opt-in maximum, as a test forcing a kernel's small-memory path sets it.
  int device = -1, value = 0;
  SK_CHECK(cudaGetDevice(&device) == cudaSuccess && device == 0);
  SK_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) ==
               cudaSuccess &&
           value == 232448);
  SK_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlock, device) ==
               cudaSuccess &&
           value == 48 * 1024);
  set_max_shared_memory_per_block_optin(16 * 1024);
  SK_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) ==
               cudaSuccess &&
           value == 16 * 1024);
  SK_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlock, 0) == cudaSuccess &&
           value == 48 * 1024);
  SK_CHECK(cudaFuncSetAttribute(fill_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                32 * 1024) == cudaErrorInvalidValue);  // above the new maximum
  SK_CHECK(cudaFuncSetAttribute(fill_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                16 * 1024) == cudaSuccess);
  SK_CHECK(launch(fill_shared_kernel, 1, 32, 16 * 1024, nullptr, size_t(16 * 1024),
                  &not_poisoned) == cudaSuccess);
  SK_CHECK(launch(fill_shared_kernel, 1, 32, 16 * 1024 + 16, nullptr, size_t(16 * 1024 + 16),
                  &not_poisoned) == cudaErrorInvalidValue);  // above the kernel's attribute
  set_max_shared_memory_per_block_optin(232448);
  SK_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlock, 1) ==
           cudaErrorInvalidDevice);
  SK_CHECK(cudaGetLastError() == cudaErrorInvalidDevice);
}

SK_TEST(emulation, invalid_configurations) {
  int count = 0;
  const struct {
    dim3 grid, block;
  } cases[] = {
      {dim3(1), dim3(0)},          {dim3(1), dim3(1025)},     {dim3(1), dim3(32, 32, 2)},
      {dim3(1), dim3(1, 1, 65)},   {dim3(1), dim3(1, 1025)},  {dim3(0), dim3(32)},
      {dim3(1, 0), dim3(32)},      {dim3(1, 65536), dim3(1)}, {dim3(1, 1, 65536), dim3(1)},
      {dim3(2147483648u), dim3(1)},
  };
  for (const auto& c : cases) {
    const std::string config = "grid (" + std::to_string(c.grid.x) + ", " +
                               std::to_string(c.grid.y) + ", " + std::to_string(c.grid.z) +
                               "), block (" + std::to_string(c.block.x) + ", " +
                               std::to_string(c.block.y) + ", " + std::to_string(c.block.z) + ")";
    SK_CHECK(launch(count_kernel, c.grid, c.block, 0, nullptr, &count) ==
             cudaErrorInvalidConfiguration)
        << config;
    SK_CHECK(cudaPeekAtLastError() == cudaErrorInvalidConfiguration) << config;
    SK_CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration) << config;
    SK_CHECK(cudaGetLastError() == cudaSuccess) << config;
  }
  sktest::info(sinkhorn::emulation::last_error_message());
  SK_CHECK(count == 0);
  // The largest blocks are fine.
  SK_CHECK(launch(count_kernel, 1, dim3(32, 32), 0, nullptr, &count) == cudaSuccess);
  SK_CHECK(launch(count_kernel, 1, dim3(1, 16, 64), 0, nullptr, &count) == cudaSuccess);
  SK_CHECK(count == 2048);
  SK_CHECK(cudaGetLastError() == cudaSuccess);
}

SK_TEST(emulation, arguments_and_runtime_calls) {
  // Converted once, copied to every thread.
  int conversions = 0;
  std::vector<int> out(3 * 16, 0);
  SK_CHECK(launch(by_value_kernel, 3, 16, 0, nullptr, Counting{&conversions}, 100L,
                  Pair{20, 3.5}, out.data()) == cudaSuccess);
  SK_CHECK(conversions == 1);
  for (const int v : out) SK_CHECK(v == 7 + 100 + 20 + 3);

  std::vector<float> a(10, 1.0f), b(10, 2.0f);
  SK_CHECK(cudaMemsetAsync(a.data(), 0, 4 * sizeof(float), nullptr) == cudaSuccess);
  SK_CHECK(a[3] == 0.0f && a[4] == 1.0f);
  SK_CHECK(cudaMemcpyAsync(b.data(), a.data(), 5 * sizeof(float), cudaMemcpyDeviceToDevice,
                           nullptr) == cudaSuccess);
  SK_CHECK(b[0] == 0.0f && b[4] == 1.0f && b[5] == 2.0f);
  SK_CHECK(cudaMemsetAsync(nullptr, 0, 0) == cudaSuccess);
  SK_CHECK(cudaMemsetAsync(nullptr, 0, 4) == cudaErrorInvalidValue);
  SK_CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  SK_CHECK(std::string(cudaGetErrorString(cudaSuccess)) == "no error");
  SK_CHECK(std::string(cudaGetErrorString(cudaErrorLaunchFailure)) == "unspecified launch failure");
  SK_CHECK(std::string(cudaGetErrorString(cudaErrorInvalidConfiguration)) ==
           "invalid configuration argument");
}

}  // namespace
