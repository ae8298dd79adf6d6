// The online backend: no m x n array. Every pass takes kTileRows points of one cloud against
// the other cloud in pieces of kPiece points, computes that tile of costs (cpu/cost_matrix.h
// cost_tile: row kernels, or a matrix product for large d), and streams each row's
// log-sum-exp over the pieces (core/softmin.h OnlineSoftmin). Memory: the histories, the
// clouds transposed, and per thread a tile and the column sums of the backward.
//
// The backward is the log-domain recursion of DESIGN.md section 1 with dW/dC folded into the
// passes: a pass over the rows of one cloud adds each term's (dW/dC_ij) k(C_ij) to its own
// row's sums (which give dW/dx_i) and to per-thread column sums (which give dW/dy_j), so
// neither dW/dC nor an atomic is needed; the per-thread sums are added in a fixed order.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "core/softmin.h"
#include "cpu/blas.h"
#include "cpu/cost_matrix.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "cpu/strategies.h"

namespace sinkhorn::cpu {
namespace {

constexpr int64_t kPiece = 512;  // points of the other cloud per tile (of kTileRows points)

// out[r] = softmin over the points b_c of h_c - c(a_r, b_c), for the rows [r0, r1) of a,
// streamed over the pieces of b; with expected_cost, also each row's cost averaged under its
// softmax.
template <typename T>
void softmin_tile(const Cloud<T>& a, const Cloud<T>& b, int64_t bi, int64_t r0, int64_t r1,
                  const T* h, T eps, Cost cost, T* out, T* expected_cost) {
  T* costs = tile_scratch<T>(kPiece);
  OnlineSoftmin<T, true> rows[kTileRows];
  for (int64_t c0 = 0; c0 < b.count; c0 += kPiece) {
    const int64_t c1 = std::min(b.count, c0 + kPiece);
    cost_tile(a, b, bi, r0, r1, c0, c1, cost, costs, kPiece);
    for (int64_t r = r0; r < r1; ++r)
      rows[r - r0].add(softmin_sums(costs + (r - r0) * kPiece, h + c0, static_cast<int>(c1 - c0),
                                    eps, expected_cost != nullptr));
  }
  for (int64_t r = r0; r < r1; ++r) {
    out[r] = rows[r - r0].softmin(eps);
    if (expected_cost != nullptr) expected_cost[r] = rows[r - r0].expected_cost();
  }
}

// The adjoint terms of the rows [r0, r1) of a against the points of b (core/softmin.h
// adjoint_term with the row's own s_r, w_r): out[r] gets each row's sum, and every term's
// (dW/dC_rc) k(C_rc) goes into the sums that give the gradients: a's row_sums (count, D) and
// b's column_sums (D, b.count) (sum of the terms, then their sums against each coordinate of
// the other point).
template <typename T, typename RowScalars>
void adjoint_tile(const Cloud<T>& a, const Cloud<T>& b, int64_t bi, int64_t r0, int64_t r1,
                  const T* h, const T* adj, const RowScalars& s_and_w, bool terminal, T eps,
                  Cost cost, T* out, T* row_sums, T* column_sums) {
  const int64_t d = a.d, D = d + 1, nr = r1 - r0;
  T* costs = tile_scratch<T>(2 * kPiece);  // a tile of costs, then one of adjoint terms
  T* gk = costs + kTileRows * kPiece;
  for (int64_t r = r0; r < r1; ++r) out[r] = T(0);
  for (int64_t c0 = 0; c0 < b.count; c0 += kPiece) {
    const int64_t c1 = std::min(b.count, c0 + kPiece), width = c1 - c0;
    cost_tile(a, b, bi, r0, r1, c0, c1, cost, costs, kPiece);
    for (int64_t r = r0; r < r1; ++r) {
      const auto [s, w] = s_and_w(r);
      out[r] += adjoint_piece(costs + (r - r0) * kPiece, h + c0, adj + c0, s, w,
                              static_cast<int>(width), eps, terminal, cost, gk + (r - r0) * kPiece);
    }
    if (!a.by_products()) {
      for (int64_t r = r0; r < r1; ++r)
        accumulate_piece(gk + (r - r0) * kPiece, static_cast<int>(width), b.coordinates(bi) + c0,
                         b.count, a.point(bi, r), static_cast<int>(d), row_sums + r * D,
                         column_sums + c0, b.count);
      continue;
    }
    // Large d: the sums against the coordinates are matrix products of the tile.
    const at::Tensor G = matrix(gk, nr, width, kPiece);
    at::Tensor rows = matrix(row_sums + r0 * D, nr, D);
    rows.select(1, 0).add_(G.sum(1));
    rows.narrow(1, 1, d).add_(at::mm(G, matrix(b.point(bi, c0), width, d)));
    at::Tensor columns = matrix(column_sums + c0, D, width, b.count);
    columns.select(0, 0).add_(G.sum(0));
    columns.narrow(0, 1, d).add_(at::mm(matrix(a.point(bi, r0), nr, d).t(), G));
  }
}

// The work of one row against a cloud of count points: the costs and an exp per pair.
int64_t row_work(int64_t count, int64_t d) { return count * (kExpWork + std::min<int64_t>(d, 64)); }

}  // namespace

template <typename T>
void online_forward(const SinkhornParams<T>& p) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  const T eps = p.eps;
  const Cloud<T> x(p.x, B, m, p.d), y(p.y, B, n, p.d);
  std::vector<T> f(static_cast<std::size_t>(B * m)), g(static_cast<std::size_t>(B * n), T(0));
  std::vector<T> column_cost(static_cast<std::size_t>(B * n));
  for (int64_t l = 1; l <= L; ++l) {
    // f-update: u^l_i = softmin over the points y_j of g^{l-1}.
    for_each_tile(B, m, row_work(n, p.d), [&](int64_t b, int64_t i0, int64_t i1) {
      T* u = p.u_history + (b * L + l - 1) * m;
      softmin_tile(x, y, b, i0, i1, g.data() + b * n, eps, p.cost, u, static_cast<T*>(nullptr));
      for (int64_t i = i0; i < i1; ++i)
        f[b * m + i] = with_log_weight(p.x_weights[b * m + i], u[i], eps);
    });
    // g-update: v^l_j = softmin over the points x_i of f^l.
    const bool last = l == L;
    for_each_tile(B, n, row_work(m, p.d), [&](int64_t b, int64_t j0, int64_t j1) {
      T* v = p.v_history + (b * L + l - 1) * n;
      softmin_tile(y, x, b, j0, j1, f.data() + b * m, eps, p.cost, v,
                   last ? column_cost.data() + b * n : nullptr);
      for (int64_t j = j0; j < j1; ++j)
        g[b * n + j] = with_log_weight(p.y_weights[b * n + j], v[j], eps);
    });
  }
  // W_L = sum_ij C_ij P_ij = sum_j beta_j (expected cost of column j under P_L / beta_j).
  for (int64_t b = 0; b < B; ++b) {
    T w = T(0);
    for (int64_t j = 0; j < n; ++j) w += p.y_weights[b * n + j] * column_cost[b * n + j];
    p.cost_out[b] = w;
  }
}

