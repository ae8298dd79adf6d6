// Portability macros shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define SK_HOST_DEVICE __host__ __device__
#define SK_INLINE __forceinline__
#else
#define SK_HOST_DEVICE
#define SK_INLINE inline __attribute__((always_inline))
#endif

// A vectorised reduction loop on the host (needs -fopenmp or -fopenmp-simd); nothing on CUDA.
#if defined(_OPENMP) && !defined(__CUDACC__)
#define SK_PRAGMA(x) _Pragma(#x)
#define SK_SIMD_REDUCTION(...) SK_PRAGMA(omp simd reduction(__VA_ARGS__))
#else
#define SK_SIMD_REDUCTION(...)
#endif
