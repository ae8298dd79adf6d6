// The backward: the exact gradient of the L-step algorithm, from the replayed history
// (DESIGN.md section 1, in the scaled adjoints phi = fbar / alpha and psi = gbar / beta of
// csrc/core/softmin.h). Every reverse half-step is one pass of row adjoints, like a forward
// half-step; each row is owned by one thread, so there are no atomics and the result does
// not depend on scheduling.
#include "cuda/common.cuh"
#include "cuda/sinkhorn_cuda.h"

namespace sinkhorn::cuda {
namespace {

// ---- resident: one block per problem, C in shared memory, the whole backward in one launch.

// The potentials of level l: f = eps log(alpha) + u^l, g = eps log(beta) + v^l.
template <typename T>
__device__ void load_potentials(const SinkhornParams<T>& p, int64_t b, int64_t l, T* f, T* g) {
  const int64_t m = p.m, n = p.n, L = p.iters;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    f[i] = with_log_weight(p.x_weights[b * m + i], p.u_history[(b * L + l - 1) * m + i], p.eps);
  }
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    g[j] = with_log_weight(p.y_weights[b * n + j], p.v_history[(b * L + l - 1) * n + j], p.eps);
  }
}

// dW/dC accumulates in p.grad_matrix (layout of C): the passes over rows and over columns
// are separated by barriers, so one buffer serves both.
template <typename T>
__global__ void __launch_bounds__(kResidentThreads, 1)
    backward_resident_kernel(SinkhornParams<T> p) {
  SK_DYNAMIC_SHARED(T, shared);
  const ResidentShared<T> smem(shared, p.m, p.n);
  T *C = smem.C, *f = smem.f, *g = smem.g, *phi = smem.phi, *psi = smem.psi;
  const int64_t m = p.m, n = p.n, d = p.d, L = p.iters, stride = smem.stride;
  const T eps = p.eps, inv_eps = T(1) / p.eps;
  for (int64_t b = blockIdx.x; b < p.batch; b += gridDim.x) {
    T* G = p.grad_matrix + b * m * n;
    const T* u = p.u_history + b * L * m;
    const T* v = p.v_history + b * L * n;
    T* grad_alpha = p.grad_x_weights + b * m;
    T* grad_beta = p.grad_y_weights + b * n;
    load_cost_matrix(p, b, stride, C);
    load_potentials(p, b, L, f, g);
    __syncthreads();
    // psi^L_j = (expected cost of column j under P_L) / eps.
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      OnlineSoftmin<T, true> acc;
      accumulate_softmin(acc, C + j, stride, f, m, inv_eps);
      psi[j] = acc.expected_cost() * inv_eps;
      grad_beta[j] = acc.expected_cost();  // eps psi^L
    }
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) grad_alpha[i] = T(0);
    __syncthreads();
    for (int64_t l = L; l >= 1; --l) {
      // Adjoint of the g-update of level l, over the rows i of C: phi^l.
      for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
        const T s = u[(l - 1) * m + i], w = p.x_weights[b * m + i];
        const T out =
            l == L ? accumulate_adjoint<T, true>(C + i * stride, 1, g, psi, s, w, inv_eps,
                                                 G + i * n, 1, n)
                   : accumulate_adjoint<T, false>(C + i * stride, 1, g, psi, s, w, inv_eps,
                                                  G + i * n, 1, n);
        phi[i] = out;
        grad_alpha[i] += eps * out;
      }
      __syncthreads();
      // Adjoint of the f-update of level l, over the columns j: psi^{l-1}. At l = 1 the
      // f-update read g^0 = 0, which carries no weight and has no adjoint to pass on.
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const T s = l > 1 ? v[(l - 2) * n + j] : T(0);
        const T w = l > 1 ? p.y_weights[b * n + j] : T(1);
        const T out = accumulate_adjoint<T, false>(C + j, stride, f, phi, s, w, inv_eps, G + j,
                                                   n, m);
        if (l > 1) {
          psi[j] = out;
          grad_beta[j] += eps * out;
        }
      }
      __syncthreads();
      if (l > 1) {
        load_potentials(p, b, l - 1, f, g);
        __syncthreads();
      }
    }
    // dW/dx_i = sum_j H_ij (x_i - y_j) and dW/dy_j = sum_i H_ij (y_j - x_i), H = G k(C); for
    // a self-term (x_is_y) grad_x gets both.
    const T grad_cost = p.grad_cost[b];
    const T* x = p.x + b * m * d;
    const T* y = p.y + b * n * d;
    auto H = [&](int64_t i, int64_t j) {
      return G[i * n + j] * cost_slope(C[i * stride + j], p.cost);
    };
    for (int64_t e = threadIdx.x; e < m * d; e += blockDim.x) {
      const int64_t i = e / d, k = e - i * d;
      T sum = T(0);
      for (int64_t j = 0; j < n; ++j) sum += H(i, j) * (x[i * d + k] - y[j * d + k]);
      if (p.x_is_y) {
        for (int64_t j = 0; j < n; ++j) sum += H(j, i) * (x[i * d + k] - y[j * d + k]);
      }
      p.grad_x[b * m * d + e] = grad_cost * sum;
    }
    for (int64_t e = threadIdx.x; p.grad_y && e < n * d; e += blockDim.x) {
      const int64_t j = e / d, k = e - j * d;
      T sum = T(0);
      for (int64_t i = 0; i < m; ++i) sum += H(i, j) * (y[j * d + k] - x[i * d + k]);
      p.grad_y[b * n * d + e] = grad_cost * sum;
    }
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) grad_alpha[i] *= grad_cost;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) grad_beta[j] *= grad_cost;
    __syncthreads();  // C is overwritten by the next problem
  }
}

