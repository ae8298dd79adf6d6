// The one primitive of every backend (DESIGN.md section 2): the softmin of a potential h over
// the other cloud, and its adjoint. Both Sinkhorn half-steps are this operation with the
// roles of the clouds swapped, so each function works on one row r of a cost matrix M
// (a row of C for the f-update, a row of C^T for the g-update):
//
//   softmin_r(h) = -eps LSE_c((h_c - M_rc) / eps)                           (forward)
//
// Adjoint, in the scaled form used by the replay backward. With s_r the row's own softmin
// output, w_r its weight and a_c the scaled adjoint of the other side,
//
//   e_rc   = exp((s_r + h_c - M_rc) / eps)       (the row's softmax, divided by its weight)
//   out_r  = -sum_c a_c e_rc                     (scaled adjoint of this side's potential)
//   G_rc  += w_r a_c e_rc                        (contribution to dW/dC)
//
// and, at the last level (Terminal), the derivative of <C, P_L> itself is folded in:
//   out_r += sum_c M_rc e_rc / eps,   G_rc += w_r e_rc (1 - M_rc / eps).
//
// Rows are reduced in kLanes independent accumulators so that the compiler vectorises the
// loops (floating-point sums are not reassociated otherwise). The order of additions is
// fixed, so the result does not depend on how rows are spread over threads.
#pragma once

#include <cmath>
#include <limits>

#include "core/exp.h"
#include "core/macros.h"

namespace sinkhorn {

template <typename T>
struct Lanes {
  static constexpr int kCount = 128 / sizeof(T);  // two 512-bit vectors of T
};

template <typename T>
SK_HOST_DEVICE SK_INLINE T sum_lanes(const T* acc) {
  constexpr int kL = Lanes<T>::kCount;
  T total = T(0);
  for (int k = 0; k < kL; ++k) total += acc[k];
  return total;
}

// Returns softmin_r(h). If expected_cost is given, also writes sum_c M_rc softmax_rc, the
// cost of row r averaged under its softmax (used for W = <C, P_L> and its adjoint).
template <typename T, bool WithExpectedCost>
SK_HOST_DEVICE SK_INLINE T softmin_row(const T* __restrict__ row, const T* __restrict__ h,
                                       int n, T eps, T* expected_cost) {
  constexpr int kL = Lanes<T>::kCount;
  const T inv_eps = T(1) / eps;
  const int n_blocked = n - n % kL;

  T lane_max[kL];
  for (int k = 0; k < kL; ++k) lane_max[k] = -std::numeric_limits<T>::infinity();
  for (int c = 0; c < n_blocked; c += kL) {
    for (int k = 0; k < kL; ++k) {
      const T t = (h[c + k] - row[c + k]) * inv_eps;
      lane_max[k] = t > lane_max[k] ? t : lane_max[k];
    }
  }
  for (int c = n_blocked; c < n; ++c) {
    const T t = (h[c] - row[c]) * inv_eps;
    lane_max[0] = t > lane_max[0] ? t : lane_max[0];
  }
  T shift = lane_max[0];
  for (int k = 1; k < kL; ++k) shift = lane_max[k] > shift ? lane_max[k] : shift;

  T lane_sum[kL], lane_cost[kL];
  for (int k = 0; k < kL; ++k) lane_sum[k] = lane_cost[k] = T(0);
  for (int c = 0; c < n_blocked; c += kL) {
    for (int k = 0; k < kL; ++k) {
      const T e = fast_exp((h[c + k] - row[c + k]) * inv_eps - shift);
      lane_sum[k] += e;
      if (WithExpectedCost) lane_cost[k] += row[c + k] * e;
    }
  }
  for (int c = n_blocked; c < n; ++c) {
    const T e = fast_exp((h[c] - row[c]) * inv_eps - shift);
    lane_sum[0] += e;
    if (WithExpectedCost) lane_cost[0] += row[c] * e;
  }
  const T sum = sum_lanes<T>(lane_sum);
  if (WithExpectedCost) *expected_cost = sum_lanes<T>(lane_cost) / sum;
  return -eps * (shift + std::log(sum));
}

template <typename T, bool Terminal>
SK_HOST_DEVICE SK_INLINE T softmin_adjoint_row(const T* __restrict__ row, const T* __restrict__ h,
                                               const T* __restrict__ adj, T s, T w, int n, T eps,
                                               T* __restrict__ grad_row) {
  constexpr int kL = Lanes<T>::kCount;
  const T inv_eps = T(1) / eps;
  const int n_blocked = n - n % kL;
  T lane_out[kL];
  for (int k = 0; k < kL; ++k) lane_out[k] = T(0);
  // One element: its contribution to out_r (returned) and to G_rc (accumulated in place).
  auto element = [&](int c) {
    const T e = fast_exp((s + h[c] - row[c]) * inv_eps);
    if (Terminal) {
      const T scaled_cost = row[c] * inv_eps;
      grad_row[c] += w * e * (adj[c] + T(1) - scaled_cost);
      return (scaled_cost - adj[c]) * e;
    }
    grad_row[c] += w * e * adj[c];
    return -adj[c] * e;
  };
  for (int c = 0; c < n_blocked; c += kL) {
    for (int k = 0; k < kL; ++k) lane_out[k] += element(c + k);
  }
  for (int c = n_blocked; c < n; ++c) lane_out[0] += element(c);
  return sum_lanes<T>(lane_out);
}

}  // namespace sinkhorn
