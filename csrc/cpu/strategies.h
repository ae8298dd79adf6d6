// The CPU backends. The two strategies of the tensorized backend: sinkhorn_cpu.cpp builds C
// (B, m, n) and picks one per call (core/softmin.h, scaling_form_is_safe); both give the
// log-domain iterates of DESIGN.md section 1 to rounding.
//   log domain: a softmin pass (max, then exp and sum) over a row of C or C^T per output;
//   scaling:    K = exp(-C / eps) once, then every half-step and every adjoint step is a
//               product of K or K^T with a vector, and dW/dC is K times a rank-2L matrix.
#pragma once

#include "core/params.h"
#include "core/softmin.h"
#include "cpu/cost_matrix.h"

namespace sinkhorn::cpu {

// out_k = eps log(weights_k) + potential_k: the log-domain potential from the history's
// (core/softmin.h with_log_weight).
template <typename T>
void add_log_weights(const T* weights, const T* potential, int64_t count, T eps, T* out) {
  for (int64_t k = 0; k < count; ++k) out[k] = with_log_weight(weights[k], potential[k], eps);
}

// C is (B, m, n), stored for the log domain, stored or recomputed for the scaling strategy,
// which keeps K alone. The forwards write cost_out, u_history and v_history, the backwards
// grad_x, grad_y, grad_x_weights and grad_y_weights. Scratch is their own.
template <typename T>
void log_domain_forward(const SinkhornParams<T>& p, const T* C);
template <typename T>
void log_domain_backward(const SinkhornParams<T>& p, const T* C);
template <typename T>
void scaling_forward(const SinkhornParams<T>& p, const Costs<T>& C);
template <typename T>
void scaling_backward(const SinkhornParams<T>& p, const Costs<T>& C);
// The scaling forward's first step alone: K = exp(-C / eps) into p.kernel_matrix.
template <typename T>
void scaling_kernel_matrix(const SinkhornParams<T>& p, const Costs<T>& C);

// The online backend (online.cpp): no m x n array; the costs are recomputed in every pass.
template <typename T>
void online_forward(const SinkhornParams<T>& p);
template <typename T>
void online_backward(const SinkhornParams<T>& p);

// The end of both tensorized backwards: dW/dx_i = sum_j H_ij (x_i - y_j) and dW/dy_j = sum_i H_ij
// (y_j - x_i) for H = dW/dC * k(C) (core/cost.h), (B, m, n) with rows h_stride apart, which it
// may overwrite (cpu/cost_matrix.h contract_with_clouds); then all four gradients times grad_cost
// (the weight gradients are already in grad_x/y_weights).
template <typename T>
void finish_backward(const SinkhornParams<T>& p, T* H, int64_t h_stride);

}  // namespace sinkhorn::cpu
