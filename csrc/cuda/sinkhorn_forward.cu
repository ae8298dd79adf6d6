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

template <typename T>
cudaError_t forward_tiled(const SinkhornParams<T>& p, cudaStream_t stream) {
  const int64_t B = p.batch, m = p.m, n = p.n;
  SK_CUDA_TRY(build_cost_matrix(p.x, p.y, B, m, n, p.d, p.cost, p.cost_matrix, stream));
  SK_CUDA_TRY(build_cost_matrix(p.y, p.x, B, n, m, p.d, p.cost, p.cost_matrix_t, stream));
  // Rows i read entry (i, j) of C at C^T[j m + i], rows j entry (j, i) of C^T at C[i n + j].
  return run_iterations(
      p,
      [&](HalfStep<T> step, bool over_x) {
        step.matrix = over_x ? p.cost_matrix_t : p.cost_matrix;
        return softmin_step(step, stream);
      },
      stream);
}

}  // namespace

template <typename T>
cudaError_t sinkhorn_forward(const SinkhornParams<T>& p, cudaStream_t stream) {
  if (p.online) return online_forward(p, stream);
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
