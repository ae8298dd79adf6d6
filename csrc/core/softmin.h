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
// The reductions along a row are OpenMP SIMD reductions: the compiler may split them over
// vector lanes (it does not reassociate floating-point sums otherwise). The order of the
// additions is fixed by the compiled code, so a row's result does not depend on the thread
// that computes it.
#pragma once

#include <cmath>
#include <limits>

#include "core/exp.h"
#include "core/macros.h"

namespace sinkhorn {

// The full log-domain potential from the weight-free one the history keeps: f = eps log(alpha)
// + u (-inf where the weight is zero), likewise g from v.
template <typename T>
SK_HOST_DEVICE SK_INLINE T with_log_weight(T weight, T potential, T eps) {
  return eps * std::log(weight) + potential;
}

// The log-sum-exp of a row in pieces: shift = max_c t_c, sum = sum_c exp(t_c - shift) and
// cost = sum_c M_rc exp(t_c - shift), for t_c = (h_c - M_rc) / eps. shift = -inf and sum = 0
// when every h_c is -inf: the piece has no mass.
template <typename T>
struct RowSums {
  T shift, sum, cost;

  // softmin_r(h), and the row's cost averaged under its softmax (cost if computed).
  SK_HOST_DEVICE SK_INLINE T softmin(T eps) const { return -eps * (shift + std::log(sum)); }
  SK_HOST_DEVICE SK_INLINE T expected_cost() const { return cost / sum; }
};

// Two passes over the row: the maximum, then the shifted exponentials. cost is computed if
// WithExpectedCost.
template <typename T, bool WithExpectedCost>
SK_HOST_DEVICE SK_INLINE RowSums<T> softmin_row_sums(const T* __restrict__ row,
                                                    const T* __restrict__ h, int n, T eps) {
  const T inv_eps = T(1) / eps;
  T shift = -std::numeric_limits<T>::infinity();
  SK_SIMD_REDUCTION(max : shift)
  for (int c = 0; c < n; ++c) {
    const T t = (h[c] - row[c]) * inv_eps;
    shift = t > shift ? t : shift;
  }
  T sum = T(0), cost = T(0);
  SK_SIMD_REDUCTION(+ : sum, cost)
  for (int c = 0; c < n; ++c) {
    const T t = (h[c] - row[c]) * inv_eps;
    // exp(t - shift) is NaN for t = shift = -inf; such a term has no mass. A NaN propagates.
    const T e =
        t == -std::numeric_limits<T>::infinity() ? T(0) : fast_exp_nonpositive(t - shift);
    sum += e;
    if (WithExpectedCost) cost += row[c] * e;
  }
  return {shift, sum, cost};
}

// Returns softmin_r(h). If WithExpectedCost, also writes sum_c M_rc softmax_rc, the cost of
// row r averaged under its softmax (used for W = <C, P_L> and its adjoint).
template <typename T, bool WithExpectedCost>
SK_HOST_DEVICE SK_INLINE T softmin_row(const T* __restrict__ row, const T* __restrict__ h,
                                       int n, T eps, T* expected_cost) {
  const RowSums<T> s = softmin_row_sums<T, WithExpectedCost>(row, h, n, eps);
  if (WithExpectedCost) *expected_cost = s.expected_cost();
  return s.softmin(eps);
}

// One term c of the adjoint sum of a row (the formulas above): adds the term's G_rc
// contribution to grad and returns its contribution to out_r.
template <typename T, bool Terminal>
SK_HOST_DEVICE SK_INLINE T adjoint_term(T cost, T h, T adj, T s, T w, T inv_eps, T& grad) {
  const T e = fast_exp((s + h - cost) * inv_eps);
  if (Terminal) {
    const T scaled_cost = cost * inv_eps;
    grad += w * e * (adj + T(1) - scaled_cost);
    return (scaled_cost - adj) * e;
  }
  grad += w * e * adj;
  return -adj * e;
}

template <typename T, bool Terminal>
SK_HOST_DEVICE SK_INLINE T softmin_adjoint_row(const T* __restrict__ row, const T* __restrict__ h,
                                               const T* __restrict__ adj, T s, T w, int n, T eps,
                                               T* __restrict__ grad_row) {
  const T inv_eps = T(1) / eps;
  T out = T(0);
  SK_SIMD_REDUCTION(+ : out)
  for (int c = 0; c < n; ++c) {
    out += adjoint_term<T, Terminal>(row[c], h[c], adj[c], s, w, inv_eps, grad_row[c]);
  }
  return out;
}

// The scaling form of the same softmin, for kernels that hold K = exp(-M / eps): with
// gamma = max_c h_c and e_c = exp((h_c - gamma) / eps) in [0, 1],
//   softmin_r(h) = -gamma - eps log(sum_c K_rc e_c).
template <typename T>
SK_HOST_DEVICE SK_INLINE T scaled_softmin(T sum, T shift, T eps) {
  return -shift - eps * fast_log(sum);
}

// Whether the scaling form gives the log-domain results to rounding, given max M / eps.
// With max M / eps <= R:
// - Forward: the term c = argmax h is at least exp(-R), so every row sum is >= exp(-R), a
//   normal number; terms lost to underflow are below exp(-87) (float), a relative 1e-16 or
//   less of the sum.
// - Backward: the factors exp((f_i + gamma) / eps) and exp((g_j + max f) / eps) of the
//   plans are at most exp(R); those of the scaled adjoints at most exp(2R + log(mn)) (the
//   maximum of a potential moves by at most max M + eps log(mn) per half-step), which
//   stays finite for R = 30 in float and R = 300 in double up to m n = 10^12.
template <typename T>
SK_HOST_DEVICE SK_INLINE bool scaling_form_is_safe(T max_cost_over_eps) {
  constexpr T kMaxRatio = sizeof(T) == sizeof(float) ? T(30) : T(300);
  return max_cost_over_eps <= kMaxRatio;
}

// softmin_row accumulated with a running maximum (the online log-sum-exp of FlashAttention
// and KeOps), for kernels that stream a row in pieces: one term at a time (CUDA), or a piece
// summed on its own at a time (the CPU online backend). Terms with h = -inf (zero weight) are
// skipped; a NaN term makes the result NaN.
template <typename T, bool WithExpectedCost>
struct OnlineSoftmin {
  T shift = -std::numeric_limits<T>::infinity();
  T sum = T(0);
  T cost = T(0);  // sum of M_rc exp(t_c - shift), if WithExpectedCost

