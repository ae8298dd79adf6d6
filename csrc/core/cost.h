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

// The cost from the squared distance; kernels that sum the squared distance themselves (in
// chunks of coordinates, in the order of squared_distance) finish it here.
template <typename T>
SK_HOST_DEVICE SK_INLINE T cost_of_squared_distance(T sq, Cost cost) {
  return cost == Cost::kSqEuclidean ? sq : std::sqrt(sq);
}

template <typename T>
SK_HOST_DEVICE SK_INLINE T pair_cost(const T* x, const T* y, int d, Cost cost) {
  return cost_of_squared_distance(squared_distance(x, y, d), cost);
}

// k(c) with dc/dx = k(c) (x - y). At c = 0 the euclidean cost has no derivative; the
// gradient 0 is used there (the self-terms W(x, x) always contain such pairs).
template <typename T>
SK_HOST_DEVICE SK_INLINE T cost_slope(T c, Cost cost) {
  if (cost == Cost::kSqEuclidean) return T(2);
  return c > T(0) ? T(1) / c : T(0);
}

}  // namespace sinkhorn
