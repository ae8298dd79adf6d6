// Kernels, device helpers and launch sequences shared by the forward, the backward and the
// online backend.
//
// Thread mapping. One thread computes one row r of a softmin or of its adjoint (DESIGN.md
// section 2), streaming over the other cloud c. The matrices are read in the layout where r
// is the fastest index, M[c * rows + r], so the threads of a warp read consecutive addresses:
// the f-update (rows i of C) reads C^T, the g-update (rows j of C^T) reads C. The vectors of
// the other side (potentials, adjoints) are staged through shared memory a tile at a time.
//
// Three strategies. The tensorized backend runs one of two, chosen by the launchers:
//   resident: one block per problem runs the whole L-step loop in one launch, with C in
//             shared memory (rows padded to an odd stride, so that both a row and a column
//             are read without bank conflicts); used whenever it fits, since at the
//             paper's sizes (m, n of a few hundred) launch overhead is the cost that counts;
//   tiled:    C and C^T in global memory, one launch per half-step, a grid of row blocks.
// The online backend (p.online, sinkhorn_online.cu) keeps no m x n array: one launch per
// half-step, a grid of row blocks, each thread recomputing its row's costs from the points,
// which are staged through shared memory a tile of points and a chunk of coordinates at a
// time.
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

// Fully unrolls the loop that follows (of a compile-time count), so that the register arrays
// it indexes stay in registers; the emulation's host compiler has no such pragma.
#if defined(__CUDACC__)
#define SK_UNROLL _Pragma("unroll")
#else
#define SK_UNROLL
#endif

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

// Writes the outputs of row r of problem b from its accumulated softmin.
template <typename T, bool WithExpectedCost>
__device__ __forceinline__ void write_softmin(const HalfStep<T>& s, int64_t b, int64_t r,
                                              const OnlineSoftmin<T, WithExpectedCost>& acc) {
  const T value = acc.softmin(s.eps);
  if (s.history) s.history[b * s.history_stride + r] = value;
  if (s.potential) {
    s.potential[b * s.rows + r] = with_log_weight(s.weights[b * s.rows + r], value, s.eps);
  }
  if (WithExpectedCost) s.expected_cost[b * s.rows + r] = acc.expected_cost();
}

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
    if (active) write_softmin(s, b, r, acc);
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

// sum_r weights[b, r] values[b, r] for each problem b: one block per problem.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks)
    weighted_sum_kernel(const T* weights, const T* values, int64_t batch, int64_t count, T* out) {
  SK_DYNAMIC_SHARED(T, scratch);
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    T sum = T(0);
    for (int64_t r = threadIdx.x; r < count; r += blockDim.x) {
      sum += weights[b * count + r] * values[b * count + r];
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) out[b] = sum;
  }
}

// The forward of a strategy that launches one kernel per half-step: run_step(step, over_x)
// launches the half-step over the rows i of x (over_x) or the rows j of y, step's matrix
// left to it. g^0 = 0; for l = 1..L the f-update (softmin of g^{l-1} into u^l and f^l) and the
// g-update (softmin of f^l into v^l and g^l, at l = L with the expected cost of each column
// into p.y_adjoint); then W_L = sum_j beta_j (expected cost of column j under P_L).
template <typename T, typename RunStep>
cudaError_t run_iterations(const SinkhornParams<T>& p, const RunStep& run_step,
                           cudaStream_t stream) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  SK_CUDA_TRY(cudaMemsetAsync(p.g, 0, B * n * sizeof(T), stream));  // g^0 = 0 (all-zero bits)
  for (int64_t l = 1; l <= L; ++l) {
    HalfStep<T> f_step;
    f_step.h = p.g;
    f_step.weights = p.x_weights;
    f_step.history = p.u_history + (l - 1) * m;
    f_step.history_stride = L * m;
    f_step.potential = p.f;
    f_step.batch = B, f_step.rows = m, f_step.cols = n, f_step.eps = p.eps;
    SK_CUDA_TRY(run_step(f_step, true));

    HalfStep<T> g_step;
    g_step.h = p.f;
    g_step.weights = p.y_weights;
    g_step.history = p.v_history + (l - 1) * n;
    g_step.history_stride = L * n;
    g_step.potential = p.g;
    g_step.expected_cost = l == L ? p.y_adjoint : nullptr;
    g_step.batch = B, g_step.rows = n, g_step.cols = m, g_step.eps = p.eps;
    SK_CUDA_TRY(run_step(g_step, false));
  }
  return launch(weighted_sum_kernel<T>, dim3(grid_dim(B)), dim3(kThreads), kThreads * sizeof(T),
                stream, p.y_weights, p.y_adjoint, B, n, p.cost_out);
}

// One reverse half-step over `rows` rows (csrc/core/softmin.h, softmin_adjoint_row).
template <typename T>
struct AdjointStep {
  const T* matrix = nullptr;  // (B, cols, rows): entry (r, c) at matrix[(b cols + c) rows + r]
  T* grad_matrix = nullptr;   // dW/dC, accumulated in the layout of matrix
  const T* h = nullptr;       // (B, cols), the other side's potential
  const T* adj = nullptr;     // (B, cols), the other side's scaled adjoint
  const T* s = nullptr;       // if set: the row's own softmin s[b s_stride + r]; else 0
  int64_t s_stride = 0;
  const T* weights = nullptr;  // if set: the row's weight (B, rows); else 1
  T* out = nullptr;            // if set: (B, rows), the row's scaled adjoint
  T* grad_weights = nullptr;   // if set: (B, rows), += eps out
  int64_t batch = 0, rows = 0, cols = 0;
  T eps = T(1);
};

