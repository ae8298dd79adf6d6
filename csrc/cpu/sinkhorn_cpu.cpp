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

// C (B, m, n), and whether the scaling strategy is safe for it: max C / eps within
// core/softmin.h's bound. A NaN anywhere makes it unsafe, and the log domain propagates it.
template <typename T>
bool build_cost_and_choose_scaling(const SinkhornParams<T>& p, T* C) {
  build_cost_matrix(Cloud<T>(p.x, p.batch, p.m, p.d), Cloud<T>(p.y, p.batch, p.n, p.d), p.cost,
                    C);
  const int64_t size = p.batch * p.m * p.n;
  T max_cost = T(0);
  int nans = 0;
#pragma omp simd reduction(max : max_cost) reduction(+ : nans)
  for (int64_t k = 0; k < size; ++k) {
    max_cost = C[k] > max_cost ? C[k] : max_cost;
    nans += C[k] != C[k];
  }
  return nans == 0 && scaling_form_is_safe(max_cost / p.eps);
}

}  // namespace

template <typename T>
void sinkhorn_forward(const SinkhornParams<T>& p) {
  if (p.online) return online_forward(p);
  Buffer<T> C(p.batch * p.m * p.n);
  if (build_cost_and_choose_scaling(p, C.get())) {
    scaling_forward(p, C.get());
  } else {
    log_domain_forward(p, C.get());
  }
}

template <typename T>
void sinkhorn_backward(const SinkhornParams<T>& p) {
  if (p.online) return online_backward(p);
  Buffer<T> C(p.batch * p.m * p.n);
  if (build_cost_and_choose_scaling(p, C.get())) {
    scaling_backward(p, C.get());
  } else {
    log_domain_backward(p, C.get());
  }
}

template <typename T>
void finish_backward(const SinkhornParams<T>& p, const T* H) {
  contract_with_clouds(H, Cloud<T>(p.x, p.batch, p.m, p.d), Cloud<T>(p.y, p.batch, p.n, p.d),
                       p.grad_x, p.grad_y);
  for (int64_t b = 0; b < p.batch; ++b) {
    const T g = p.grad_cost[b];
    for (int64_t k = b * p.m * p.d; k < (b + 1) * p.m * p.d; ++k) p.grad_x[k] *= g;
    for (int64_t k = b * p.n * p.d; k < (b + 1) * p.n * p.d; ++k) p.grad_y[k] *= g;
    for (int64_t i = b * p.m; i < (b + 1) * p.m; ++i) p.grad_x_weights[i] *= g;
    for (int64_t j = b * p.n; j < (b + 1) * p.n; ++j) p.grad_y_weights[j] *= g;
  }
}

template void sinkhorn_forward<float>(const SinkhornParams<float>&);
template void sinkhorn_forward<double>(const SinkhornParams<double>&);
template void sinkhorn_backward<float>(const SinkhornParams<float>&);
template void sinkhorn_backward<double>(const SinkhornParams<double>&);
template void finish_backward<float>(const SinkhornParams<float>&, const float*);
template void finish_backward<double>(const SinkhornParams<double>&, const double*);

}  // namespace sinkhorn::cpu
