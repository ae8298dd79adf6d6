#include "cpu/sinkhorn_cpu.h"

#include <algorithm>
#include <limits>

#include "core/softmin.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "cpu/strategies.h"

namespace sinkhorn::cpu {
namespace {

// C (B, m, n), and whether the scaling strategy is safe for it: max C / eps within
// core/softmin.h's bound. A NaN anywhere makes it unsafe, and the log domain propagates it.
template <typename T>
bool build_cost_and_choose_scaling(const SinkhornParams<T>& p, T* C) {
  build_cost_matrix(p.x, p.y, p.batch, p.m, p.n, p.d, p.cost, C);
  const int64_t size = p.batch * p.m * p.n;
  T max_cost = T(0);
  bool has_nan = false;
  for (int64_t k = 0; k < size; ++k) {
    max_cost = std::max(max_cost, C[k]);
    has_nan |= C[k] != C[k];
  }
  return !has_nan && scaling_form_is_safe(max_cost / p.eps);
}

}  // namespace

template <typename T>
void sinkhorn_forward(const SinkhornParams<T>& p) {
  Buffer<T> C(p.batch * p.m * p.n);
  if (build_cost_and_choose_scaling(p, C.get())) {
    scaling_forward(p, C.get());
  } else {
    log_domain_forward(p, C.get());
  }
}

template <typename T>
void sinkhorn_backward(const SinkhornParams<T>& p) {
  Buffer<T> C(p.batch * p.m * p.n);
  if (build_cost_and_choose_scaling(p, C.get())) {
    scaling_backward(p, C.get());
  } else {
    log_domain_backward(p, C.get());
  }
}

template <typename T>
void finish_backward(const SinkhornParams<T>& p, const T* H) {
  const int64_t B = p.batch, m = p.m, n = p.n, d = p.d;
  Buffer<T> yt_buffer(B * d * n);
  T* yt = yt_buffer.get();  // y^T per batch, (d, n): the sums over j run along rows
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < d; ++k) yt[(b * d + k) * n + j] = p.y[(b * n + j) * d + k];
  for_each_row(B, m, (d + 1) * n, [&](int64_t b, int64_t i) {
    const int64_t bi = b * m + i;
    const T* H_row = H + bi * n;
    T h_sum = T(0);
    for (int64_t j = 0; j < n; ++j) h_sum += H_row[j];
    for (int64_t k = 0; k < d; ++k) {
      const T hy = dot(H_row, yt + (b * d + k) * n, static_cast<int>(n));
      p.grad_x[bi * d + k] = p.grad_cost[b] * (p.x[bi * d + k] * h_sum - hy);
    }
    p.grad_x_weights[bi] *= p.grad_cost[b];
  });
  for_each_column_block(B, n, (d + 1) * m, [&](int64_t b, int64_t c0, int64_t c1) {
    const int width = static_cast<int>(c1 - c0);
    Buffer<T> acc_buffer((d + 1) * width);
    T* h_sum = acc_buffer.get();  // h_sum[c], then hx[k][c] = sum_i H_ic x_ik
    std::fill(h_sum, h_sum + (d + 1) * width, T(0));
    for (int64_t i = 0; i < m; ++i) {
      const T* H_row = H + (b * m + i) * n + c0;
      add_scaled(T(1), H_row, width, h_sum);
      for (int64_t k = 0; k < d; ++k)
        add_scaled(p.x[(b * m + i) * d + k], H_row, width, h_sum + (k + 1) * width);
    }
    for (int64_t j = c0; j < c1; ++j) {
      const int64_t bj = b * n + j;
      for (int64_t k = 0; k < d; ++k)
        p.grad_y[bj * d + k] =
            p.grad_cost[b] * (p.y[bj * d + k] * h_sum[j - c0] - h_sum[(k + 1) * width + j - c0]);
      p.grad_y_weights[bj] *= p.grad_cost[b];
    }
  });
}

template void sinkhorn_forward<float>(const SinkhornParams<float>&);
template void sinkhorn_forward<double>(const SinkhornParams<double>&);
template void sinkhorn_backward<float>(const SinkhornParams<float>&);
template void sinkhorn_backward<double>(const SinkhornParams<double>&);
template void finish_backward<float>(const SinkhornParams<float>&, const float*);
template void finish_backward<double>(const SinkhornParams<double>&, const double*);

}  // namespace sinkhorn::cpu
