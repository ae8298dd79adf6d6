// CPU kernels. Tensorized backend: the iterations run in the strategy that is exact for this
// C, which is built once or, for the scaling strategy, may be recomputed by tiles; online
// backend (params.online): the costs are recomputed in every pass (cpu/strategies.h). They
// allocate their own scratch; the workspace fields of the params are for the CUDA kernels.
#pragma once

#include <cstdint>

#include "core/params.h"

namespace sinkhorn::cpu {

// Whether these kernels keep C (SinkhornParams::kept_costs: built once, read by the forward
// and the backward): where it is small enough (at most 2^20 costs) to be stored anyway, and
// either a BLAS product (d >= kGemmMinDim), whose rebuild would cost the backward as much as
// its own contraction, or read by a backward in the same call. The BLAS products are built
// first (build_kept_costs), on all threads; the row kernels' costs (d < kGemmMinDim) by the
// forward, on the threads that run it: a problem's own, where the loss's run side by side,
// without a parallel phase before them.
KeptCosts keeps_cost_matrix(int64_t batch, int64_t m, int64_t n, int64_t d, bool backward);

// Builds C into kept_costs, before the forward (KeptCosts::kBuiltFirst): on all threads
// where called outside a parallel region (the op layer builds the loss's two self-terms one
// per thread).
template <typename T>
void build_kept_costs(const SinkhornParams<T>& p);

// Builds C into kept_costs (unless kept_costs_built) and, where the forward's strategy is the
// scaling one, K = exp(-C / eps) into kernel_matrix: so that the forward, with
// kept_costs_built and kernel_matrix_built, starts from its iterations.
template <typename T>
void build_kernel_matrix_ahead(const SinkhornParams<T>& p);

// Runs the L iterations, on kept_costs if set; writes cost_out, u_history, v_history.
template <typename T>
void sinkhorn_forward(const SinkhornParams<T>& p);

// Replays the history backwards (DESIGN.md section 1), on the forward's kept_costs if set;
// writes grad_x, grad_y, grad_x_weights, grad_y_weights.
template <typename T>
void sinkhorn_backward(const SinkhornParams<T>& p);

}  // namespace sinkhorn::cpu
