// A CPU stand-in for <cuda_runtime.h>, for the tests only: with csrc/tests/emulation first on
// the include path, g++ compiles the .cu sources of csrc/cuda unchanged and runs their kernels
// on the CPU, like CUDA's old device emulation. Every block's threads run as cooperative
// fibers that switch at each __syncthreads(); blocks run one after another; every runtime call
// is synchronous.
//
// What a passing emulated test proves: the kernels' arithmetic, indexing (grids, blocks,
// grid-stride loops, tails), launch configurations and shared-memory sizes, and the placement
// of their barriers: within a block, the threads of each stretch between two barriers run in a
// chosen order (forward, reverse or shuffled, see set_schedule), so a missing __syncthreads()
// between a shared-memory write and a read shows up as a wrong result under some order, and a
// barrier that not all threads of a block reach fails the launch. Dynamic shared memory is
// poisoned with NaN at the start of every block (static __shared__ arrays are not: they are
// function statics and keep the previous block's values).
//
// What it does not prove: memory coalescing, bank conflicts, occupancy, register pressure or
// speed; races that a barrier does not separate but that no schedule exposes (threads never
// run concurrently here, there are no warps, and global memory is never racy); device-specific
// numerics (the accuracy of expf and friends, fused multiply-adds, flush-to-zero): the host's
// libm and rounding are used.
//
// Not thread-safe: one launch at a time per process (the __shared__ statics are per process).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

// Tells csrc/cuda/launch.cuh to launch through sinkhorn::emulation::launch. __CUDACC__ and
// __CUDA_ARCH__ stay undefined: the sources take their host paths.
#define SK_CUDA_EMULATION 1

// ---- Qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// A function-local static: one object per kernel, shared by all fibers of the running block.
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---- Types ------------------------------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

typedef struct CUstream_st* cudaStream_t;

// The values are CUDA's.
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

// ---- Built-in variables -----------------------------------------------------------------------
// The running fiber's values: the scheduler rewrites the objects behind these references on
// every switch. Read-only, as in CUDA.
extern const uint3& threadIdx;
extern const uint3& blockIdx;
extern const dim3& blockDim;
extern const dim3& gridDim;

// Block barrier: the calling fiber yields to the next thread of the block.
void __syncthreads();

// ---- Runtime API (synchronous; every stream is the default stream) ----------------------------
// Errors are recorded as the last error, as in CUDA (but none is sticky).
cudaError_t cudaGetLastError();    // returns the last error and resets it to cudaSuccess
cudaError_t cudaPeekAtLastError();  // returns it, keeps it
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaGetDevice(int* device);  // always device 0
// cudaDevAttrMaxSharedMemoryPerBlockOptin: max_shared_memory_per_block_optin();
// cudaDevAttrMaxSharedMemoryPerBlock: 48 KiB, or the opt-in maximum if a test set it lower.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

namespace sinkhorn::emulation {

// The order in which, within a block, each stretch between two barriers resumes its threads
// (by linear thread index, x fastest): 0, 1, 2, ...; last to first; or a permutation drawn
// afresh for every stretch of every block, from a generator restarted from `seed` at every
// launch (so a launch is reproducible). Forward by default.
enum class Schedule { kForward, kReverse, kShuffled };
void set_schedule(Schedule schedule, unsigned seed = 0);

// The device's opt-in maximum of dynamic shared memory per block (232448 bytes, an H100's,
// by default): what cudaDevAttrMaxSharedMemoryPerBlockOptin reports and the most that
// cudaFuncSetAttribute grants. Lowering it lets a test steer a launcher away from a path that
// needs more shared memory; launches within the default 48 KiB, which need no opt-in, are not
// affected (so it may even be set below that). Negative values count as 0.
void set_max_shared_memory_per_block_optin(int bytes);
int max_shared_memory_per_block_optin();

// A description of the most recent error that a runtime call or launch recorded ("" if none
// yet). cudaGetLastError does not clear it; the next error replaces it.
const char* last_error_message();

// The running block's dynamic shared memory (CUDA's extern __shared__ array), 16-byte aligned,
// of the launch's size, filled with 0xFF bytes (NaN as float or double) at the start of every
// block; nullptr outside a launch or for a launch without dynamic shared memory.
void* dynamic_shared_memory();

// The number of launches so far that passed validation and ran (so that a test can count
// the launches of an entry point).
int64_t launch_count();

namespace detail {
using KernelId = void (*)();
using Body = void (*)(const void* call);
// Validates the configuration, then runs every block, each thread calling body(call).
cudaError_t run(KernelId kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes, Body body,
                const void* call);
cudaError_t set_function_attribute(KernelId kernel, cudaFuncAttribute attr, int value);
}  // namespace detail

// kernel<<<grid, block, dynamic_shared_bytes, stream>>>(args...), run to completion. The
// arguments are converted to the kernel's parameter types once, and every thread gets its
// own copy of them (by value, as in CUDA). Returns cudaSuccess; or, recording it as the last
// error, cudaErrorInvalidConfiguration (a block of 0 or more than 1024 threads or with
// block.z above 64, a zero grid dimension, grid.x above 2^31 - 1 or grid.y, grid.z above
// 65535), cudaErrorInvalidValue (dynamic shared memory above 48 KiB without a matching
// cudaFuncSetAttribute, or above the opt-in maximum), cudaErrorMemoryAllocation (no memory
// for the fiber stacks) or cudaErrorLaunchFailure (a block whose threads did not all reach
// the same barriers: some returned while others wait; the launch stops there, see
// last_error_message; or a launch from inside a kernel).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                   cudaStream_t /*stream*/, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args),
                "the kernel takes a different number of arguments");
  struct Call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  const Call call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  return detail::run(
      reinterpret_cast<detail::KernelId>(kernel), grid, block, dynamic_shared_bytes,
      [](const void* p) {
        const Call& c = *static_cast<const Call*>(p);
        std::apply(c.kernel, c.params);
      },
      &call);
}

}  // namespace sinkhorn::emulation

// Records the kernel's allowed dynamic shared memory (cudaFuncAttributeMaxDynamicSharedMemorySize,
// the only attribute emulated); cudaErrorInvalidValue for a negative value or one above the
// opt-in maximum.
template <class T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  static_assert(std::is_function_v<T>, "cudaFuncSetAttribute takes a kernel");
  return sinkhorn::emulation::detail::set_function_attribute(
      reinterpret_cast<sinkhorn::emulation::detail::KernelId>(entry), attr, value);
}
