// Kernels and device helpers shared by the forward and the backward.
//
// Thread mapping. One thread computes one row r of a softmin or of its adjoint (DESIGN.md
// section 2), streaming over the other cloud c. The matrices are read in the layout where r
// is the fastest index, M[c * rows + r], so the threads of a warp read consecutive addresses:
// the f-update (rows i of C) reads C^T, the g-update (rows j of C^T) reads C. The vectors of
// the other side (potentials, adjoints) are staged through shared memory a tile at a time.
//
// Two strategies, chosen by the launchers:
//   resident: one block per problem runs the whole L-step loop in one launch, with C in
//             shared memory (rows padded to an odd stride, so that both a row and a column
//             are read without bank conflicts); used whenever it fits, since at the
//             paper's sizes (m, n of a few hundred) launch overhead is the cost that counts;
//   tiled:    C and C^T in global memory, one launch per half-step, a grid of row blocks.
#pragma once

#include <cstdint>

#include "core/cost.h"
#include "core/params.h"
#include "core/softmin.h"
#include "cuda/launch.cuh"

namespace sinkhorn::cuda {

constexpr int kThreads = 128;          // threads per block of the tiled kernels = tile length
constexpr int kResidentThreads = 256;  // threads per block of the resident kernels
// Blocks per SM that __launch_bounds__ asks ptxas to make room for. With the thread count
// alone, nvcc 13 budgets registers for full occupancy (32 per thread at 128 threads) and
// spills; 4 blocks of the tiled kernels leave 128 registers per thread.
constexpr int kMinTiledBlocks = 4;

// Adds the terms c < count of a row whose entries are M[c * stride] to a running softmin.
template <typename T, bool WithExpectedCost>
__device__ __forceinline__ void accumulate_softmin(OnlineSoftmin<T, WithExpectedCost>& acc,
                                                   const T* M, int64_t stride, const T* h,
                                                   int64_t count, T inv_eps) {
  for (int64_t c = 0; c < count; ++c) acc.add(h[c], M[c * stride], inv_eps);
}

// The adjoint sum of a row over its terms c < count (core/softmin.h, adjoint_term): the
// row's entries are M[c * stride], its dW/dC entries G[c * grad_stride].
template <typename T, bool Terminal>
__device__ __forceinline__ T accumulate_adjoint(const T* M, int64_t stride, const T* h,
                                                const T* adj, T s, T w, T inv_eps, T* G,
                                                int64_t grad_stride, int64_t count) {
  T out = T(0);
  for (int64_t c = 0; c < count; ++c) {
    out += adjoint_term<T, Terminal>(M[c * stride], h[c], adj[c], s, w, inv_eps,
                                     G[c * grad_stride]);
  }
  return out;
}

// The sum of every thread's value, returned to every thread; blockDim.x is a power of two
// and scratch has blockDim.x entries. The order of the additions is fixed.
template <typename T>
__device__ T block_sum(T value, T* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  const T total = scratch[0];
  __syncthreads();  // scratch may be reused as soon as this returns
  return total;
}

// M[b, r, c] = c(a_r, o_c) for clouds a (B, rows, d) and o (B, cols, d): one thread per
// entry, c fastest. Called with (x, y) for C and (y, x) for C^T, its exact transpose.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks)
    cost_matrix_kernel(const T* a, const T* o, int64_t batch, int64_t rows, int64_t cols,
                       int64_t d, Cost cost, T* M) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
      M[(b * rows + r) * cols + c] =
          pair_cost(a + (b * rows + r) * d, o + (b * cols + c) * d, static_cast<int>(d), cost);
    }
  }
}

template <typename T>
cudaError_t build_cost_matrix(const T* a, const T* o, int64_t batch, int64_t rows, int64_t cols,
                              int64_t d, Cost cost, T* M, cudaStream_t stream) {
  const dim3 grid(blocks_for(cols, kThreads), grid_dim(rows), grid_dim(batch));
  return launch(cost_matrix_kernel<T>, grid, dim3(kThreads), 0, stream, a, o, batch, rows, cols,
                d, cost, M);
}

