#include "cpu/sinkhorn_cpu.h"

#include <algorithm>
#include <limits>
#include <vector>

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
  // The clouds transposed per batch, (d, n) and (d, m), with a row of ones (the sums of H)
  // in front: the sums over j and over i then run along rows.
  Buffer<T> yt_buffer(B * (d + 1) * n), xt_buffer(B * (d + 1) * m);
  T *yt = yt_buffer.get(), *xt = xt_buffer.get();
  auto transpose_with_ones = [&](const T* cloud, int64_t count, T* out) {
    for (int64_t b = 0; b < B; ++b) {
      T* block = out + b * (d + 1) * count;
      std::fill(block, block + count, T(1));
      for (int64_t r = 0; r < count; ++r)
        for (int64_t k = 0; k < d; ++k) block[(k + 1) * count + r] = cloud[(b * count + r) * d + k];
    }
  };
  transpose_with_ones(p.y, n, yt);
  transpose_with_ones(p.x, m, xt);
  // dW/dx_i = grad_cost (x_i sum_j H_ij - sum_j H_ij y_j).
  for_each_row(B, m, (d + 1) * n, [&](int64_t b, int64_t i) {
    const int64_t bi = b * m + i;
    thread_local std::vector<T> sums;  // sum_j H_ij, then sum_j H_ij y_jk
    sums.resize(static_cast<std::size_t>(d + 1));
    matvec(yt + b * (d + 1) * n, static_cast<int>(d + 1), static_cast<int>(n), H + bi * n,
           sums.data());
    for (int64_t k = 0; k < d; ++k)
      p.grad_x[bi * d + k] = p.grad_cost[b] * (p.x[bi * d + k] * sums[0] - sums[k + 1]);
    p.grad_x_weights[bi] *= p.grad_cost[b];
  });
  // dW/dy_j = grad_cost (y_j sum_i H_ij - sum_i H_ij x_i), by blocks of columns.
  for_each_column_block(B, n, (d + 1) * m, [&](int64_t b, int64_t c0, int64_t c1) {
    const int width = static_cast<int>(c1 - c0);
    thread_local std::vector<T> sums;  // (d + 1, width)
    sums.assign(static_cast<std::size_t>((d + 1) * width), T(0));
    for (int64_t k = 0; k <= d; ++k)
      matvec_transposed(H + b * m * n + c0, static_cast<int>(m), n, width,
                        xt + (b * (d + 1) + k) * m, sums.data() + k * width);
    for (int64_t j = c0; j < c1; ++j) {
      const int64_t bj = b * n + j;
      for (int64_t k = 0; k < d; ++k)
        p.grad_y[bj * d + k] =
            p.grad_cost[b] * (p.y[bj * d + k] * sums[j - c0] - sums[(k + 1) * width + j - c0]);
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
