#include "cpu/sinkhorn_cpu.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "core/softmin.h"
#include "cpu/cost_matrix.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "cpu/strategies.h"

namespace sinkhorn::cpu {
namespace {

// The largest of count costs, or NaN if any is NaN.
template <typename T>
T max_of_costs(const T* costs, int64_t count) {
  T max_cost = T(0);
  int64_t nans = 0;
#pragma omp simd reduction(max : max_cost) reduction(+ : nans)
  for (int64_t k = 0; k < count; ++k) {
    max_cost = costs[k] > max_cost ? costs[k] : max_cost;
    nans += costs[k] != costs[k];
  }
  return nans == 0 ? max_cost : std::numeric_limits<T>::quiet_NaN();
}

// Up to this many costs C is stored (it stays in cache, and reading it beats recomputing it).
constexpr int64_t kStoredCostsMax = int64_t{1} << 20;

// max C, from C's rows computed tile by tile and not kept.
template <typename T>
T max_cost_by_tiles(const Cloud<T>& x, const Cloud<T>& y, Cost cost) {
  std::vector<T> row_max(static_cast<std::size_t>(x.batch * x.count));
  for_each_tile(x.batch, x.count, y.count * (x.d + 1), [&](int64_t b, int64_t r0, int64_t r1) {
    T* tile = tile_scratch<T>(y.count);
    cost_tile(x, y, b, r0, r1, 0, y.count, cost, tile, y.count);
    for (int64_t r = r0; r < r1; ++r)
      row_max[b * x.count + r] = max_of_costs(tile + (r - r0) * y.count, y.count);
  });
  return max_of_costs(row_max.data(), x.batch * x.count);
}

// An upper bound on max C from the bounding boxes of the clouds: the largest distance
// between the boxes of a batch, with 1% added for the rounding of the costs themselves.
// Infinite where a coordinate is not finite (the exact max then decides, NaN included).
template <typename T>
T max_cost_bound(const Cloud<T>& x, const Cloud<T>& y, Cost cost) {
  const int64_t d = x.d;
  std::vector<T> box(static_cast<std::size_t>(4 * d));  // lower and upper corners of x, of y
  T bound = T(0);
  for (int64_t b = 0; b < x.batch; ++b) {
    T probe = T(0);  // 0 * coordinate: NaN if any coordinate is infinite or NaN
    const Cloud<T>* clouds[] = {&x, &y};  // the same one for a self-term
    for (int side = 0; side < 2; ++side) {
      const Cloud<T>* cloud = clouds[side];
      T* lower = box.data() + 2 * d * side;
      T* upper = lower + d;
      std::fill(lower, upper, std::numeric_limits<T>::infinity());
      std::fill(upper, upper + d, -std::numeric_limits<T>::infinity());
      for (int64_t r = 0; r < cloud->count; ++r) {
        const T* point = cloud->point(b, r);
#pragma omp simd reduction(+ : probe)
        for (int64_t k = 0; k < d; ++k) {
          lower[k] = std::min(lower[k], point[k]);
          upper[k] = std::max(upper[k], point[k]);
          probe += point[k] * T(0);
        }
      }
    }
    if (probe != T(0)) return std::numeric_limits<T>::infinity();
    T squared = T(0);
    for (int64_t k = 0; k < d; ++k) {
      const T widest = std::max(box[d + k] - box[2 * d + k], box[3 * d + k] - box[k]);
      squared += widest * widest;
    }
    bound = std::max(bound, squared);
  }
  return T(1.01) * cost_of_squared_distance(bound, cost);
}

// Runs the scaling strategy where core/softmin.h proves it exact for this C (a NaN anywhere
// rules it out, and the log domain propagates it), the log-domain one elsewhere: first by a
// bound on max C from the clouds, then, where that does not settle it, by the max itself.
// Where C is large and d small, the scaling strategy recomputes C tile by tile, so that it
// keeps K alone; otherwise C is built once, into p.kept_costs where it is kept, or read from
// there where it is built already (p.kept_costs_built).
template <typename T, typename Scaling, typename LogDomain>
void run_tensorized(const SinkhornParams<T>& p, const Scaling& scaling,
                    const LogDomain& log_domain) {
  const bool builds_costs = p.kept_costs == nullptr || !p.kept_costs_built;
  const Cloud<T> x(p.x, p.batch, p.m, p.d, builds_costs);
  std::optional<Cloud<T>> other;  // y, unless it is x (a self-term)
  const Cloud<T>& y = p.x_is_y ? x : other.emplace(p.y, p.batch, p.n, p.d, builds_costs);
  const int64_t size = p.batch * p.m * p.n;
  // The bound reads the clouds, (m + n) d numbers, the max C m n: the cheaper goes first.
  const bool safe_by_bound = (p.m + p.n) * p.d < p.m * p.n &&
                             scaling_form_is_safe(max_cost_bound(x, y, p.cost) / p.eps);
  if (!x.by_products() && size > kStoredCostsMax &&
      (safe_by_bound || scaling_form_is_safe(max_cost_by_tiles(x, y, p.cost) / p.eps)))
    return scaling(p, Costs<T>(x, y, p.cost, nullptr));
  Buffer<T> built(p.kept_costs == nullptr ? size : 0);
  T* const C = p.kept_costs != nullptr ? p.kept_costs : built.get();
  if (builds_costs) build_cost_matrix(x, y, p.x_is_y, p.cost, C);
  if (safe_by_bound || scaling_form_is_safe(max_of_costs(C, size) / p.eps))
    return scaling(p, Costs<T>(x, y, p.cost, C));
  log_domain(p, C);
}

}  // namespace

KeptCosts keeps_cost_matrix(int64_t batch, int64_t m, int64_t n, int64_t d, bool backward) {
  if (batch * m * n > kStoredCostsMax) return KeptCosts::kNone;
  if (d >= kGemmMinDim) return KeptCosts::kBuiltFirst;
  return backward ? KeptCosts::kBuiltByForward : KeptCosts::kNone;
}

template <typename T>
void build_kept_costs(const SinkhornParams<T>& p) {
  const Cloud<T> x(p.x, p.batch, p.m, p.d);
  if (p.x_is_y) return build_cost_matrix(x, x, true, p.cost, p.kept_costs);
  build_cost_matrix(x, Cloud<T>(p.y, p.batch, p.n, p.d), false, p.cost, p.kept_costs);
}

template <typename T>
void build_kernel_matrix_ahead(const SinkhornParams<T>& p) {
  run_tensorized(p, scaling_kernel_matrix<T>, [](const SinkhornParams<T>&, const T*) {});
}

template <typename T>
void sinkhorn_forward(const SinkhornParams<T>& p) {
  if (p.online) return online_forward(p);
  run_tensorized(p, scaling_forward<T>, log_domain_forward<T>);
}

template <typename T>
void sinkhorn_backward(const SinkhornParams<T>& p) {
  if (p.online) return online_backward(p);
  run_tensorized(p, scaling_backward<T>, log_domain_backward<T>);
}

template <typename T>
void finish_backward(const SinkhornParams<T>& p, T* H, int64_t h_stride) {
  const Cloud<T> x(p.x, p.batch, p.m, p.d, /*with_norms=*/false);
  if (p.x_is_y) {
    contract_with_clouds(H, h_stride, x, x, true, p.grad_cost, p.grad_x, p.grad_y);
  } else {
    contract_with_clouds(H, h_stride, x, Cloud<T>(p.y, p.batch, p.n, p.d, false), false,
                         p.grad_cost, p.grad_x, p.grad_y);
  }
  for (int64_t b = 0; b < p.batch; ++b) {
    const T g = p.grad_cost[b];
    for (int64_t i = b * p.m; i < (b + 1) * p.m; ++i) p.grad_x_weights[i] *= g;
    for (int64_t j = b * p.n; j < (b + 1) * p.n; ++j) p.grad_y_weights[j] *= g;
  }
}

template void build_kept_costs<float>(const SinkhornParams<float>&);
template void build_kept_costs<double>(const SinkhornParams<double>&);
template void build_kernel_matrix_ahead<float>(const SinkhornParams<float>&);
template void build_kernel_matrix_ahead<double>(const SinkhornParams<double>&);
template void sinkhorn_forward<float>(const SinkhornParams<float>&);
template void sinkhorn_forward<double>(const SinkhornParams<double>&);
template void sinkhorn_backward<float>(const SinkhornParams<float>&);
template void sinkhorn_backward<double>(const SinkhornParams<double>&);
template void finish_backward<float>(const SinkhornParams<float>&, float*, int64_t);
template void finish_backward<double>(const SinkhornParams<double>&, double*, int64_t);

}  // namespace sinkhorn::cpu
