// The forward: W_L and the history u^1..u^L, v^1..v^L (DESIGN.md section 1).
#include "cuda/common.cuh"
#include "cuda/sinkhorn_cuda.h"

namespace sinkhorn::cuda {
namespace {

// One block per problem: builds C in shared memory and runs all L iterations and
// W_L = sum_j beta_j (expected cost of column j under P_L) in this one launch.
template <typename T>
__global__ void __launch_bounds__(kResidentThreads, 1)
    forward_resident_kernel(SinkhornParams<T> p) {
  SK_DYNAMIC_SHARED(T, shared);
  const ResidentShared<T> smem(shared, p.m, p.n);
  T *C = smem.C, *f = smem.f, *g = smem.g;
  const int64_t m = p.m, n = p.n, L = p.iters, stride = smem.stride;
  const T eps = p.eps, inv_eps = T(1) / p.eps;
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) {
    load_cost_matrix(p, b, stride, C);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) g[j] = T(0);  // g^0 = 0
    __syncthreads();
    T cost = T(0);  // this thread's share of W_L
    for (int64_t l = 1; l <= L; ++l) {
      // f-update: row i of C, softmin of g^{l-1}.
      for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
        OnlineSoftmin<T, false> acc;
        accumulate_softmin(acc, C + i * stride, 1, g, n, inv_eps);
        const T u = acc.softmin(eps);
        p.u_history[(b * L + l - 1) * m + i] = u;
        f[i] = with_log_weight(p.x_weights[b * m + i], u, eps);
      }
      __syncthreads();
      // g-update: column j of C, softmin of f^l; at l = L also its expected cost.
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        T v;
        if (l == L) {
          OnlineSoftmin<T, true> acc;
          accumulate_softmin(acc, C + j, stride, f, m, inv_eps);
          v = acc.softmin(eps);
          cost += p.y_weights[b * n + j] * acc.expected_cost();
        } else {
          OnlineSoftmin<T, false> acc;
          accumulate_softmin(acc, C + j, stride, f, m, inv_eps);
          v = acc.softmin(eps);
        }
        p.v_history[(b * L + l - 1) * n + j] = v;
        g[j] = with_log_weight(p.y_weights[b * n + j], v, eps);
      }
      __syncthreads();
    }
    cost = block_sum(cost, smem.scratch);
    if (threadIdx.x == 0) p.cost_out[b] = cost;
  }
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

template <typename T>
cudaError_t forward_tiled(const SinkhornParams<T>& p, cudaStream_t stream) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  SK_CUDA_TRY(build_cost_matrix(p.x, p.y, B, m, n, p.d, p.cost, p.cost_matrix, stream));
  SK_CUDA_TRY(build_cost_matrix(p.y, p.x, B, n, m, p.d, p.cost, p.cost_matrix_t, stream));
  SK_CUDA_TRY(cudaMemsetAsync(p.g, 0, B * n * sizeof(T), stream));  // g^0 = 0 (all-zero bits)
  for (int64_t l = 1; l <= L; ++l) {
    HalfStep<T> f_step;  // rows i: entry (i, j) of C is C^T[j m + i]
    f_step.matrix = p.cost_matrix_t;
    f_step.h = p.g;
    f_step.weights = p.x_weights;
    f_step.history = p.u_history + (l - 1) * m;
    f_step.history_stride = L * m;
    f_step.potential = p.f;
    f_step.batch = B, f_step.rows = m, f_step.cols = n, f_step.eps = p.eps;
    SK_CUDA_TRY(softmin_step(f_step, stream));

    HalfStep<T> g_step;  // rows j: entry (j, i) of C^T is C[i n + j]
    g_step.matrix = p.cost_matrix;
    g_step.h = p.f;
    g_step.weights = p.y_weights;
    g_step.history = p.v_history + (l - 1) * n;
    g_step.history_stride = L * n;
    g_step.potential = p.g;
    g_step.expected_cost = l == L ? p.y_adjoint : nullptr;
    g_step.batch = B, g_step.rows = n, g_step.cols = m, g_step.eps = p.eps;
    SK_CUDA_TRY(softmin_step(g_step, stream));
  }
  return launch(weighted_sum_kernel<T>, dim3(grid_dim(B)), dim3(kThreads), kThreads * sizeof(T),
                stream, p.y_weights, p.y_adjoint, B, n, p.cost_out);
}

}  // namespace

template <typename T>
cudaError_t sinkhorn_forward(const SinkhornParams<T>& p, cudaStream_t stream) {
  bool resident = false;
  SK_CUDA_TRY(fits_resident<T>(p.m, p.n, &resident));
  if (!resident) return forward_tiled(p, stream);
  return launch_with_shared(forward_resident_kernel<T>, dim3(grid_dim(p.batch)),
                            dim3(kResidentThreads), ResidentShared<T>::bytes(p.m, p.n), stream,
                            p);
}

template cudaError_t sinkhorn_forward<float>(const SinkhornParams<float>&, cudaStream_t);
template cudaError_t sinkhorn_forward<double>(const SinkhornParams<double>&, cudaStream_t);

}  // namespace sinkhorn::cuda
