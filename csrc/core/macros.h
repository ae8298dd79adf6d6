// Portability macros shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define SK_HOST_DEVICE __host__ __device__
#define SK_INLINE __forceinline__
#else
#define SK_HOST_DEVICE
#define SK_INLINE inline __attribute__((always_inline))
#endif