// The reverse half-steps of level l (DESIGN.md section 1), their matrices left to the caller:
// the adjoint of the g-update over the rows i (phi^l into p.x_adjoint; at l = L it also
// holds the derivative of <C, P_L>), and that of the f-update over the rows j (psi^{l-1}
// into p.y_adjoint). At l = 1 the f-update read g^0 = 0, which carries no weight and has no
// adjoint to pass on: s = 0, w = 1 and no outputs, only its dW/dC.
template <typename T>
AdjointStep<T> g_update_adjoint(const SinkhornParams<T>& p, int64_t l) {
  AdjointStep<T> a;
  a.h = p.g;
  a.adj = p.y_adjoint;
  a.s = p.u_history + (l - 1) * p.m;
  a.s_stride = p.iters * p.m;
  a.weights = p.x_weights;
  a.out = p.x_adjoint;
  a.grad_weights = p.grad_x_weights;
  a.batch = p.batch, a.rows = p.m, a.cols = p.n, a.eps = p.eps;
  return a;
}

template <typename T>
AdjointStep<T> f_update_adjoint(const SinkhornParams<T>& p, int64_t l) {
  AdjointStep<T> a;
  a.h = p.f;
  a.adj = p.x_adjoint;
  if (l > 1) {
    a.s = p.v_history + (l - 2) * p.n;
    a.s_stride = p.iters * p.n;
    a.weights = p.y_weights;
    a.out = p.y_adjoint;
    a.grad_weights = p.grad_y_weights;
  }
  a.batch = p.batch, a.rows = p.n, a.cols = p.m, a.eps = p.eps;
  return a;
}

// out[b, r] = eps log(weights[b, r]) + history[b history_stride + r]: the potentials of a
// level from the weight-free history.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks)
    potentials_kernel(const T* weights, const T* history, int64_t history_stride, int64_t batch,
                      int64_t count, T eps, T* out) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < batch * count;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t b = e / count, r = e - b * count;
    out[e] = with_log_weight(weights[e], history[b * history_stride + r], eps);
  }
}

// f^l into p.f.
template <typename T>
cudaError_t load_f(const SinkhornParams<T>& p, int64_t l, cudaStream_t stream) {
  return launch(potentials_kernel<T>, dim3(grid_dim(blocks_for(p.batch * p.m, kThreads))),
                dim3(kThreads), 0, stream, p.x_weights, p.u_history + (l - 1) * p.m,
                p.iters * p.m, p.batch, p.m, p.eps, p.f);
}

// g^l into p.g.
template <typename T>
cudaError_t load_g(const SinkhornParams<T>& p, int64_t l, cudaStream_t stream) {
  return launch(potentials_kernel<T>, dim3(grid_dim(blocks_for(p.batch * p.n, kThreads))),
                dim3(kThreads), 0, stream, p.y_weights, p.v_history + (l - 1) * p.n,
                p.iters * p.n, p.batch, p.n, p.eps, p.g);
}

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks)
    scale_kernel(const T* in, T factor, int64_t count, T* out) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < count;
       e += int64_t(gridDim.x) * kThreads) {
    out[e] = in[e] * factor;
  }
}

// The start of a backward that launches one kernel per step: f^L and g^L into p.f and p.g,
// grad_x_weights = 0, and the terminal adjoint psi^L_j = (expected cost of column j under
// P_L) / eps into p.y_adjoint, with grad_y_weights starting at eps psi^L. run_step(step,
// over_x) launches the softmin half-step over the rows j (over_x false), as in
// run_iterations.
template <typename T, typename RunStep>
cudaError_t begin_backward(const SinkhornParams<T>& p, const RunStep& run_step,
                           cudaStream_t stream) {
  const int64_t B = p.batch, m = p.m, n = p.n;
  SK_CUDA_TRY(load_f(p, p.iters, stream));
  SK_CUDA_TRY(load_g(p, p.iters, stream));
  SK_CUDA_TRY(cudaMemsetAsync(p.grad_x_weights, 0, B * m * sizeof(T), stream));
  HalfStep<T> terminal;
  terminal.h = p.f;
  terminal.expected_cost = p.grad_y_weights;
  terminal.batch = B, terminal.rows = n, terminal.cols = m, terminal.eps = p.eps;
  SK_CUDA_TRY(run_step(terminal, false));
  return launch(scale_kernel<T>, dim3(grid_dim(blocks_for(B * n, kThreads))), dim3(kThreads), 0,
                stream, p.grad_y_weights, T(1) / p.eps, B * n, p.y_adjoint);
}

// The online backend (sinkhorn_online.cu), which sinkhorn_forward and sinkhorn_backward run
// when p.online.
template <typename T>
cudaError_t online_forward(const SinkhornParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t online_backward(const SinkhornParams<T>& p, cudaStream_t stream);

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
