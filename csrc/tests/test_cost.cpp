// csrc/core/cost.h: pair_cost on hand-computed examples, cost_slope, and the identity
// dc/dx = cost_slope(c) (x - y) against central differences.
#include <cmath>
#include <vector>

#include "core/cost.h"
#include "tests/harness.h"

namespace {

using sinkhorn::Cost;

template <typename T>
void check_pair_cost() {
  struct Example {
    std::vector<T> x, y;
    T sqeuclidean, euclidean;
  };
  const std::vector<Example> examples = {
      {{T(1), T(2), T(3)}, {T(4), T(6), T(3)}, T(25), T(5)},        // (-3, -4, 0)
      {{T(-1.5)}, {T(2)}, T(12.25), T(3.5)},                         // d = 1
      {{T(0.5), T(-0.5)}, {T(0.5), T(-0.5)}, T(0), T(0)},            // coincident points
      {{T(1), T(1), T(1), T(1)}, {T(0), T(2), T(0), T(2)}, T(4), T(2)},
      {{T(2), T(-3), T(6)}, {T(0), T(0), T(0)}, T(49), T(7)},
      {{T(0.25), T(0.75)}, {T(1), T(-0.25)}, T(1.5625), T(1.25)},  // (-0.75, 1)
  };
  for (const auto& ex : examples) {
    const int d = static_cast<int>(ex.x.size());
    SK_CHECK(sinkhorn::squared_distance(ex.x.data(), ex.y.data(), d) == ex.sqeuclidean);
    SK_CHECK(sinkhorn::pair_cost(ex.x.data(), ex.y.data(), d, Cost::kSqEuclidean) == ex.sqeuclidean)
        << "d = " << d;
    SK_CHECK(sinkhorn::pair_cost(ex.x.data(), ex.y.data(), d, Cost::kEuclidean) == ex.euclidean)
        << "d = " << d;
    // Symmetric, bitwise: the kernels rely on C^T being the exact transpose of C.
    SK_CHECK(sinkhorn::pair_cost(ex.y.data(), ex.x.data(), d, Cost::kEuclidean) ==
             sinkhorn::pair_cost(ex.x.data(), ex.y.data(), d, Cost::kEuclidean));
  }
  // d = 784 (MNIST): x = 1, y = 0 everywhere.
  const std::vector<T> ones(784, T(1)), zeros(784, T(0));
  SK_CHECK(sinkhorn::pair_cost(ones.data(), zeros.data(), 784, Cost::kSqEuclidean) == T(784));
  SK_CHECK(sinkhorn::pair_cost(ones.data(), zeros.data(), 784, Cost::kEuclidean) == T(28));
}

template <typename T>
void check_cost_slope() {
  for (T c : {T(0), T(1e-30), T(0.5), T(3), T(1e6)})
    SK_CHECK(sinkhorn::cost_slope(c, Cost::kSqEuclidean) == T(2)) << "c = " << c;
  SK_CHECK(sinkhorn::cost_slope(T(5), Cost::kEuclidean) == T(1) / T(5));
  SK_CHECK(sinkhorn::cost_slope(T(0.25), Cost::kEuclidean) == T(4));
  SK_CHECK(sinkhorn::cost_slope(T(1e-30), Cost::kEuclidean) == T(1) / T(1e-30));
  SK_CHECK(std::isfinite(sinkhorn::cost_slope(T(1e-30), Cost::kEuclidean)));
  // At c == 0 the euclidean cost has no derivative; the convention is 0.
  SK_CHECK(sinkhorn::cost_slope(T(0), Cost::kEuclidean) == T(0));
  SK_CHECK(sinkhorn::cost_slope(-T(0), Cost::kEuclidean) == T(0));
}

// dc/dx_k = cost_slope(c) (x_k - y_k), checked by central differences in double.
void check_slope_is_the_gradient() {
  const std::vector<double> x = {0.3, -1.2, 0.7}, y = {-0.4, 0.5, 1.9};
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    const double c = sinkhorn::pair_cost(x.data(), y.data(), 3, cost);
    const double k = sinkhorn::cost_slope(c, cost);
    for (int i = 0; i < 3; ++i) {
      const double h = 1e-5;
      std::vector<double> xp = x, xm = x;
      xp[i] += h;
      xm[i] -= h;
      const double fd = (sinkhorn::pair_cost(xp.data(), y.data(), 3, cost) -
                         sinkhorn::pair_cost(xm.data(), y.data(), 3, cost)) /
                        (2 * h);
      SK_CHECK_CLOSE(k * (x[i] - y[i]), fd, 1e-8) << "cost " << static_cast<int>(cost) << ", k = " << i;
    }
  }
}

}  // namespace

SK_TEST(cost, float_pair_cost) { check_pair_cost<float>(); }
SK_TEST(cost, double_pair_cost) { check_pair_cost<double>(); }
SK_TEST(cost, float_cost_slope) { check_cost_slope<float>(); }
SK_TEST(cost, double_cost_slope) { check_cost_slope<double>(); }
SK_TEST(cost, slope_is_the_gradient) { check_slope_is_the_gradient(); }
