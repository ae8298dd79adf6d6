#include "cpu/sinkhorn_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "core/cost.h"
#include "core/softmin.h"
#include "cpu/rows.h"

namespace sinkhorn::cpu {
namespace {

// Runs fn(b, r) for every row r < rows of every batch b, in parallel. Each row is computed by
// one thread in a fixed order, so the result does not depend on the thread count.
template <typename Fn>
void for_each_row(int64_t batch, int64_t rows, int64_t row_cost, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_cost));
  at::parallel_for(0, batch * rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) fn(k / rows, k % rows);
  });
}

// M[b, r, c] = c(a_r, b_c) for clouds a (B, rows, d) and b (B, cols, d). Called with (x, y)
// for C and with (y, x) for C^T, which is then the exact transpose (|a-b| = |b-a| bitwise).
template <typename T>
void build_cost_matrix(const T* a, const T* b, int64_t batch, int64_t rows, int64_t cols,
                       int64_t d, Cost cost, T* M) {
  for_each_row(batch, rows, cols * d, [&](int64_t bi, int64_t r) {
    const T* ar = a + (bi * rows + r) * d;
    const T* bb = b + bi * cols * d;
    T* out = M + (bi * rows + r) * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] = pair_cost(ar, bb + c * d, static_cast<int>(d), cost);
  });
}

template <typename T>
void add_log_weights(const T* weights, const T* potential, int64_t count, T eps, T* out) {
  for (int64_t k = 0; k < count; ++k) out[k] = with_log_weight(weights[k], potential[k], eps);
}

}  // namespace

template <typename T>
void sinkhorn_forward(const SinkhornParams<T>& p) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  const T eps = p.eps;
  build_cost_matrix(p.x, p.y, B, m, n, p.d, p.cost, p.cost_matrix);
  build_cost_matrix(p.y, p.x, B, n, m, p.d, p.cost, p.cost_matrix_t);
  std::fill(p.g, p.g + B * n, T(0));  // g^0 = 0, i.e. b^0 = 1

  for (int64_t l = 1; l <= L; ++l) {
    const bool last = l == L;
    // f-update: u^l_i = softmin over the row i of C of g^{l-1}.
    for_each_row(B, m, n, [&](int64_t b, int64_t i) {
      const T u = softmin_row(p.cost_matrix + (b * m + i) * n, p.g + b * n, static_cast<int>(n), eps);
      p.u_history[(b * L + l - 1) * m + i] = u;
      p.f[b * m + i] = with_log_weight(p.x_weights[b * m + i], u, eps);
    });
    // g-update: v^l_j = softmin over the row j of C^T of f^l.
    for_each_row(B, n, m, [&](int64_t b, int64_t j) {
      const T* row = p.cost_matrix_t + (b * n + j) * m;
      const T* f = p.f + b * m;
      const T v = last ? softmin_row_with_expected_cost(row, f, static_cast<int>(m), eps,
                                                        p.y_adjoint + b * n + j)
                       : softmin_row(row, f, static_cast<int>(m), eps);
      p.v_history[(b * L + l - 1) * n + j] = v;
      p.g[b * n + j] = with_log_weight(p.y_weights[b * n + j], v, eps);
    });
  }
  // W_L = sum_ij C_ij P_ij = sum_j beta_j (expected cost of column j under P_L / beta_j).
  for (int64_t b = 0; b < B; ++b) {
    T w = T(0);
    for (int64_t j = 0; j < n; ++j) w += p.y_weights[b * n + j] * p.y_adjoint[b * n + j];
    p.cost_out[b] = w;
  }
}

