// The online backend: no m x n array. Every pass takes one point of one cloud against the other
// cloud in pieces of kPiece points, computes those costs (cpu/rows.h cost_row), and streams the
// row's log-sum-exp over the pieces (core/softmin.h OnlineSoftmin). Memory: the histories, the
// clouds transposed, and per thread a piece of costs and the column sums of the backward.
//
// The backward is the log-domain recursion of DESIGN.md section 1 with dW/dC folded into the
// passes: a pass over the rows of one cloud adds each term's (dW/dC_ij) k(C_ij) to its own
// row's sums (which give dW/dx_i) and to per-thread column sums (which give dW/dy_j), so
// neither dW/dC nor an atomic is needed; the per-thread sums are added in a fixed order.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "core/softmin.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "cpu/strategies.h"

namespace sinkhorn::cpu {
namespace {

constexpr int64_t kPiece = 512;

// The cloud transposed per batch, (B, d, count).
template <typename T>
std::vector<T> transposed(const T* cloud, int64_t batch, int64_t count, int64_t d) {
  std::vector<T> out(static_cast<std::size_t>(batch * d * count));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < count; ++r)
      for (int64_t k = 0; k < d; ++k) out[(b * d + k) * count + r] = cloud[(b * count + r) * d + k];
  return out;
}

// A piece of kPiece costs, one per thread.
template <typename T>
T* piece_scratch() {
  thread_local std::vector<T> scratch;
  scratch.resize(2 * kPiece);
  return scratch.data();
}

// softmin over the points b_c (given transposed, (d, count)) of h_c - c(a, b_c), streamed; with
// expected_cost, also the cost averaged under the row's softmax.
template <typename T>
T streamed_softmin(const T* a, const T* other_t, int64_t count, int d, const T* h, T eps,
                   Cost cost, T* expected_cost) {
  T* costs = piece_scratch<T>();
  OnlineSoftmin<T, true> row;
  for (int64_t c0 = 0; c0 < count; c0 += kPiece) {
    const int width = static_cast<int>(std::min(kPiece, count - c0));
    cost_row(a, other_t + c0, count, d, width, cost, costs);
    row.add(softmin_sums(costs, h + c0, width, eps, expected_cost != nullptr));
  }
  if (expected_cost != nullptr) *expected_cost = row.expected_cost();
  return row.softmin(eps);
}

template <typename T>
void add_log_weights(const T* weights, const T* potential, int64_t count, T eps, T* out) {
  for (int64_t k = 0; k < count; ++k) out[k] = with_log_weight(weights[k], potential[k], eps);
}

}  // namespace

