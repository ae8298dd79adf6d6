// The fiber scheduler and runtime state of the CUDA emulation (cuda_runtime.h).
//
// A launch runs its blocks one after another. A block's threads are ucontext fibers; each
// stretch between two barriers (a phase) resumes them one by one in the schedule's order, and
// a fiber that reaches __syncthreads() or returns switches directly to the next one (not
// through the launcher: each swapcontext costs a signal-mask system call). After the last
// fiber of a phase, either all wait at a barrier (the next phase starts), all have returned
// (back to the launcher, next block) or the block is broken (back to the launcher, which
// fails the launch; the waiting fibers are abandoned, not unwound).
#include "cuda_runtime.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SK_EMULATION_ASAN 1
#else
#define SK_EMULATION_ASAN 0
#endif

namespace sinkhorn::emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;  // per fiber; the kernels keep a few scalars
constexpr int kDefaultSharedMemoryPerBlock = 48 * 1024;
constexpr int kDefaultSharedMemoryOptin = 232448;  // an H100's 227 KiB
constexpr uint64_t kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockZ = 64;  // x and y are held by the thread count
constexpr unsigned kMaxGridX = 2147483647u, kMaxGridYZ = 65535;
constexpr std::align_val_t kSharedAlignment{16};

// A fiber's stack, below it a guard page (an overflow faults instead of corrupting the next
// stack), and its context. Allocated once and kept for later launches.
struct Fiber {
  ucontext_t context;
  unsigned char* mapping = nullptr;
  size_t mapping_bytes = 0;
  uint3 thread_idx{};
  bool finished = false;

  Fiber() = default;
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
  ~Fiber() {
    if (mapping != nullptr) munmap(mapping, mapping_bytes);
  }
  unsigned char* stack() const { return mapping + (mapping_bytes - kStackBytes); }
};

struct SharedDelete {
  void operator()(unsigned char* p) const { ::operator delete(p, kSharedAlignment); }
};

struct State {
  // Settings.
  Schedule schedule = Schedule::kForward;
  unsigned seed = 0;
  int optin = kDefaultSharedMemoryOptin;
  std::map<detail::KernelId, int> max_dynamic_shared;  // cudaFuncSetAttribute's, per kernel

  int64_t launches = 0;  // launches that passed validation and ran

  // Errors.
  cudaError_t last_error = cudaSuccess;
  std::string last_message;

  // The running launch.
  bool running = false;
  detail::Body body = nullptr;
  const void* call = nullptr;
  std::unique_ptr<unsigned char, SharedDelete> dynamic_shared;
  size_t dynamic_shared_bytes = 0;
  uint64_t random = 0;  // splitmix64 state of the shuffled schedule

  // The running block.
  std::vector<std::unique_ptr<Fiber>> fibers;  // the first `threads` are the block's
  unsigned threads = 0;
  std::vector<unsigned> order;  // of the running phase
  unsigned position = 0;        // in `order` of the running fiber
  unsigned phase = 0;           // barriers passed so far
  unsigned arrived = 0, returned = 0;  // in this phase
  bool broken = false;
  ucontext_t launcher;
#if SK_EMULATION_ASAN
  const void* launcher_stack = nullptr;
  size_t launcher_stack_bytes = 0;
#endif
};

State g_state;
uint3 g_thread_idx{};
uint3 g_block_idx{};
dim3 g_block_dim;
dim3 g_grid_dim;

cudaError_t fail(cudaError_t error, std::string message) {
  g_state.last_error = error;
  g_state.last_message = std::move(message);
  return error;
}

std::string str(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}

uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

size_t dynamic_shared_limit(detail::KernelId kernel) {
  const State& s = g_state;
  const auto it = s.max_dynamic_shared.find(kernel);
  return static_cast<size_t>(it == s.max_dynamic_shared.end() ? kDefaultSharedMemoryPerBlock
                                                                : it->second);
}