// ---- tiled: C and C^T in global memory, one launch per reverse half-step.

template <typename T, bool Terminal>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks) adjoint_kernel(AdjointStep<T> a) {
  SK_DYNAMIC_SHARED(T, h_tile);  // kThreads entries of h, then kThreads of adj
  T* adj_tile = h_tile + kThreads;
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const bool active = r < a.rows;
  const T inv_eps = T(1) / a.eps;
  for (int64_t b = blockIdx.y; b < a.batch; b += gridDim.y) {
    const T s = active && a.s ? a.s[b * a.s_stride + r] : T(0);
    const T w = active && a.weights ? a.weights[b * a.rows + r] : T(1);
    const int64_t row = b * a.cols * a.rows + r;
    T out = T(0);
    for (int64_t c0 = 0; c0 < a.cols; c0 += kThreads) {
      const int64_t count = a.cols - c0 < kThreads ? a.cols - c0 : kThreads;
      if (threadIdx.x < count) {
        h_tile[threadIdx.x] = a.h[b * a.cols + c0 + threadIdx.x];
        adj_tile[threadIdx.x] = a.adj[b * a.cols + c0 + threadIdx.x];
      }
      __syncthreads();
      if (active) {
        const int64_t offset = row + c0 * a.rows;
        out += accumulate_adjoint<T, Terminal>(a.matrix + offset, a.rows, h_tile, adj_tile, s, w,
                                               inv_eps, a.grad_matrix + offset, a.rows, count);
      }
      __syncthreads();
    }
    if (!active) continue;
    if (a.out) a.out[b * a.rows + r] = out;
    if (a.grad_weights) a.grad_weights[b * a.rows + r] += a.eps * out;
  }
}

template <typename T>
cudaError_t adjoint_step(const AdjointStep<T>& a, bool terminal, cudaStream_t stream) {
  const dim3 grid(blocks_for(a.rows, kThreads), grid_dim(a.batch));
  const size_t shared = 2 * kThreads * sizeof(T);
  return terminal ? launch(adjoint_kernel<T, true>, grid, dim3(kThreads), shared, stream, a)
                  : launch(adjoint_kernel<T, false>, grid, dim3(kThreads), shared, stream, a);
}