template <typename T>
void online_backward(const SinkhornParams<T>& p) {
  const int64_t B = p.batch, m = p.m, n = p.n, d = p.d, L = p.iters, D = d + 1;
  const T eps = p.eps;
  const Cloud<T> x(p.x, B, m, d), y(p.y, B, n, d);
  std::vector<T> f(static_cast<std::size_t>(B * m)), g(static_cast<std::size_t>(B * n));
  std::vector<T> phi(static_cast<std::size_t>(B * m)), psi(static_cast<std::size_t>(B * n));
  std::vector<T> out(static_cast<std::size_t>(B * std::max(m, n)));
  // The sums that give the gradients: for a point a of either cloud, S_0 = sum_c gk_c and
  // S_k = sum_c gk_c b_ck over the other cloud's points b_c (gk the terms' (dW/dC) k(C)). A
  // pass adds to its own rows' sums (x_sums (B, m, D), y_sums (B, n, D)) and to the
  // per-thread sums of the other cloud's points, laid out (B, D, count). Where y is x, the
  // sums of both clouds are one set: grad_x gets the gradient through both arguments.
  const int threads = at::get_num_threads();
  std::vector<T> x_sums(static_cast<std::size_t>(B * m * D), T(0)), y_own_sums;
  std::vector<std::vector<T>> x_columns(threads), y_own_columns;
  for (int t = 0; t < threads; ++t) x_columns[t].assign(static_cast<std::size_t>(B * D * m), T(0));
  if (!p.x_is_y) {
    y_own_sums.assign(static_cast<std::size_t>(B * n * D), T(0));
    y_own_columns.resize(threads);
    for (int t = 0; t < threads; ++t)
      y_own_columns[t].assign(static_cast<std::size_t>(B * D * n), T(0));
  }
  std::vector<T>& y_sums = p.x_is_y ? x_sums : y_own_sums;
  std::vector<std::vector<T>>& y_columns = p.x_is_y ? x_columns : y_own_columns;
  auto u_at = [&](int64_t b, int64_t l) { return p.u_history + (b * L + l - 1) * m; };
  auto v_at = [&](int64_t b, int64_t l) { return p.v_history + (b * L + l - 1) * n; };
  auto load_potentials = [&](int64_t l) {
    for (int64_t b = 0; b < B; ++b) {
      add_log_weights(p.x_weights + b * m, u_at(b, l), m, eps, f.data() + b * m);
      add_log_weights(p.y_weights + b * n, v_at(b, l), n, eps, g.data() + b * n);
    }
  };
  load_potentials(L);
  std::fill(p.grad_x_weights, p.grad_x_weights + B * m, T(0));

  // psi^L_j = (expected cost of column j under P_L) / eps.
  for_each_tile(B, n, row_work(m, d), [&](int64_t b, int64_t j0, int64_t j1) {
    T* expected_cost = psi.data() + b * n;
    softmin_tile(y, x, b, j0, j1, f.data() + b * m, eps, p.cost, out.data() + b * n,
                 expected_cost);
    for (int64_t j = j0; j < j1; ++j) {
      p.grad_y_weights[b * n + j] = expected_cost[j];  // eps * psi^L
      expected_cost[j] /= eps;
    }
  });

  for (int64_t l = L; l >= 1; --l) {
    // Adjoint of the g-update of level l, over the rows i (DESIGN.md section 1, g-step).
    for_each_tile(B, m, 2 * row_work(n, d), [&](int64_t b, int64_t i0, int64_t i1) {
      const T* u = u_at(b, l);
      const T* alpha = p.x_weights + b * m;
      adjoint_tile(x, y, b, i0, i1, g.data() + b * n, psi.data() + b * n,
                   [&](int64_t i) { return std::make_pair(u[i], alpha[i]); }, l == L, eps,
                   p.cost, out.data() + b * m, x_sums.data() + b * m * D,
                   y_columns[at::get_thread_num()].data() + b * D * n);
      for (int64_t i = i0; i < i1; ++i) {
        phi[b * m + i] = out[b * m + i];
        p.grad_x_weights[b * m + i] += eps * out[b * m + i];
      }
    });
    // Adjoint of the f-update of level l, over the rows j (f-step). At l = 1 the f-update
    // read g^0 = 0, which carries no weight.
    for_each_tile(B, n, 2 * row_work(m, d), [&](int64_t b, int64_t j0, int64_t j1) {
      const T* v = l > 1 ? v_at(b, l - 1) : nullptr;
      const T* beta = p.y_weights + b * n;
      adjoint_tile(y, x, b, j0, j1, f.data() + b * m, phi.data() + b * m,
                   [&](int64_t j) {
                     return l > 1 ? std::make_pair(v[j], beta[j]) : std::make_pair(T(0), T(1));
                   },
                   false, eps, p.cost, out.data() + b * n, y_sums.data() + b * n * D,
                   x_columns[at::get_thread_num()].data() + b * D * m);
      if (l > 1) {
        for (int64_t j = j0; j < j1; ++j) {
          psi[b * n + j] = out[b * n + j];
          p.grad_y_weights[b * n + j] += eps * out[b * n + j];
        }
      }
    });
    if (l > 1) load_potentials(l - 1);
  }

  // dW/da_r = grad_cost (a_r S_0 - S_{1..d}), S the row's sums plus every thread's column sums.
  auto finish = [&](const T* a, int64_t count, const std::vector<T>& sums,
                    const std::vector<std::vector<T>>& columns, T* grad, T* grad_weights) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t r = 0; r < count; ++r) {
        const int64_t br = b * count + r;
        T mass = T(0);  // S_0
        for (int64_t k = 0; k <= d; ++k) {
          T sum = sums[br * D + k];
          for (int t = 0; t < threads; ++t) sum += columns[t][(b * D + k) * count + r];
          if (k == 0) {
            mass = sum;
          } else {
            grad[br * d + k - 1] = p.grad_cost[b] * (a[br * d + k - 1] * mass - sum);
          }
        }
        grad_weights[br] *= p.grad_cost[b];
      }
    }
  };
  finish(p.x, m, x_sums, x_columns, p.grad_x, p.grad_x_weights);
  if (p.grad_y != nullptr) {
    finish(p.y, n, y_sums, y_columns, p.grad_y, p.grad_y_weights);
  } else {
    for (int64_t j = 0; j < B * n; ++j) p.grad_y_weights[j] *= p.grad_cost[j / n];
  }
}

template void online_forward<float>(const SinkhornParams<float>&);
template void online_forward<double>(const SinkhornParams<double>&);
template void online_backward<float>(const SinkhornParams<float>&);
template void online_backward<double>(const SinkhornParams<double>&);

}  // namespace sinkhorn::cpu
