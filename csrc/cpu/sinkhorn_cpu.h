// CPU kernels. Tensorized backend: the iterations run in the strategy that is exact for this
// C, which is built once or, for the scaling strategy, may be recomputed by tiles; online
// backend (params.online): the costs are recomputed in every pass (cpu/strategies.h). They
// allocate their own scratch; the workspace fields of the params are for the CUDA kernels.
#pragma once

#include "core/params.h"

namespace sinkhorn::cpu {

// Runs the L iterations; writes cost_out, u_history, v_history.
template <typename T>
void sinkhorn_forward(const SinkhornParams<T>& p);

// Replays the history backwards (DESIGN.md section 1); writes grad_x, grad_y,
// grad_x_weights, grad_y_weights.
template <typename T>
void sinkhorn_backward(const SinkhornParams<T>& p);

}  // namespace sinkhorn::cpu
