// The scaling strategy: K = exp(-C / eps) once, then the iterations of paper eq. 7 as products
// of K with vectors, in the shifted form of core/softmin.h (scaled_softmin), which gives the
// log-domain iterates to rounding where scaling_form_is_safe holds. A half-step costs one
// multiply-add per element of K instead of an exp.
//
// The backward follows DESIGN.md section 1 in the scaled adjoints phi, psi of the log-domain
// strategy, with every exp((s_r + h_c - C_rc) / eps) written as exp(-C_rc / eps) times a
// factor of the row and a factor of the column. Each reverse step is then a product with K or
// K^T, and its contribution to dW/dC is K times a rank-one matrix; dW/dC is formed once at the
// end as K (A B + terminal term), with A (m, 2L) and B (2L, n) the stacked factors.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/cost.h"
#include "core/softmin.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "cpu/strategies.h"

namespace sinkhorn::cpu {
namespace {

template <typename T>
T max_of(const T* v, int64_t count) {
  T shift = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < count; ++k) shift = std::max(shift, v[k]);
  return shift;
}

// Per batch: shift[b] = max_c h[b, c] and e[b, c] = exp((h[b, c] - shift[b]) / eps), in [0, 1].
template <typename T>
void shifted_exp(const T* h, int64_t batch, int64_t count, T eps, T* shift, T* e) {
  for (int64_t b = 0; b < batch; ++b) {
    shift[b] = max_of(h + b * count, count);
    exp_affine(h + b * count, shift[b], T(1) / eps, static_cast<int>(count), e + b * count);
  }
}

// out[b, c] = sum_r M[b, r, c] v[b, r] for M (B, rows, cols): the products with K^T, by blocks
// of columns, each reading its stripe of every row.
template <typename T, typename Finish>
void column_products(const T* M, const T* v, int64_t batch, int64_t rows, int64_t cols, T* out,
                     const Finish& finish) {
  for_each_column_block(batch, cols, rows, [&](int64_t b, int64_t c0, int64_t c1) {
    T* acc = out + b * cols + c0;
    const int width = static_cast<int>(c1 - c0);
    std::fill(acc, acc + width, T(0));
    for (int64_t r = 0; r < rows; ++r) add_scaled(v[b * rows + r], M + (b * rows + r) * cols + c0, width, acc);
    for (int64_t c = c0; c < c1; ++c) finish(b, c);
  });
}

template <typename T>
void build_kernel_matrix(const T* C, int64_t batch, int64_t m, int64_t n, T eps, T* K) {
  for_each_row(batch, m, kExpWork * n, [&](int64_t b, int64_t i) {
    const int64_t row = (b * m + i) * n;
    exp_affine(C + row, T(0), T(-1) / eps, static_cast<int>(n), K + row);
  });
}

}  // namespace

template <typename T>
void scaling_forward(const SinkhornParams<T>& p, const T* C) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  const T eps = p.eps, inv_eps = T(1) / eps;
  Buffer<T> K_buffer(B * m * n), f_buffer(B * m), g_buffer(B * n), e_buffer(B * std::max(m, n));
  Buffer<T> shift_buffer(B), column_buffer(B * n), row_buffer(B * m);
  T *K = K_buffer.get(), *f = f_buffer.get(), *g = g_buffer.get(), *e = e_buffer.get();
  T *shift = shift_buffer.get(), *column = column_buffer.get(), *row = row_buffer.get();
  build_kernel_matrix(C, B, m, n, eps, K);
  std::fill(g, g + B * n, T(0));  // g^0 = 0, i.e. b^0 = 1

  for (int64_t l = 1; l <= L; ++l) {
    // f-update: u^l_i = -gamma - eps log sum_j K_ij exp((g_j - gamma) / eps), gamma = max g.
    shifted_exp(g, B, n, eps, shift, e);
    for_each_row_range(B, m, n, [&](int64_t b, int64_t i0, int64_t i1) {
      matvec(K + (b * m + i0) * n, static_cast<int>(i1 - i0), static_cast<int>(n), e + b * n,
             row + b * m + i0);
      for (int64_t i = i0; i < i1; ++i) {
        const T u = scaled_softmin(row[b * m + i], shift[b], eps);
        p.u_history[(b * L + l - 1) * m + i] = u;
        f[b * m + i] = with_log_weight(p.x_weights[b * m + i], u, eps);
      }
    });
    // g-update: v^l_j from the column j of K and f^l.
    shifted_exp(f, B, m, eps, shift, e);
    column_products(K, e, B, m, n, column, [&](int64_t b, int64_t j) {
      const T v = scaled_softmin(column[b * n + j], shift[b], eps);
      p.v_history[(b * L + l - 1) * n + j] = v;
      g[b * n + j] = with_log_weight(p.y_weights[b * n + j], v, eps);
    });
  }
  // W_L = sum_ij C_ij P_ij with P_ij = exp((f_i + gamma) / eps) K_ij exp((g_j - gamma) / eps);
  // the first factor is at most exp(max C / eps) (scaling_form_is_safe).
  shifted_exp(g, B, n, eps, shift, e);
  for_each_row(B, m, n, [&](int64_t b, int64_t i) {
    const int64_t bi = b * m + i;
    row[bi] = fast_exp((f[bi] + shift[b]) * inv_eps) *
              dot3(C + bi * n, K + bi * n, e + b * n, static_cast<int>(n));
  });
  for (int64_t b = 0; b < B; ++b) {
    T w = T(0);
    for (int64_t i = 0; i < m; ++i) w += row[b * m + i];
    p.cost_out[b] = w;
  }
}

