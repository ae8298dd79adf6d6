#include "cpu/sinkhorn_cpu.h"

#include <algorithm>
#include <limits>
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

// Runs the scaling strategy where core/softmin.h proves it exact for this C (a NaN anywhere
// rules it out, and the log domain propagates it), the log-domain one elsewhere. Where C is
// large and d small, the scaling strategy recomputes C tile by tile, so that it keeps K
// alone; otherwise C is built once, or read from p.kept_costs where it is kept.
template <typename T, typename Scaling, typename LogDomain>
void run_tensorized(const SinkhornParams<T>& p, const Scaling& scaling,
                    const LogDomain& log_domain) {
  const Cloud<T> x(p.x, p.batch, p.m, p.d), y(p.y, p.batch, p.n, p.d);
  const int64_t size = p.batch * p.m * p.n;
  if (!x.by_products() && size > kStoredCostsMax &&
      scaling_form_is_safe(max_cost_by_tiles(x, y, p.cost) / p.eps))
    return scaling(p, Costs<T>(x, y, p.cost, nullptr));
  Buffer<T> built(p.kept_costs != nullptr ? 0 : size);
  const T* C = p.kept_costs;
  if (C == nullptr) {
    build_cost_matrix(x, y, p.x_is_y, p.cost, built.get());
    C = built.get();
  }
  if (scaling_form_is_safe(max_of_costs(C, size) / p.eps))
    return scaling(p, Costs<T>(x, y, p.cost, C));
  log_domain(p, C);
}

}  // namespace

bool keeps_cost_matrix(int64_t batch, int64_t m, int64_t n, int64_t d) {
  return d >= kGemmMinDim && batch * m * n <= kStoredCostsMax;
}

template <typename T>
void build_kept_costs(const SinkhornParams<T>& p) {
  build_cost_matrix(Cloud<T>(p.x, p.batch, p.m, p.d), Cloud<T>(p.y, p.batch, p.n, p.d), p.x_is_y,
                    p.cost, p.kept_costs);
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
void finish_backward(const SinkhornParams<T>& p, T* H) {
  contract_with_clouds(H, Cloud<T>(p.x, p.batch, p.m, p.d), Cloud<T>(p.y, p.batch, p.n, p.d),
                       p.x_is_y, p.grad_cost, p.grad_x, p.grad_y);
  for (int64_t b = 0; b < p.batch; ++b) {
    const T g = p.grad_cost[b];
    for (int64_t i = b * p.m; i < (b + 1) * p.m; ++i) p.grad_x_weights[i] *= g;
    for (int64_t j = b * p.n; j < (b + 1) * p.n; ++j) p.grad_y_weights[j] *= g;
  }
}

template void build_kept_costs<float>(const SinkhornParams<float>&);
template void build_kept_costs<double>(const SinkhornParams<double>&);
template void sinkhorn_forward<float>(const SinkhornParams<float>&);
template void sinkhorn_forward<double>(const SinkhornParams<double>&);
template void sinkhorn_backward<float>(const SinkhornParams<float>&);
template void sinkhorn_backward<double>(const SinkhornParams<double>&);
template void finish_backward<float>(const SinkhornParams<float>&, float*);
template void finish_backward<double>(const SinkhornParams<double>&, double*);

}  // namespace sinkhorn::cpu
