// How the kernels are launched and how they declare dynamic shared memory. Under nvcc this is
// the triple-chevron launch; under the CPU emulation of the test suite
// (csrc/tests/emulation/cuda_runtime.h, which defines SK_CUDA_EMULATION) the same call runs
// the blocks' threads as fibers. Every launch goes through launch(), so the launchers the
// tests run are the launchers that ship.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

namespace sinkhorn::cuda {

// Returns the first error of a runtime call to the caller (the op layer turns it into a
// torch error).
#define SK_CUDA_TRY(expr)                    \
  do {                                       \
    const cudaError_t sk_error_ = (expr);    \
    if (sk_error_ != cudaSuccess) return sk_error_; \
  } while (0)

// kernel<<<grid, block, shared_bytes, stream>>>(args...), returning the launch's error.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, Args&&... args) {
#if defined(SK_CUDA_EMULATION)
  return ::sinkhorn::emulation::launch(kernel, grid, block, shared_bytes, stream,
                                       std::forward<Args>(args)...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#endif
}

// The largest dynamic shared memory a block may have on the current device.
inline cudaError_t max_shared_bytes_per_block(size_t* bytes) {
  int device = 0, value = 0;
  SK_CUDA_TRY(cudaGetDevice(&device));
  SK_CUDA_TRY(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  *bytes = static_cast<size_t>(value);
  return cudaSuccess;
}

// A launch whose dynamic shared memory may exceed the default 48 KiB. The kernel is opted in
// to the device's maximum, not to this launch's size: the attribute is per function and
// device, so the same value for every caller keeps host threads from undoing each other's.
template <typename... Params, typename... Args>
cudaError_t launch_with_shared(void (*kernel)(Params...), dim3 grid, dim3 block,
                               size_t shared_bytes, cudaStream_t stream, Args&&... args) {
  size_t available = 0;
  SK_CUDA_TRY(max_shared_bytes_per_block(&available));
  SK_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(available)));
  return launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
}

// Grid sizes are capped at what every dimension allows; kernels loop over the rest.
constexpr int64_t kMaxGridDim = 65535;
inline unsigned grid_dim(int64_t count) {
  return static_cast<unsigned>(count < kMaxGridDim ? (count > 0 ? count : 1) : kMaxGridDim);
}
inline unsigned blocks_for(int64_t count, int64_t threads) {
  return static_cast<unsigned>((count + threads - 1) / threads);
}

}  // namespace sinkhorn::cuda

// T* name = the block's dynamic shared memory (the launch's shared_bytes), 16-byte aligned.
#if defined(SK_CUDA_EMULATION)
#define SK_DYNAMIC_SHARED(T, name) \
  T* name = static_cast<T*>(::sinkhorn::emulation::dynamic_shared_memory())
#else
#define SK_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char sk_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(sk_dynamic_shared_)
#endif