// One half-step of the tiled strategy over `rows` rows, each a softmin of h over `cols`.
template <typename T>
struct HalfStep {
  const T* matrix = nullptr;   // (B, cols, rows): entry (r, c) at matrix[(b cols + c) rows + r]
  const T* h = nullptr;        // (B, cols)
  const T* weights = nullptr;  // (B, rows), the log-weight of the potential written out
  T* history = nullptr;        // if set: history[b history_stride + r] = the softmin
  int64_t history_stride = 0;
  T* potential = nullptr;      // if set: (B, rows), eps log(weight) + softmin
  T* expected_cost = nullptr;  // if set: (B, rows), the row's cost averaged under its softmax
  int64_t batch = 0, rows = 0, cols = 0;
  T eps = T(1);
};

template <typename T, bool WithExpectedCost>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks) softmin_kernel(HalfStep<T> s) {
  SK_DYNAMIC_SHARED(T, h_tile);  // kThreads entries
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const bool active = r < s.rows;
  const T inv_eps = T(1) / s.eps;
  for (int64_t b = blockIdx.y; b < s.batch; b += gridDim.y) {
    OnlineSoftmin<T, WithExpectedCost> acc;
    const T* M = s.matrix + b * s.cols * s.rows + r;
    for (int64_t c0 = 0; c0 < s.cols; c0 += kThreads) {
      const int64_t count = s.cols - c0 < kThreads ? s.cols - c0 : kThreads;
      if (threadIdx.x < count) h_tile[threadIdx.x] = s.h[b * s.cols + c0 + threadIdx.x];
      __syncthreads();
      if (active) accumulate_softmin(acc, M + c0 * s.rows, s.rows, h_tile, count, inv_eps);
      __syncthreads();
    }
    if (!active) continue;
    const T value = acc.softmin(s.eps);
    if (s.history) s.history[b * s.history_stride + r] = value;
    if (s.potential) {
      s.potential[b * s.rows + r] = with_log_weight(s.weights[b * s.rows + r], value, s.eps);
    }
    if (WithExpectedCost) s.expected_cost[b * s.rows + r] = acc.expected_cost();
  }
}

template <typename T>
cudaError_t softmin_step(const HalfStep<T>& s, cudaStream_t stream) {
  const dim3 grid(blocks_for(s.rows, kThreads), grid_dim(s.batch));
  const size_t shared = kThreads * sizeof(T);
  return s.expected_cost
             ? launch(softmin_kernel<T, true>, grid, dim3(kThreads), shared, stream, s)
             : launch(softmin_kernel<T, false>, grid, dim3(kThreads), shared, stream, s);
}

// Shared memory of the resident kernels: C with rows padded to an odd stride, then f (m),
// g (n), phi (m), psi (n) and a reduction scratch (kResidentThreads).
template <typename T>
struct ResidentShared {
  int64_t stride;  // of C's rows, odd
  T *C, *f, *g, *phi, *psi, *scratch;

  __host__ __device__ ResidentShared(T* base, int64_t m, int64_t n)
      : stride(n | 1),
        C(base),
        f(C + m * stride),
        g(f + m),
        phi(g + n),
        psi(phi + m),
        scratch(psi + n) {}

  static size_t bytes(int64_t m, int64_t n) {
    return static_cast<size_t>(m * (n | 1) + 2 * (m + n) + kResidentThreads) * sizeof(T);
  }
};

// Whether a problem of this size runs in the resident kernels on the current device.
template <typename T>
cudaError_t fits_resident(int64_t m, int64_t n, bool* fits) {
  size_t available = 0;
  SK_CUDA_TRY(max_shared_bytes_per_block(&available));
  *fits = ResidentShared<T>::bytes(m, n) <= available;
  return cudaSuccess;
}

// Fills the resident block's C (padded rows) for problem b.
template <typename T>
__device__ void load_cost_matrix(const SinkhornParams<T>& p, int64_t b, int64_t stride, T* C) {
  const T* x = p.x + b * p.m * p.d;
  const T* y = p.y + b * p.n * p.d;
  const int d = static_cast<int>(p.d);
  for (int64_t k = threadIdx.x; k < p.m * p.n; k += blockDim.x) {
    const int64_t i = k / p.n, j = k - i * p.n;
    C[i * stride + j] = pair_cost(x + i * d, y + j * d, d, p.cost);
  }
}

}  // namespace sinkhorn::cuda
