// The parameters that pass between the op layer (csrc/ops, torch tensors) and the kernels
// (csrc/cpu, csrc/cuda: plain pointers), in the manner of flash-attention's params struct.
// All arrays are contiguous and row-major (kernel_matrix's rows padded); B is the batch,
// L = iters.
#pragma once

#include <cstdint>

#include "core/cost.h"

namespace sinkhorn {

// Whether kernels keep C for a problem's forward and backward (SinkhornParams::kept_costs),
// and who builds it.
enum class KeptCosts {
  kNone,
  kBuiltFirst,      // KernelPair::build_costs, before the forward
  kBuiltByForward,  // the forward, before its iterations
};

// The row stride of SinkhornParams::kernel_matrix: n rounded up to whole 32-byte vectors, so
// that every row of K starts as aligned as the first and the vector loads of the passes over
// it do not straddle cache lines (with rows n apart, a loss with its gradient at m = n = 202
// in float took about 5% longer).
template <typename T>
constexpr int64_t kernel_matrix_stride(int64_t n) {
  constexpr int64_t vector = 32 / static_cast<int64_t>(sizeof(T));
  return (n + vector - 1) / vector * vector;
}

template <typename T>
struct SinkhornParams {
  // Inputs.
  const T* x = nullptr;          // (B, m, d)
  const T* y = nullptr;          // (B, n, d)
  const T* x_weights = nullptr;  // alpha (B, m), nonnegative, sums to 1
  const T* y_weights = nullptr;  // beta  (B, n)
  int64_t batch = 0, m = 0, n = 0, d = 0;
  int iters = 0;
  T eps = T(1);
  Cost cost = Cost::kSqEuclidean;
  bool online = false;  // the online backend: no m x n array (kernels that have one)
  // y is x and y_weights is x_weights (the loss's self-terms W(x, x), W(y, y)): grad_x
  // receives the gradient through both arguments, and grad_y is null.
  bool x_is_y = false;

  // The saved history (written by the forward, read by the backward). With f, g the
  // log-domain potentials of DESIGN.md section 1, u^l = f^l - eps log alpha and
  // v^l = g^l - eps log beta: these stay finite where a weight is zero.
  T* u_history = nullptr;  // (B, L, m), u^1..u^L
  T* v_history = nullptr;  // (B, L, n), v^1..v^L

  // C (B, m, n) kept for the forward and the backward, where the kernels keep it (the CPU's,
  // where C is small: ops::Kernels::keeps_costs), so that the backward does not build it
  // again. Null where it is not kept. kept_costs_built: it holds C already (built first by
  // KernelPair::build_costs or build_kernel_matrix, or, for the backward, by the forward);
  // else the forward builds it.
  T* kept_costs = nullptr;
  bool kept_costs_built = false;
  // K = exp(-C / eps) (B, m, n), its rows kernel_matrix_stride(n) apart, for a backward that
  // follows the forward in the same call: the CPU's scaling strategy writes it in the forward
  // and reads it in the backward, which would otherwise compute it again. Null elsewhere.
  // kernel_matrix_built: it holds K already where the scaling strategy runs
  // (KernelPair::build_kernel_matrix, before the forward, maybe on another thread); else the
  // forward builds it.
  T* kernel_matrix = nullptr;
  bool kernel_matrix_built = false;

  // Forward output.
  T* cost_out = nullptr;  // W_L, (B,)

  // Backward: the incoming gradient of W_L and the outputs.
  const T* grad_cost = nullptr;  // (B,)
  T* grad_x = nullptr;           // (B, m, d)
  T* grad_y = nullptr;           // (B, n, d), or null where it is not wanted
  T* grad_x_weights = nullptr;   // (B, m)
  T* grad_y_weights = nullptr;   // (B, n)

  // Workspace, allocated by the op layer.
  T* cost_matrix = nullptr;    // C   (B, m, n)
  T* cost_matrix_t = nullptr;  // C^T (B, n, m)
  T* grad_matrix = nullptr;    // backward: dW/dC accumulated in the layout of C   (B, m, n)
  T* grad_matrix_t = nullptr;  // backward: dW/dC accumulated in the layout of C^T (B, n, m)
  T* f = nullptr;              // (B, m) current potential f^l = eps log alpha + u^l
  T* g = nullptr;              // (B, n) current potential g^l = eps log beta + v^l
  T* x_adjoint = nullptr;      // (B, m) phi^l = fbar^l / alpha (backward)
  T* y_adjoint = nullptr;      // (B, n) psi^l = gbar^l / beta (backward); forward: the
                               //        expected cost of each column under P_L
};

}  // namespace sinkhorn