cudaError_t validate(detail::KernelId kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > kMaxBlockZ) {
    return fail(cudaErrorInvalidConfiguration,
                "invalid block " + str(block.x, block.y, block.z) + " of " +
                    std::to_string(threads) + " threads: 1 to 1024 threads, z at most 64");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > kMaxGridX || grid.y > kMaxGridYZ ||
      grid.z > kMaxGridYZ) {
    return fail(cudaErrorInvalidConfiguration,
                "invalid grid " + str(grid.x, grid.y, grid.z) +
                    ": x from 1 to 2^31 - 1, y and z from 1 to 65535");
  }
  const size_t limit = dynamic_shared_limit(kernel);
  if (dynamic_shared_bytes > limit) {
    return fail(cudaErrorInvalidValue,
                std::to_string(dynamic_shared_bytes) +
                    " bytes of dynamic shared memory exceed the kernel's limit of " +
                    std::to_string(limit) +
                    " (48 KiB unless cudaFuncSetAttribute changed it)");
  }
  return cudaSuccess;
}

// A function of its own because getcontext is returns_twice: in the caller's loop,
// -Wclobbered would flag the loop's variables.
bool init_context(Fiber& fiber) { return getcontext(&fiber.context) == 0; }

// Maps stacks up to `threads` fibers; false if the system refuses.
bool reserve_fibers(unsigned threads) {
  State& s = g_state;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (s.fibers.size() < threads) {
    auto fiber = std::make_unique<Fiber>();
    const size_t bytes = page + kStackBytes;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return false;
    fiber->mapping = static_cast<unsigned char*>(p);
    fiber->mapping_bytes = bytes;
    if (mprotect(p, page, PROT_NONE) != 0 || !init_context(*fiber)) return false;
    s.fibers.push_back(std::move(fiber));
  }
  return true;
}

// Draws the order of the next phase and resets its counts.
void begin_phase() {
  State& s = g_state;
  s.order.resize(s.threads);
  std::iota(s.order.begin(), s.order.end(), 0u);
  if (s.schedule == Schedule::kReverse) {
    std::reverse(s.order.begin(), s.order.end());
  } else if (s.schedule == Schedule::kShuffled) {
    for (unsigned i = s.threads; i > 1; --i) {
      std::swap(s.order[i - 1], s.order[next_random(s.random) % i]);
    }
  }
  s.position = 0;
  s.arrived = 0;
  s.returned = 0;
}

Fiber& current_fiber() { return *g_state.fibers[g_state.order[g_state.position]]; }

// Switches from the running context (saved into `from`) to `to`, whose stack is
// [to_stack, to_stack + to_stack_bytes); ASan is told about the stack switch. A context that
// will never be resumed says so (`from_done`), so that ASan frees its fake stack.
void switch_context(ucontext_t* from, const ucontext_t* to, [[maybe_unused]] const void* to_stack,
                    [[maybe_unused]] size_t to_stack_bytes, [[maybe_unused]] bool from_done) {
#if SK_EMULATION_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_done ? nullptr : &fake_stack, to_stack, to_stack_bytes);
  swapcontext(from, to);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  swapcontext(from, to);
#endif
}

// The fiber to resume after the running one reached a barrier or returned: the next of this
// phase, or the first of the next phase; nullptr to return to the launcher (the block is
// done, or broken).
Fiber* next_fiber() {
  State& s = g_state;
  if (++s.position < s.threads) return &current_fiber();
  if (s.returned == s.threads) return nullptr;
  if (s.arrived == s.threads) {
    ++s.phase;
    begin_phase();
    return &current_fiber();
  }
  // Some threads returned while the others wait at a barrier they will never pass.
  unsigned first_returned = 0, first_waiting = 0;
  while (!s.fibers[first_returned]->finished) ++first_returned;
  while (s.fibers[first_waiting]->finished) ++first_waiting;
  const uint3 r = s.fibers[first_returned]->thread_idx, w = s.fibers[first_waiting]->thread_idx;
  s.broken = true;
  fail(cudaErrorLaunchFailure,
       "barrier mismatch in block " + str(g_block_idx.x, g_block_idx.y, g_block_idx.z) +
           " after " + std::to_string(s.phase) + (s.phase == 1 ? " barrier: " : " barriers: ") +
           std::to_string(s.arrived) + " of " + std::to_string(s.threads) +
           " threads wait at __syncthreads() while " + std::to_string(s.returned) +
           " returned (e.g. thread " + str(w.x, w.y, w.z) + " waits, thread " +
           str(r.x, r.y, r.z) + " returned); every thread of a block must reach the same barriers");
  return nullptr;
}