// H_ij = (G_ij + Gt_ji) k(C_ij), written over both G (layout of C) and Gt (layout of C^T),
// a kTile x kTile tile at a time, transposed through shared memory.
constexpr int kTile = 32;
constexpr int kTileRows = 8;

template <typename T>
__global__ void __launch_bounds__(kTile * kTileRows, kMinTiledBlocks / 2)
    combine_kernel(T* G, T* Gt, const T* C, int64_t batch, int64_t m, int64_t n, Cost cost) {
  SK_DYNAMIC_SHARED(T, tile);  // kTile x (kTile + 1): entry (j - j0, i - i0)
  constexpr int kPitch = kTile + 1;
  const int64_t j0 = blockIdx.x * int64_t(kTile);
  const int tx = threadIdx.x;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    for (int64_t i0 = blockIdx.y * int64_t(kTile); i0 < m; i0 += gridDim.y * int64_t(kTile)) {
      for (int dy = threadIdx.y; dy < kTile; dy += kTileRows) {  // read Gt, coalesced in i
        const int64_t j = j0 + dy, i = i0 + tx;
        if (j < n && i < m) tile[dy * kPitch + tx] = Gt[(b * n + j) * m + i];
      }
      __syncthreads();
      for (int dy = threadIdx.y; dy < kTile; dy += kTileRows) {  // G and H, coalesced in j
        const int64_t i = i0 + dy, j = j0 + tx;
        if (i < m && j < n) {
          const int64_t ij = (b * m + i) * n + j;
          const T h = (G[ij] + tile[tx * kPitch + dy]) * cost_slope(C[ij], cost);
          G[ij] = h;
          tile[tx * kPitch + dy] = h;
        }
      }
      __syncthreads();
      for (int dy = threadIdx.y; dy < kTile; dy += kTileRows) {  // write Gt, coalesced in i
        const int64_t j = j0 + dy, i = i0 + tx;
        if (j < n && i < m) Gt[(b * n + j) * m + i] = tile[dy * kPitch + tx];
      }
      __syncthreads();
    }
  }
}

// grad[b, r, k] = grad_cost[b] sum_c H(r, c) (a_rk - o_ck) with H(r, c) at
// H[(b cols + c) rows + r], added to grad if accumulate (a self-term's second argument); the
// same pass scales the row's weight gradient by grad_cost[b], and does only that where grad
// is null (not wanted).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks)
    contract_kernel(const T* H, const T* a, const T* o, const T* grad_cost, int64_t batch,
                    int64_t rows, int64_t cols, int64_t d, T* grad, bool accumulate,
                    T* grad_weights) {
  SK_DYNAMIC_SHARED(T, o_tile);  // kThreads entries: o_ck for a tile of c
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const bool active = r < rows;
  if (grad == nullptr) {  // the same for the whole grid: no barrier is skipped by some threads
    for (int64_t b = blockIdx.z; active && blockIdx.y == 0 && b < batch; b += gridDim.z)
      grad_weights[b * rows + r] *= grad_cost[b];
    return;
  }
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    for (int64_t k = blockIdx.y; k < d; k += gridDim.y) {
      const T a_rk = active ? a[(b * rows + r) * d + k] : T(0);
      T sum = T(0);
      for (int64_t c0 = 0; c0 < cols; c0 += kThreads) {
        const int64_t count = cols - c0 < kThreads ? cols - c0 : kThreads;
        if (threadIdx.x < count) o_tile[threadIdx.x] = o[(b * cols + c0 + threadIdx.x) * d + k];
        __syncthreads();
        if (active) {
          const T* column = H + (b * cols + c0) * rows + r;
          for (int64_t c = 0; c < count; ++c) sum += column[c * rows] * (a_rk - o_tile[c]);
        }
        __syncthreads();
      }
      if (!active) continue;
      T& out = grad[(b * rows + r) * d + k];
      out = (accumulate ? out : T(0)) + grad_cost[b] * sum;
      if (k == 0) grad_weights[b * rows + r] *= grad_cost[b];
    }
  }
}

