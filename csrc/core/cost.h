// Ground costs c(x, y) between two points of R^d and the factor that turns dW/dC into
// dW/dx: for both costs dc/dx = k(c) (x - y), so dW/dx_i = sum_j Cbar_ij k(C_ij) (x_i - y_j).
#pragma once

#include <cmath>

#include "core/macros.h"

namespace sinkhorn {

enum class Cost : int {
  kSqEuclidean = 0,  // |x - y|^2, the paper's (no 1/2 factor)
  kEuclidean = 1,    // |x - y|
};

template <typename T>
SK_HOST_DEVICE SK_INLINE T squared_distance(const T* x, const T* y, int d) {
  T s = T(0);
  for (int k = 0; k < d; ++k) {
    const T diff = x[k] - y[k];
    s += diff * diff;
  }
  return s;
}

template <typename T>
SK_HOST_DEVICE SK_INLINE T pair_cost(const T* x, const T* y, int d, Cost cost) {
  const T sq = squared_distance(x, y, d);
  return cost == Cost::kSqEuclidean ? sq : std::sqrt(sq);
}

// k(c) with dc/dx = k(c) (x - y). At c = 0 the euclidean cost has no derivative; the
// gradient 0 is used there (the self-terms W(x, x) always contain such pairs).
template <typename T>
SK_HOST_DEVICE SK_INLINE T cost_slope(T c, Cost cost) {
  if (cost == Cost::kSqEuclidean) return T(2);
  return c > T(0) ? T(1) / c : T(0);
}

}  // namespace sinkhorn