template <typename T>
void online_forward(const SinkhornParams<T>& p) {
  const int64_t B = p.batch, m = p.m, n = p.n, d = p.d, L = p.iters;
  const T eps = p.eps;
  const int dim = static_cast<int>(d);
  const std::vector<T> xt = transposed(p.x, B, m, d), yt = transposed(p.y, B, n, d);
  std::vector<T> f(static_cast<std::size_t>(B * m)), g(static_cast<std::size_t>(B * n), T(0));
  std::vector<T> column_cost(static_cast<std::size_t>(B * n));
  for (int64_t l = 1; l <= L; ++l) {
    for_each_row(B, m, kExpWork * n * (d + 1), [&](int64_t b, int64_t i) {
      const T u = streamed_softmin(p.x + (b * m + i) * d, yt.data() + b * d * n, n, dim,
                                   g.data() + b * n, eps, p.cost, static_cast<T*>(nullptr));
      p.u_history[(b * L + l - 1) * m + i] = u;
      f[b * m + i] = with_log_weight(p.x_weights[b * m + i], u, eps);
    });
    const bool last = l == L;
    for_each_row(B, n, kExpWork * m * (d + 1), [&](int64_t b, int64_t j) {
      const T v = streamed_softmin(p.y + (b * n + j) * d, xt.data() + b * d * m, m, dim,
                                   f.data() + b * m, eps, p.cost,
                                   last ? column_cost.data() + b * n + j : nullptr);
      p.v_history[(b * L + l - 1) * n + j] = v;
      g[b * n + j] = with_log_weight(p.y_weights[b * n + j], v, eps);
    });
  }
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
  const int dim = static_cast<int>(d);
  const std::vector<T> xt = transposed(p.x, B, m, d), yt = transposed(p.y, B, n, d);
  std::vector<T> f(static_cast<std::size_t>(B * m)), g(static_cast<std::size_t>(B * n));
  std::vector<T> phi(static_cast<std::size_t>(B * m)), psi(static_cast<std::size_t>(B * n));
  // The sums that give the gradients: for a point a of either cloud, sum_c gk_c and
  // sum_c gk_c b_ck over the other cloud's points b_c. Each pass adds to its own rows'
  // (x_sums (B, m, D), y_sums (B, n, D)) and to the per-thread sums of the other cloud's
  // points, laid out (B, D, count) along the columns.
  std::vector<T> x_sums(static_cast<std::size_t>(B * m * D), T(0));
  std::vector<T> y_sums(static_cast<std::size_t>(B * n * D), T(0));
  const int threads = at::get_num_threads();
  std::vector<std::vector<T>> x_columns(threads), y_columns(threads);
  for (int t = 0; t < threads; ++t) {
    x_columns[t].assign(static_cast<std::size_t>(B * D * m), T(0));
    y_columns[t].assign(static_cast<std::size_t>(B * D * n), T(0));
  }
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
  for_each_row(B, n, kExpWork * m * D, [&](int64_t b, int64_t j) {
    T expected_cost;
    streamed_softmin(p.y + (b * n + j) * d, xt.data() + b * d * m, m, dim, f.data() + b * m, eps,
                     p.cost, &expected_cost);
    psi[b * n + j] = expected_cost / eps;
    p.grad_y_weights[b * n + j] = expected_cost;  // eps * psi^L
  });

  // One adjoint pass over the rows r of one cloud (a, (B, rows, d)) against the other (bt,
  // transposed): returns the row's adjoint sum, and adds its terms to the gradient sums.
  auto adjoint_pass_row = [&](const T* a_r, const T* bt, int64_t cols, const T* h, const T* adj,
                              T s, T w, bool terminal, T* row_sums, T* column_sums) {
    T* costs = piece_scratch<T>();
    T* gk = costs + kPiece;
    T out = T(0);
    for (int64_t c0 = 0; c0 < cols; c0 += kPiece) {
      const int width = static_cast<int>(std::min(kPiece, cols - c0));
      cost_row(a_r, bt + c0, cols, dim, width, p.cost, costs);
      out += adjoint_piece(costs, h + c0, adj + c0, s, w, width, eps, terminal, p.cost, gk);
      accumulate_piece(gk, width, bt + c0, cols, a_r, dim, row_sums, column_sums + c0, cols);
    }
    return out;
  };

  for (int64_t l = L; l >= 1; --l) {
    // Adjoint of the g-update of level l, over the rows i (DESIGN.md section 1, g-step).
    for_each_row(B, m, 2 * kExpWork * n * D, [&](int64_t b, int64_t i) {
      const int64_t bi = b * m + i;
      const T out = adjoint_pass_row(p.x + bi * d, yt.data() + b * d * n, n, g.data() + b * n,
                                     psi.data() + b * n, u_at(b, l)[i], p.x_weights[bi], l == L,
                                     x_sums.data() + bi * D,
                                     y_columns[at::get_thread_num()].data() + b * D * n);
      phi[bi] = out;
      p.grad_x_weights[bi] += eps * out;
    });
    // Adjoint of the f-update of level l, over the rows j (f-step). At l = 1 the f-update
    // read g^0 = 0, which carries no weight.
    for_each_row(B, n, 2 * kExpWork * m * D, [&](int64_t b, int64_t j) {
      const int64_t bj = b * n + j;
      const T s = l > 1 ? v_at(b, l - 1)[j] : T(0);
      const T w = l > 1 ? p.y_weights[bj] : T(1);
      const T out = adjoint_pass_row(p.y + bj * d, xt.data() + b * d * m, m, f.data() + b * m,
                                     phi.data() + b * m, s, w, false, y_sums.data() + bj * D,
                                     x_columns[at::get_thread_num()].data() + b * D * m);
      if (l > 1) {
        psi[bj] = out;
        p.grad_y_weights[bj] += eps * out;
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
  finish(p.y, n, y_sums, y_columns, p.grad_y, p.grad_y_weights);
}

template void online_forward<float>(const SinkhornParams<float>&);
template void online_forward<double>(const SinkhornParams<double>&);
template void online_backward<float>(const SinkhornParams<float>&);
template void online_backward<double>(const SinkhornParams<double>&);

}  // namespace sinkhorn::cpu