template <typename T>
cudaError_t contract(const T* H, const T* a, const T* o, const T* grad_cost, int64_t batch,
                     int64_t rows, int64_t cols, int64_t d, T* grad, bool accumulate,
                     T* grad_weights, cudaStream_t stream) {
  const dim3 grid(blocks_for(rows, kThreads), grid_dim(d), grid_dim(batch));
  return launch(contract_kernel<T>, grid, dim3(kThreads), kThreads * sizeof(T), stream, H, a, o,
                grad_cost, batch, rows, cols, d, grad, accumulate, grad_weights);
}

template <typename T>
cudaError_t backward_tiled(const SinkhornParams<T>& p, cudaStream_t stream) {
  const int64_t B = p.batch, m = p.m, n = p.n, d = p.d, L = p.iters;
  SK_CUDA_TRY(build_cost_matrix(p.x, p.y, B, m, n, d, p.cost, p.cost_matrix, stream));
  SK_CUDA_TRY(build_cost_matrix(p.y, p.x, B, n, m, d, p.cost, p.cost_matrix_t, stream));
  SK_CUDA_TRY(begin_backward(
      p,
      [&](HalfStep<T> step, bool) {  // rows j: entry (j, i) of C^T is C[i n + j]
        step.matrix = p.cost_matrix;
        return softmin_step(step, stream);
      },
      stream));
  for (int64_t l = L; l >= 1; --l) {
    // Over the rows i, entry (i, j) at C^T[j m + i].
    AdjointStep<T> rows_i = g_update_adjoint(p, l);
    rows_i.matrix = p.cost_matrix_t;
    rows_i.grad_matrix = p.grad_matrix_t;
    SK_CUDA_TRY(adjoint_step(rows_i, l == L, stream));
    // Over the rows j, entry (j, i) at C[i n + j].
    AdjointStep<T> rows_j = f_update_adjoint(p, l);
    rows_j.matrix = p.cost_matrix;
    rows_j.grad_matrix = p.grad_matrix;
    SK_CUDA_TRY(adjoint_step(rows_j, false, stream));
    if (l > 1) {
      SK_CUDA_TRY(load_f(p, l - 1, stream));
      SK_CUDA_TRY(load_g(p, l - 1, stream));
    }
  }

  const dim3 tiles(blocks_for(n, kTile), grid_dim(blocks_for(m, kTile)), grid_dim(B));
  SK_CUDA_TRY(launch(combine_kernel<T>, tiles, dim3(kTile, kTileRows),
                     kTile * (kTile + 1) * sizeof(T), stream, p.grad_matrix, p.grad_matrix_t,
                     p.cost_matrix, B, m, n, p.cost));
  // grad_x reads H in the layout of C^T (rows i fastest), grad_y in the layout of C; a
  // self-term adds the second into grad_x.
  SK_CUDA_TRY(contract(p.grad_matrix_t, p.x, p.y, p.grad_cost, B, m, n, d, p.grad_x, false,
                       p.grad_x_weights, stream));
  return contract(p.grad_matrix, p.y, p.x, p.grad_cost, B, n, m, d,
                  p.x_is_y ? p.grad_x : p.grad_y, p.x_is_y, p.grad_y_weights, stream);
}

}  // namespace

template <typename T>
cudaError_t sinkhorn_backward(const SinkhornParams<T>& p, cudaStream_t stream) {
  if (p.online) return online_backward(p, stream);
  bool resident = false;
  SK_CUDA_TRY(fits_resident<T>(p.m, p.n, &resident));
  if (!resident) return backward_tiled(p, stream);
  return launch_with_shared(backward_resident_kernel<T>, dim3(grid_dim(p.batch)),
                            dim3(kResidentThreads), ResidentShared<T>::bytes(p.m, p.n), stream,
                            p);
}

template cudaError_t sinkhorn_backward<float>(const SinkhornParams<float>&, cudaStream_t);
template cudaError_t sinkhorn_backward<double>(const SinkhornParams<double>&, cudaStream_t);

}  // namespace sinkhorn::cuda