  SK_HOST_DEVICE SK_INLINE void add(T h, T row_cost, T inv_eps) {
    const T t = (h - row_cost) * inv_eps;
    if (t > shift) {
      const T rescale = fast_exp_nonpositive(shift - t);
      sum = sum * rescale + T(1);
      if (WithExpectedCost) cost = cost * rescale + row_cost;
      shift = t;
    } else if (t != -std::numeric_limits<T>::infinity()) {
      const T e = fast_exp_nonpositive(t - shift);
      sum += e;
      if (WithExpectedCost) cost += row_cost * e;
    }
  }

  // Adds a piece of the row summed on its own (softmin_row_sums); pieces without mass are
  // skipped (a NaN sum is not, and propagates).
  SK_HOST_DEVICE SK_INLINE void add(const RowSums<T>& piece) {
    if (piece.shift == -std::numeric_limits<T>::infinity() && piece.sum == T(0)) return;
    if (piece.shift > shift) {
      const T rescale = fast_exp_nonpositive(shift - piece.shift);
      sum = sum * rescale + piece.sum;
      if (WithExpectedCost) cost = cost * rescale + piece.cost;
      shift = piece.shift;
    } else {
      const T rescale = fast_exp_nonpositive(piece.shift - shift);
      sum += piece.sum * rescale;
      if (WithExpectedCost) cost += piece.cost * rescale;
    }
  }

  SK_HOST_DEVICE SK_INLINE T softmin(T eps) const { return -eps * (shift + std::log(sum)); }
  SK_HOST_DEVICE SK_INLINE T expected_cost() const { return cost / sum; }
};

}  // namespace sinkhorn