// Leaves the running fiber `self` for the next one; returns when `self` is resumed.
void yield(Fiber& self, bool done) {
  State& s = g_state;
  Fiber* next = next_fiber();
  if (next == &self) return;  // `self` opens the next phase
  if (next == nullptr) {
#if SK_EMULATION_ASAN
    switch_context(&self.context, &s.launcher, s.launcher_stack, s.launcher_stack_bytes, done);
#else
    switch_context(&self.context, &s.launcher, nullptr, 0, done);
#endif
    return;
  }
  g_thread_idx = next->thread_idx;
  switch_context(&self.context, &next->context, next->stack(), kStackBytes, done);
}

void fiber_main() noexcept {
  State& s = g_state;
#if SK_EMULATION_ASAN
  const void* from_stack = nullptr;
  size_t from_stack_bytes = 0;
  __sanitizer_finish_switch_fiber(nullptr, &from_stack, &from_stack_bytes);
  if (s.phase == 0 && s.position == 0) {  // the block's first fiber, entered from the launcher
    s.launcher_stack = from_stack;
    s.launcher_stack_bytes = from_stack_bytes;
  }
#endif
  s.body(s.call);
  Fiber& self = current_fiber();
  self.finished = true;
  ++s.returned;
  yield(self, true);
  // Not reached: a returned fiber is never resumed (the next block makes its context anew),
  // and returning from here, with no uc_link, would end the process's thread.
  std::fprintf(stderr, "sinkhorn::emulation: a finished fiber was resumed\n");
  std::abort();
}

// Makes `fiber` start the kernel when next resumed. Its context was initialised by getcontext
// once, when the fiber was created (getcontext costs a system call; makecontext does not).
void start_fiber(Fiber& fiber) {
  fiber.finished = false;
  fiber.context.uc_stack.ss_sp = fiber.stack();
  fiber.context.uc_stack.ss_size = kStackBytes;
  fiber.context.uc_link = nullptr;
  makecontext(&fiber.context, fiber_main, 0);
}

// Runs the block g_block_idx; false if it broke (next_fiber recorded why).
bool run_block() {
  State& s = g_state;
  if (s.dynamic_shared_bytes != 0) {
    std::memset(s.dynamic_shared.get(), 0xFF, s.dynamic_shared_bytes);
  }
  for (unsigned i = 0; i < s.threads; ++i) start_fiber(*s.fibers[i]);
  s.phase = 0;
  begin_phase();
  Fiber& first = current_fiber();
  g_thread_idx = first.thread_idx;
  switch_context(&s.launcher, &first.context, first.stack(), kStackBytes, false);
  return !s.broken;
}

}  // namespace

void set_schedule(Schedule schedule, unsigned seed) {
  g_state.schedule = schedule;
  g_state.seed = seed;
}

void set_max_shared_memory_per_block_optin(int bytes) { g_state.optin = std::max(bytes, 0); }

int max_shared_memory_per_block_optin() { return g_state.optin; }

const char* last_error_message() { return g_state.last_message.c_str(); }

void* dynamic_shared_memory() { return g_state.dynamic_shared.get(); }

int64_t launch_count() { return g_state.launches; }

