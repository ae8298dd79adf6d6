// CPU kernels of the tensorized backend: C and C^T are built once per call, then every
// half-step is one softmin pass over the rows of one of them.
#pragma once

#include "core/params.h"

namespace sinkhorn::cpu {

// Runs the L iterations; writes cost_out, u_history, v_history. Workspace: cost_matrix,
// cost_matrix_t, f, g, y_adjoint.
template <typename T>
void sinkhorn_forward(const SinkhornParams<T>& p);

// Replays the history backwards (DESIGN.md section 1); writes grad_x, grad_y,
// grad_x_weights, grad_y_weights. Workspace: all of it; grad_matrix and grad_matrix_t
// must be zero on entry.
template <typename T>
void sinkhorn_backward(const SinkhornParams<T>& p);

}  // namespace sinkhorn::cpu