template <typename T>
void sinkhorn_backward(const SinkhornParams<T>& p) {
  const int64_t B = p.batch, m = p.m, n = p.n, d = p.d, L = p.iters;
  const T eps = p.eps;
  const T* C = p.cost_matrix;
  const T* Ct = p.cost_matrix_t;
  T* G = p.grad_matrix;
  T* Gt = p.grad_matrix_t;
  T* phi = p.x_adjoint;
  T* psi = p.y_adjoint;
  build_cost_matrix(p.x, p.y, B, m, n, d, p.cost, p.cost_matrix);
  build_cost_matrix(p.y, p.x, B, n, m, d, p.cost, p.cost_matrix_t);
  auto u_at = [&](int64_t b, int64_t l) { return p.u_history + (b * L + l - 1) * m; };
  auto v_at = [&](int64_t b, int64_t l) { return p.v_history + (b * L + l - 1) * n; };
  for (int64_t b = 0; b < B; ++b) {
    add_log_weights(p.x_weights + b * m, u_at(b, L), m, eps, p.f + b * m);
    add_log_weights(p.y_weights + b * n, v_at(b, L), n, eps, p.g + b * n);
  }
  std::fill(p.grad_x_weights, p.grad_x_weights + B * m, T(0));

  // psi^L_j = gbar^L_j / beta_j = (expected cost of column j under P_L) / eps.
  for_each_row(B, n, m, [&](int64_t b, int64_t j) {
    T expected_cost;
    softmin_row_with_expected_cost(Ct + (b * n + j) * m, p.f + b * m, static_cast<int>(m), eps,
                                   &expected_cost);
    psi[b * n + j] = expected_cost / eps;
    p.grad_y_weights[b * n + j] = expected_cost;  // eps * psi^L
  });

  for (int64_t l = L; l >= 1; --l) {
    // Adjoint of the g-update of level l, over the rows i of C: phi^l and dW/dC (layout C).
    for_each_row(B, m, n, [&](int64_t b, int64_t i) {
      const int64_t bi = b * m + i;
      const T out = softmin_adjoint_row(C + bi * n, p.g + b * n, psi + b * n, u_at(b, l)[i],
                                        p.x_weights[bi], static_cast<int>(n), eps, l == L,
                                        G + bi * n);
      phi[bi] = out;
      p.grad_x_weights[bi] += eps * out;
    });
    // Adjoint of the f-update of level l, over the rows j of C^T: psi^{l-1} and dW/dC
    // (layout C^T). At l = 1 the f-update read g^0 = 0, which carries no weight.
    for_each_row(B, n, m, [&](int64_t b, int64_t j) {
      const int64_t bj = b * n + j;
      const T s = l > 1 ? v_at(b, l - 1)[j] : T(0);
      const T w = l > 1 ? p.y_weights[bj] : T(1);
      const T out = softmin_adjoint_row(Ct + bj * m, p.f + b * m, phi + b * m, s, w,
                                        static_cast<int>(m), eps, false, Gt + bj * m);
      if (l > 1) {
        psi[bj] = out;
        p.grad_y_weights[bj] += eps * out;
      }
    });
    // f^{l-1} and g^{l-1} for the next level down.
    if (l > 1) {
      for (int64_t b = 0; b < B; ++b) {
        add_log_weights(p.x_weights + b * m, u_at(b, l - 1), m, eps, p.f + b * m);
        add_log_weights(p.y_weights + b * n, v_at(b, l - 1), n, eps, p.g + b * n);
      }
    }
  }

  // H = (G + Gt^T) * k(C), written to both layouts, so that dW/dx and dW/dy are row sums.
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (m + kTile - 1) / kTile;
  for_each_row(B, row_tiles, kTile * n, [&](int64_t b, int64_t tile) {
    const int64_t i0 = tile * kTile, i1 = std::min(m, i0 + kTile);
    for (int64_t j0 = 0; j0 < n; j0 += kTile) {
      const int64_t j1 = std::min(n, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t ij = (b * m + i) * n + j, ji = (b * n + j) * m + i;
          const T h = (G[ij] + Gt[ji]) * cost_slope(C[ij], p.cost);
          G[ij] = h;
          Gt[ji] = h;
        }
      }
    }
  });
  // dW/dx_i = sum_j H_ij (x_i - y_j), and likewise for y with H^T.
  auto contract = [&](const T* a, const T* other, const T* H, int64_t rows, int64_t cols,
                      T* grad) {
    for_each_row(B, rows, cols * d, [&](int64_t b, int64_t r) {
      const T* ar = a + (b * rows + r) * d;
      const T* hr = H + (b * rows + r) * cols;
      T* out = grad + (b * rows + r) * d;
      std::fill(out, out + d, T(0));
      for (int64_t c = 0; c < cols; ++c) {
        const T* oc = other + (b * cols + c) * d;
        for (int64_t k = 0; k < d; ++k) out[k] += hr[c] * (ar[k] - oc[k]);
      }
      for (int64_t k = 0; k < d; ++k) out[k] *= p.grad_cost[b];
    });
  };
  contract(p.x, p.y, G, m, n, p.grad_x);
  contract(p.y, p.x, Gt, n, m, p.grad_y);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < m; ++i) p.grad_x_weights[b * m + i] *= p.grad_cost[b];
    for (int64_t j = 0; j < n; ++j) p.grad_y_weights[b * n + j] *= p.grad_cost[b];
  }
}

template void sinkhorn_forward<float>(const SinkhornParams<float>&);
template void sinkhorn_forward<double>(const SinkhornParams<double>&);
template void sinkhorn_backward<float>(const SinkhornParams<float>&);
template void sinkhorn_backward<double>(const SinkhornParams<double>&);

}  // namespace sinkhorn::cpu