namespace detail {

cudaError_t run(KernelId kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes, Body body,
                const void* call) {
  State& s = g_state;
  if (s.running) {
    return fail(cudaErrorLaunchFailure,
                "a kernel launched a kernel: dynamic parallelism is not emulated");
  }
  if (const cudaError_t error = validate(kernel, grid, block, dynamic_shared_bytes);
      error != cudaSuccess) {
    return error;
  }
  ++s.launches;
  s.threads = block.x * block.y * block.z;
  if (!reserve_fibers(s.threads)) {
    return fail(cudaErrorMemoryAllocation, "could not set up the stacks of " +
                                               std::to_string(s.threads) + " fibers");
  }
  for (unsigned i = 0; i < s.threads; ++i) {
    s.fibers[i]->thread_idx = uint3{i % block.x, i / block.x % block.y, i / (block.x * block.y)};
  }
  s.dynamic_shared.reset(
      dynamic_shared_bytes == 0
          ? nullptr
          : static_cast<unsigned char*>(::operator new(dynamic_shared_bytes, kSharedAlignment)));
  s.dynamic_shared_bytes = dynamic_shared_bytes;
  s.body = body;
  s.call = call;
  s.random = s.seed;
  s.broken = false;
  g_grid_dim = grid;
  g_block_dim = block;
  s.running = true;
  bool ok = true;
  for (unsigned z = 0; ok && z < grid.z; ++z) {
    for (unsigned y = 0; ok && y < grid.y; ++y) {
      for (unsigned x = 0; ok && x < grid.x; ++x) {
        g_block_idx = uint3{x, y, z};
        ok = run_block();
      }
    }
  }
  s.running = false;
  s.dynamic_shared.reset();
  s.dynamic_shared_bytes = 0;
  return ok ? cudaSuccess : cudaErrorLaunchFailure;  // next_fiber recorded the failure
}

cudaError_t set_function_attribute(KernelId kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
    return fail(cudaErrorInvalidValue,
                "cudaFuncSetAttribute: attribute " + std::to_string(attr) + " is not emulated");
  }
  if (value < 0 || value > g_state.optin) {
    return fail(cudaErrorInvalidValue,
                "cudaFuncSetAttribute: " + std::to_string(value) +
                    " bytes of dynamic shared memory, outside 0 to the opt-in maximum of " +
                    std::to_string(g_state.optin));
  }
  g_state.max_dynamic_shared[kernel] = value;
  return cudaSuccess;
}

}  // namespace detail
}  // namespace sinkhorn::emulation

// ---- What cuda_runtime.h names globally -------------------------------------------------------
using sinkhorn::emulation::g_block_dim;
using sinkhorn::emulation::g_block_idx;
using sinkhorn::emulation::g_grid_dim;
using sinkhorn::emulation::g_state;
using sinkhorn::emulation::g_thread_idx;

const uint3& threadIdx = g_thread_idx;
const uint3& blockIdx = g_block_idx;
const dim3& blockDim = g_block_dim;
const dim3& gridDim = g_grid_dim;

void __syncthreads() {
  if (!g_state.running) {
    std::fprintf(stderr, "sinkhorn::emulation: __syncthreads() called outside a kernel\n");
    std::abort();
  }
  sinkhorn::emulation::Fiber& self = sinkhorn::emulation::current_fiber();
  ++g_state.arrived;
  sinkhorn::emulation::yield(self, false);
}

cudaError_t cudaGetLastError() {
  const cudaError_t error = g_state.last_error;
  g_state.last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return g_state.last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unrecognized error code";
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  if (ptr == nullptr) {
    return sinkhorn::emulation::fail(cudaErrorInvalidValue, "cudaMemsetAsync: null pointer");
  }
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) {
    return sinkhorn::emulation::fail(cudaErrorInvalidValue, "cudaMemcpyAsync: null pointer");
  }
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) {
    return sinkhorn::emulation::fail(cudaErrorInvalidValue, "cudaGetDevice: null pointer");
  }
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  using sinkhorn::emulation::fail;
  if (value == nullptr) return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: null pointer");
  if (device != 0) {
    return fail(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: device " +
                                            std::to_string(device) +
                                            " (only device 0 is emulated)");
  }
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = sinkhorn::emulation::kDefaultSharedMemoryPerBlock;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = g_state.optin;
      return cudaSuccess;
  }
  return fail(cudaErrorInvalidValue,
              "cudaDeviceGetAttribute: attribute " + std::to_string(attr) + " is not emulated");
}