template <typename T>
void scaling_backward(const SinkhornParams<T>& p, const T* C) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters, R = 2 * L;
  const T eps = p.eps, inv_eps = T(1) / eps;
  Buffer<T> K_buffer(B * m * n), f_buffer(B * m), g_buffer(B * n);
  Buffer<T> phi_buffer(B * m), psi_buffer(B * n), e_buffer(B * std::max(m, n)), shift_buffer(B);
  Buffer<T> column_buffer(B * n), A_buffer(B * m * R), F_buffer(B * R * n);
  Buffer<T> terminal_row_buffer(B * m), terminal_column_buffer(B * n);
  T *K = K_buffer.get(), *f = f_buffer.get(), *g = g_buffer.get();
  T *phi = phi_buffer.get(), *psi = psi_buffer.get(), *e = e_buffer.get();
  T *shift = shift_buffer.get(), *column = column_buffer.get();
  // dW/dC = K * (sum_k A[:, k] F[k, :] + terminal_row terminal_column^T (1 - C / eps)).
  T *A = A_buffer.get(), *F = F_buffer.get();
  T *terminal_row = terminal_row_buffer.get(), *terminal_column = terminal_column_buffer.get();
  build_kernel_matrix(C, B, m, n, eps, K);
  auto u_at = [&](int64_t b, int64_t l) { return p.u_history + (b * L + l - 1) * m; };
  auto v_at = [&](int64_t b, int64_t l) { return p.v_history + (b * L + l - 1) * n; };
  auto load_potentials = [&](int64_t l) {  // f^l, g^l
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < m; ++i)
        f[b * m + i] = with_log_weight(p.x_weights[b * m + i], u_at(b, l)[i], eps);
      for (int64_t j = 0; j < n; ++j)
        g[b * n + j] = with_log_weight(p.y_weights[b * n + j], v_at(b, l)[j], eps);
    }
  };
  load_potentials(L);
  std::fill(p.grad_x_weights, p.grad_x_weights + B * m, T(0));

  // P_L = K_ij terminal_row_i terminal_column_j with terminal_row_i = exp((f_i + gamma) / eps)
  // and terminal_column_j = exp((g_j - gamma) / eps); psi^L_j = sum_i C_ij P_ij / (eps beta_j).
  shifted_exp(g, B, n, eps, shift, terminal_column);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < m; ++i)
      terminal_row[b * m + i] = fast_exp((f[b * m + i] + shift[b]) * inv_eps);
  for_each_column_block(B, n, 2 * m, [&](int64_t b, int64_t c0, int64_t c1) {
    T* acc = column + b * n + c0;
    const int width = static_cast<int>(c1 - c0);
    std::fill(acc, acc + width, T(0));
    for (int64_t i = 0; i < m; ++i) {
      const int64_t row = (b * m + i) * n + c0;
      add_scaled_product(terminal_row[b * m + i], C + row, K + row, width, acc);
    }
    for (int64_t j = c0; j < c1; ++j) {
      // exp((v_j - gamma) / eps) = terminal_column_j / beta_j, finite where beta_j = 0.
      const T expected_cost = fast_exp((v_at(b, L)[j] - shift[b]) * inv_eps) * column[b * n + j];
      psi[b * n + j] = expected_cost * inv_eps;
      p.grad_y_weights[b * n + j] = expected_cost;  // eps * psi^L
    }
  });

  for (int64_t l = L; l >= 1; --l) {
    const int64_t k = 2 * (L - l);  // the factors of this level: k (g-step), k + 1 (f-step)
    // Adjoint of the g-update, over the rows i: e_ij = exp((u_i + g_j - C_ij) / eps)
    // = exp((u_i + gamma) / eps) K_ij exp((g_j - gamma) / eps), gamma = max g.
    shifted_exp(g, B, n, eps, shift, e);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < n; ++j) F[(b * R + k) * n + j] = e[b * n + j] * psi[b * n + j];
    for_each_row_range(B, m, l == L ? 3 * n : n, [&](int64_t b, int64_t i0, int64_t i1) {
      matvec(K + (b * m + i0) * n, static_cast<int>(i1 - i0), static_cast<int>(n),
             F + (b * R + k) * n, phi + b * m + i0);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bi = b * m + i;
        T sum = -phi[bi];
        if (l == L) sum += dot3(C + bi * n, K + bi * n, e + b * n, static_cast<int>(n)) * inv_eps;
        const T out = fast_exp((u_at(b, l)[i] + shift[b]) * inv_eps) * sum;
        phi[bi] = out;
        p.grad_x_weights[bi] += eps * out;
        A[bi * R + k] = fast_exp((f[bi] + shift[b]) * inv_eps);  // alpha_i exp((u_i + gamma) / eps)
      }
    });
    // Adjoint of the f-update, over the columns j: e_ji = exp((s_j + f_i - C_ij) / eps)
    // = exp((s_j + phi_max) / eps) K_ij exp((f_i - phi_max) / eps), with s_j = v^{l-1}_j and
    // weight beta_j (s_j = 0 and weight 1 at l = 1, where the f-update read g^0 = 0).
    shifted_exp(f, B, m, eps, shift, e);
    for (int64_t bi = 0; bi < B * m; ++bi) {
      e[bi] *= phi[bi];
      A[bi * R + k + 1] = e[bi];
    }
    column_products(K, e, B, m, n, column, [&](int64_t b, int64_t j) {
      const int64_t bj = b * n + j;
      const T s = l > 1 ? v_at(b, l - 1)[j] : T(0);
      const T previous_g = l > 1 ? with_log_weight(p.y_weights[bj], s, eps) : T(0);
      F[(b * R + k + 1) * n + j] = fast_exp((previous_g + shift[b]) * inv_eps);
      if (l > 1) {
        const T out = -fast_exp((s + shift[b]) * inv_eps) * column[bj];
        psi[bj] = out;
        p.grad_y_weights[bj] += eps * out;
      }
    });
    if (l > 1) load_potentials(l - 1);
  }

  // H = dW/dC * k(C), written over K row by row.
  for_each_row(B, m, (R + 4) * n, [&](int64_t b, int64_t i) {
    const int64_t bi = b * m + i;
    const T* C_row = C + bi * n;
    thread_local std::vector<T> sum_buffer;
    sum_buffer.resize(static_cast<std::size_t>(n));
    T* sum = sum_buffer.data();
    const T t_row = terminal_row[bi];
    for (int64_t j = 0; j < n; ++j)
      sum[j] = t_row * terminal_column[b * n + j] * (T(1) - C_row[j] * inv_eps);
    for (int64_t q = 0; q < R; ++q)
      add_scaled(A[bi * R + q], F + (b * R + q) * n, static_cast<int>(n), sum);
    T* H_row = K + bi * n;
    for (int64_t j = 0; j < n; ++j) H_row[j] *= sum[j] * cost_slope(C_row[j], p.cost);
  });
  finish_backward(p, K);
}

template void scaling_forward<float>(const SinkhornParams<float>&, const float*);
template void scaling_forward<double>(const SinkhornParams<double>&, const double*);
template void scaling_backward<float>(const SinkhornParams<float>&, const float*);
template void scaling_backward<double>(const SinkhornParams<double>&, const double*);

}  // namespace sinkhorn::cpu
