// The log-domain strategy: every half-step is a softmin pass over the rows of C (f-update) or
// of C^T (g-update), and the backward accumulates dW/dC in the layouts of both. It is exact
// at any eps, and is used where the scaling form is not provably safe.
#include <algorithm>

#include "core/cost.h"
#include "core/softmin.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "cpu/strategies.h"

namespace sinkhorn::cpu {
namespace {

// C^T (B, n, m) from C (B, m, n), in 32 x 32 tiles.
template <typename T>
void transpose(const T* C, int64_t batch, int64_t m, int64_t n, T* Ct) {
  constexpr int64_t kTile = 32;
  for_each_row(batch, (m + kTile - 1) / kTile, kTile * n, [&](int64_t b, int64_t tile) {
    const int64_t i0 = tile * kTile, i1 = std::min(m, i0 + kTile);
    for (int64_t j0 = 0; j0 < n; j0 += kTile) {
      const int64_t j1 = std::min(n, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) Ct[(b * n + j) * m + i] = C[(b * m + i) * n + j];
    }
  });
}

}  // namespace

template <typename T>
void log_domain_forward(const SinkhornParams<T>& p, const T* C) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  const T eps = p.eps;
  Buffer<T> Ct_buffer(B * n * m), f_buffer(B * m), g_buffer(B * n), column_cost_buffer(B * n);
  T *Ct = Ct_buffer.get(), *f = f_buffer.get(), *g = g_buffer.get();
  T* column_cost = column_cost_buffer.get();
  transpose(C, B, m, n, Ct);
  std::fill(g, g + B * n, T(0));  // g^0 = 0, i.e. b^0 = 1

  for (int64_t l = 1; l <= L; ++l) {
    const bool last = l == L;
    // f-update: u^l_i = softmin over the row i of C of g^{l-1}.
    for_each_row(B, m, kExpWork * n, [&](int64_t b, int64_t i) {
      const T u = softmin_row(C + (b * m + i) * n, g + b * n, static_cast<int>(n), eps);
      p.u_history[(b * L + l - 1) * m + i] = u;
      f[b * m + i] = with_log_weight(p.x_weights[b * m + i], u, eps);
    });
    // g-update: v^l_j = softmin over the row j of C^T of f^l.
    for_each_row(B, n, kExpWork * m, [&](int64_t b, int64_t j) {
      const T* row = Ct + (b * n + j) * m;
      const T v = last ? softmin_row_with_expected_cost(row, f + b * m, static_cast<int>(m), eps,
                                                        column_cost + b * n + j)
                       : softmin_row(row, f + b * m, static_cast<int>(m), eps);
      p.v_history[(b * L + l - 1) * n + j] = v;
      g[b * n + j] = with_log_weight(p.y_weights[b * n + j], v, eps);
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
void log_domain_backward(const SinkhornParams<T>& p, const T* C) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  const T eps = p.eps;
  Buffer<T> Ct_buffer(B * n * m), G_buffer(B * m * n), Gt_buffer(B * n * m);
  Buffer<T> f_buffer(B * m), g_buffer(B * n), phi_buffer(B * m), psi_buffer(B * n);
  T *Ct = Ct_buffer.get(), *G = G_buffer.get(), *Gt = Gt_buffer.get();
  T *f = f_buffer.get(), *g = g_buffer.get(), *phi = phi_buffer.get(), *psi = psi_buffer.get();
  transpose(C, B, m, n, Ct);
  std::fill(G, G + B * m * n, T(0));
  std::fill(Gt, Gt + B * n * m, T(0));
  auto u_at = [&](int64_t b, int64_t l) { return p.u_history + (b * L + l - 1) * m; };
  auto v_at = [&](int64_t b, int64_t l) { return p.v_history + (b * L + l - 1) * n; };
  for (int64_t b = 0; b < B; ++b) {
    add_log_weights(p.x_weights + b * m, u_at(b, L), m, eps, f + b * m);
    add_log_weights(p.y_weights + b * n, v_at(b, L), n, eps, g + b * n);
  }
  std::fill(p.grad_x_weights, p.grad_x_weights + B * m, T(0));

  // psi^L_j = gbar^L_j / beta_j = (expected cost of column j under P_L) / eps.
  for_each_row(B, n, kExpWork * m, [&](int64_t b, int64_t j) {
    T expected_cost;
    softmin_row_with_expected_cost(Ct + (b * n + j) * m, f + b * m, static_cast<int>(m), eps,
                                   &expected_cost);
    psi[b * n + j] = expected_cost / eps;
    p.grad_y_weights[b * n + j] = expected_cost;  // eps * psi^L
  });

  for (int64_t l = L; l >= 1; --l) {
    // Adjoint of the g-update of level l, over the rows i of C: phi^l and dW/dC (layout C).
    for_each_row(B, m, kExpWork * n, [&](int64_t b, int64_t i) {
      const int64_t bi = b * m + i;
      const T out = softmin_adjoint_row(C + bi * n, g + b * n, psi + b * n, u_at(b, l)[i],
                                        p.x_weights[bi], static_cast<int>(n), eps, l == L,
                                        G + bi * n);
      phi[bi] = out;
      p.grad_x_weights[bi] += eps * out;
    });
    // Adjoint of the f-update of level l, over the rows j of C^T: psi^{l-1} and dW/dC
    // (layout C^T). At l = 1 the f-update read g^0 = 0, which carries no weight.
    for_each_row(B, n, kExpWork * m, [&](int64_t b, int64_t j) {
      const int64_t bj = b * n + j;
      const T s = l > 1 ? v_at(b, l - 1)[j] : T(0);
      const T w = l > 1 ? p.y_weights[bj] : T(1);
      const T out = softmin_adjoint_row(Ct + bj * m, f + b * m, phi + b * m, s, w,
                                        static_cast<int>(m), eps, false, Gt + bj * m);
      if (l > 1) {
        psi[bj] = out;
        p.grad_y_weights[bj] += eps * out;
      }
    });
    // f^{l-1} and g^{l-1} for the next level down.
    if (l > 1) {
      for (int64_t b = 0; b < B; ++b) {
        add_log_weights(p.x_weights + b * m, u_at(b, l - 1), m, eps, f + b * m);
        add_log_weights(p.y_weights + b * n, v_at(b, l - 1), n, eps, g + b * n);
      }
    }
  }

  // H = (G + Gt^T) * k(C), in the layout of C.
  constexpr int64_t kTile = 32;
  for_each_row(B, (m + kTile - 1) / kTile, kTile * n, [&](int64_t b, int64_t tile) {
    const int64_t i0 = tile * kTile, i1 = std::min(m, i0 + kTile);
    for (int64_t j0 = 0; j0 < n; j0 += kTile) {
      const int64_t j1 = std::min(n, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t ij = (b * m + i) * n + j;
          G[ij] = (G[ij] + Gt[(b * n + j) * m + i]) * cost_slope(C[ij], p.cost);
        }
      }
    }
  });
  finish_backward(p, G, p.n);
}

template void log_domain_forward<float>(const SinkhornParams<float>&, const float*);
template void log_domain_forward<double>(const SinkhornParams<double>&, const double*);
template void log_domain_backward<float>(const SinkhornParams<float>&, const float*);
template void log_domain_backward<double>(const SinkhornParams<double>&, const double*);

}  // namespace sinkhorn::cpu
