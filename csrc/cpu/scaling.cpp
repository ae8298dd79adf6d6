// The scaling strategy: K = exp(-C / eps) once, then the iterations of paper eq. 7 as products
// of K with vectors, in the shifted form of core/softmin.h (scaled_softmin), which gives the
// log-domain iterates to rounding where scaling_form_is_safe holds. A half-step costs one
// multiply-add per element of K instead of an exp.
//
// The backward follows DESIGN.md section 1 in the scaled adjoints phi, psi of the log-domain
// strategy, with every exp((s_r + h_c - C_rc) / eps) written as exp(-C_rc / eps) times a
// factor of the row and a factor of the column. Each reverse step is then a product with K or
// K^T, and its contribution to dW/dC is K times a rank-one matrix; dW/dC is formed once at the
// end as K (A F + terminal term), with A (m, 2L) and F (2L, n) the stacked factors. C is read
// through Costs; recomputed by tiles (large C, small d), it leaves K the one m x n array kept.
// K's rows are kernel_matrix_stride(n) apart (core/params.h), and so are H's, written over it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/softmin.h"
#include "cpu/cost_matrix.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "cpu/strategies.h"

namespace sinkhorn::cpu {
namespace {

// Per batch: shift[b] = max_c h[b, c] and e[b, c] = exp((h[b, c] - shift[b]) / eps), in [0, 1].
template <typename T>
void shifted_exp(const T* h, int64_t batch, int64_t count, T eps, T* shift, T* e) {
  for (int64_t b = 0; b < batch; ++b) {
    shift[b] = max_of(h + b * count, static_cast<int>(count));
    exp_affine_nonpositive(h + b * count, shift[b], T(1) / eps, static_cast<int>(count),
                           e + b * count);
  }
}

// Rows per tile of row_then_column_products: a tile is read a second time, from cache.
template <typename T>
int64_t fused_tile_rows(int64_t cols) {
  constexpr int64_t kTileBytes = 256 * 1024;
  const int64_t fit = kTileBytes / (cols * static_cast<int64_t>(sizeof(T))) / kRowBlock;
  return std::clamp<int64_t>(fit * kRowBlock, kRowBlock, kTileRows);
}

// One pass over K (B, rows, cols) for both half-steps of an iteration, or of a reverse level:
// for each tile of rows, out[b, r] = sum_c K[b, r, c] v_b[c]; then weights = row_step(b,
// slot, t0, t1) for the tile's rows [t0, t1), which the tile adds to the column sums of its
// part of the rows, columns + slot * cols, while still in cache (slot = b * parts + part;
// row_step returns nullptr where the tile adds nothing). A half-step that waited for all
// the rows would read K twice: from memory at large sizes, where that is what bounds it.
// row_then_column_part makes the pass over one part of the rows of batch b (v_b: its
// vector), row_then_column_products over all, in parallel (v: (B, cols)).
template <typename T, typename RowStep>
void row_then_column_part(const T* K, const T* v_b, int64_t b, int64_t part, int64_t rows,
                          int64_t cols, int64_t parts, T* out, T* columns,
                          const RowStep& row_step) {
  const int64_t tile_rows = fused_tile_rows<T>(cols);
  const auto [r0, r1] = row_part_range(rows, parts, part);
  const int64_t slot = b * parts + part, ld = kernel_matrix_stride<T>(cols);
  T* part_columns = columns + slot * cols;
  std::fill(part_columns, part_columns + cols, T(0));
  for (int64_t t0 = r0; t0 < r1; t0 += tile_rows) {
    const int64_t t1 = std::min(r1, t0 + tile_rows);
    const T* tile = K + (b * rows + t0) * ld;
    matvec(tile, ld, static_cast<int>(t1 - t0), static_cast<int>(cols), v_b, out + b * rows + t0);
    const T* weights = row_step(b, slot, t0, t1);
    if (weights != nullptr)
      matvec_transposed(tile, static_cast<int>(t1 - t0), ld, static_cast<int>(cols), weights,
                        part_columns);
  }
}

template <typename T, typename RowStep>
void row_then_column_products(const T* K, const T* v, int64_t batch, int64_t rows, int64_t cols,
                              int64_t parts, T* out, T* columns, const RowStep& row_step) {
  for_each_row_part(batch, rows, parts, 2 * cols, [&](int64_t b, int64_t part) {
    row_then_column_part(K, v + b * cols, b, part, rows, cols, parts, out, columns, row_step);
  });
}

// out[b, r] = sum_c C[b, r, c] K[b, r, c] v[b, c].
template <typename T>
void cost_kernel_row_products(const Costs<T>& C, const T* K, const T* v, int64_t batch,
                              int64_t rows, int64_t cols, T* out) {
  const int64_t ld = kernel_matrix_stride<T>(cols);
  for_each_tile(batch, rows, 2 * cols, [&](int64_t b, int64_t r0, int64_t r1) {
    const auto [C_tile, stride] = C.tile(b, r0, r1, 0, cols, tile_scratch<T>(cols));
    matvec_product(C_tile, stride, K + (b * rows + r0) * ld, ld, static_cast<int>(r1 - r0),
                   static_cast<int>(cols), v + b * cols, out + b * rows + r0);
  });
}

// out[b, c] = sum_r C[b, r, c] K[b, r, c] v[b, r], by blocks of columns.
template <typename T>
void cost_kernel_column_products(const Costs<T>& C, const T* K, const T* v, int64_t batch,
                                 int64_t rows, int64_t cols, T* out) {
  const int64_t ld = kernel_matrix_stride<T>(cols);
  for_each_column_block(batch, cols, 2 * rows, [&](int64_t b, int64_t c0, int64_t c1) {
    const int64_t width = c1 - c0;
    T* acc = out + b * cols + c0;
    std::fill(acc, acc + width, T(0));
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int64_t r1 = std::min(rows, r0 + kTileRows);
      const auto [C_tile, stride] = C.tile(b, r0, r1, c0, c1, tile_scratch<T>(width));
      matvec_product_transposed(C_tile, stride, K + (b * rows + r0) * ld + c0, ld,
                                static_cast<int>(r1 - r0), static_cast<int>(width),
                                v + b * rows + r0, acc);
    }
  });
}

// K = exp(-C / eps).
template <typename T>
void build_kernel_matrix(const Costs<T>& C, int64_t batch, int64_t m, int64_t n, T eps, T* K) {
  const int64_t ld = kernel_matrix_stride<T>(n);
  for_each_tile(batch, m, (kExpWork + 4) * n, [&](int64_t b, int64_t i0, int64_t i1) {
    const auto [C_tile, stride] = C.tile(b, i0, i1, 0, n, tile_scratch<T>(n));
    for (int64_t i = i0; i < i1; ++i)
      exp_affine_nonpositive(C_tile + (i - i0) * stride, T(0), T(-1) / eps,
                             static_cast<int>(n), K + (b * m + i) * ld);
  });
}

// eps log(w) for weights w (count,): -inf where w = 0.
template <typename T>
std::vector<T> eps_log(const T* w, int64_t count, T eps) {
  std::vector<T> out(static_cast<std::size_t>(count));
  for (int64_t k = 0; k < count; ++k) out[k] = with_log_weight(w[k], T(0), eps);
  return out;
}

}  // namespace

template <typename T>
void scaling_forward(const SinkhornParams<T>& p, const Costs<T>& C) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters;
  const T eps = p.eps, inv_eps = T(1) / eps;
  const std::vector<T> log_alpha = eps_log(p.x_weights, B * m, eps);  // eps log alpha
  const std::vector<T> log_beta = eps_log(p.y_weights, B * n, eps);
  constexpr T kNone = -std::numeric_limits<T>::infinity();
  const int64_t parts = row_parts(B, m, 2 * n), slots = B * parts;
  // K, unless left for the backward
  Buffer<T> K_buffer(p.kernel_matrix ? 0 : B * m * kernel_matrix_stride<T>(n));
  Buffer<T> f_buffer(B * m), g_buffer(B * n), e_buffer(B * n), shift_buffer(B);
  Buffer<T> row_buffer(B * m), weight_buffer(B * m);
  // Per slot (a part of the rows of a batch): its column sums and its max f, by the parity of
  // the iteration, so that a slot may start the next iteration while another still reads
  // this one's; its own e and gamma; and its g-update's results (part 0's are the history
  // and g).
  Buffer<T> part_column_buffer(2 * slots * n), part_shift_buffer(2 * slots);
  Buffer<T> slot_e_buffer(slots * n), slot_shift_buffer(slots);
  Buffer<T> slot_sum_buffer(slots * n), slot_v_buffer(slots * n), slot_g_buffer(slots * n);
  T* K = p.kernel_matrix ? p.kernel_matrix : K_buffer.get();
  T *f = f_buffer.get(), *g = g_buffer.get(), *e = e_buffer.get(), *shift = shift_buffer.get();
  T *row = row_buffer.get(), *weight = weight_buffer.get();
  T *part_columns = part_column_buffer.get(), *part_shift = part_shift_buffer.get();
  T *slot_e = slot_e_buffer.get(), *slot_shift = slot_shift_buffer.get();
  T *slot_sums = slot_sum_buffer.get(), *slot_v = slot_v_buffer.get();
  T* slot_g = slot_g_buffer.get();
  if (!p.kernel_matrix_built) build_kernel_matrix(C, B, m, n, eps, K);
  std::fill(g, g + B * n, T(0));  // g^0 = 0, i.e. b^0 = 1
  auto columns_of = [&](int64_t l) { return part_columns + (l % 2) * slots * n; };
  auto shifts_of = [&](int64_t l) { return part_shift + (l % 2) * slots; };

  // The start of iteration l for a slot, from g^{l-1} of its batch: gamma = max g and
  // e_j = exp((g_j - gamma) / eps), and no column sums yet.
  auto start_iteration = [&](int64_t l, int64_t slot, const T* g_b) {
    shifted_exp(g_b, 1, n, eps, slot_shift + slot, slot_e + slot * n);
    shifts_of(l)[slot] = kNone;
  };
  // f-update: u^l_i = -gamma - eps log sum_j K_ij exp((g_j - gamma) / eps), gamma = max g.
  // Each tile's f^l goes at once into the g-update's column sums
  // sum_i K_ij exp((f_i - delta) / eps), with delta the running max f of the tile's part
  // (its sums rescaled as delta grows), so that K is read once per iteration.
  auto f_update = [&](int64_t l, int64_t b, int64_t slot, int64_t i0, int64_t i1) -> const T* {
    const int count = static_cast<int>(i1 - i0);
    T* u = p.u_history + (b * L + l - 1) * m;
    scaled_softmins(row + b * m + i0, slot_shift[slot], eps, count, u + i0);
    T tile_max = kNone;
    for (int64_t i = i0; i < i1; ++i) {
      f[b * m + i] = log_alpha[b * m + i] + u[i];
      tile_max = std::max(tile_max, f[b * m + i]);
    }
    T& delta = shifts_of(l)[slot];
    if (tile_max > delta) {
      if (delta != kNone) {  // else nothing is summed yet
        const T rescale = fast_exp((delta - tile_max) * inv_eps);
        T* sums = columns_of(l) + slot * n;
        for (int64_t j = 0; j < n; ++j) sums[j] *= rescale;
      }
      delta = tile_max;
    }
    if (delta == kNone) return nullptr;  // zero weights alpha_i so far
    exp_affine_nonpositive(f + b * m + i0, delta, inv_eps, count, weight + b * m + i0);
    return weight + b * m + i0;
  };
  // Iteration l's pass over K for the rows of a slot: their f-update, and their terms of the
  // column sums.
  auto column_pass = [&](int64_t l, int64_t slot) {
    row_then_column_part(K, slot_e + slot * n, slot / parts, slot % parts, m, n, parts, row,
                         columns_of(l), [&](int64_t b, int64_t s, int64_t i0, int64_t i1) {
                           return f_update(l, b, s, i0, i1);
                         });
  };
  // g-update, made by every slot of a batch for itself: v^l_j = -delta - eps log(column sum
  // j), the parts' sums brought to the shift delta = max f (a factor exp(0) = 1 exactly for
  // the part that holds it); then the slot's start of the next iteration.
  auto g_update = [&](int64_t l, int64_t slot) {
    const int64_t b = slot / parts, part = slot % parts;
    const T* shifts = shifts_of(l) + b * parts;
    const T delta = *std::max_element(shifts, shifts + parts);
    T* sums = slot_sums + slot * n;
    std::fill(sums, sums + n, T(0));
    for (int64_t k = 0; k < parts; ++k) {
      const T factor = fast_exp((shifts[k] - delta) * inv_eps);  // 0 for a part of kNone
      const T* part_sums = columns_of(l) + (b * parts + k) * n;
      for (int64_t j = 0; j < n; ++j) sums[j] += factor * part_sums[j];
    }
    T* v = part == 0 ? p.v_history + (b * L + l - 1) * n : slot_v + slot * n;
    T* g_b = part == 0 ? g + b * n : slot_g + slot * n;
    scaled_softmins(sums, delta, eps, static_cast<int>(n), v);
    for (int64_t j = 0; j < n; ++j) g_b[j] = log_beta[b * n + j] + v[j];
    if (l < L) start_iteration(l + 1, slot, g_b);
  };
  for (int64_t slot = 0; slot < slots; ++slot) start_iteration(1, slot, g + slot / parts * n);
  // The iterations in one parallel region, a thread per slot, where there are threads
  // enough: one barrier an iteration, after which each thread makes its own g-update. Else a
  // region per iteration, and the g-updates after it. The same arithmetic either way.
  const bool in_one_region = run_steps_in_one_region(
      L, slots, [&](int64_t step, int64_t slot) { column_pass(step + 1, slot); },
      [&](int64_t step, int64_t slot) { g_update(step + 1, slot); });
  for (int64_t l = 1; l <= L && !in_one_region; ++l) {
    for_each_row_part(B, m, parts, 2 * n,
                      [&](int64_t b, int64_t part) { column_pass(l, b * parts + part); });
    for (int64_t slot = 0; slot < slots; ++slot) g_update(l, slot);
  }
  // W_L = sum_ij C_ij P_ij with P_ij = exp((f_i + gamma) / eps) K_ij exp((g_j - gamma) / eps);
  // the first factor is at most exp(max C / eps) (scaling_form_is_safe).
  shifted_exp(g, B, n, eps, shift, e);
  cost_kernel_row_products(C, K, e, B, m, n, row);
  for (int64_t b = 0; b < B; ++b) {
    exp_affine(f + b * m, -shift[b], inv_eps, static_cast<int>(m), weight);
    p.cost_out[b] = dot(weight, row + b * m, static_cast<int>(m));
  }
}

template <typename T>
void scaling_kernel_matrix(const SinkhornParams<T>& p, const Costs<T>& C) {
  build_kernel_matrix(C, p.batch, p.m, p.n, p.eps, p.kernel_matrix);
}

template <typename T>
void scaling_backward(const SinkhornParams<T>& p, const Costs<T>& C) {
  const int64_t B = p.batch, m = p.m, n = p.n, L = p.iters, R = 2 * L;
  const int64_t ld = kernel_matrix_stride<T>(n);
  const T eps = p.eps, inv_eps = T(1) / eps;
  const std::vector<T> log_alpha = eps_log(p.x_weights, B * m, eps);
  const std::vector<T> log_beta = eps_log(p.y_weights, B * n, eps);
  const int64_t parts = row_parts(B, m, 2 * n);
  // K, unless the forward left it
  Buffer<T> K_buffer(p.kernel_matrix ? 0 : B * m * kernel_matrix_stride<T>(n));
  Buffer<T> f_buffer(B * m), g_buffer(B * n);
  Buffer<T> phi_buffer(B * m), psi_buffer(B * n), e_buffer(B * n), shift_buffer(B);
  Buffer<T> f_factor_buffer(B * m), f_shift_buffer(B), part_column_buffer(B * parts * n);
  // F's rows padded to whole blocks of the rank kernel (cpu/rows.h scaling_gradient_rows).
  const int64_t f_stride = (n + gradient_block_columns<T>() - 1) / gradient_block_columns<T>() *
                           gradient_block_columns<T>();
  Buffer<T> column_buffer(B * n), row_buffer(B * m), A_buffer(B * m * R);
  Buffer<T> F_buffer(B * R * f_stride);
  Buffer<T> terminal_row_buffer(B * m), terminal_column_buffer(B * n);
  Buffer<T> factor_buffer(B * std::max(m, n));  // exponential factors, by rows or by columns
  T* K = p.kernel_matrix ? p.kernel_matrix : K_buffer.get();
  T *f = f_buffer.get(), *g = g_buffer.get(), *factor = factor_buffer.get();
  T *phi = phi_buffer.get(), *psi = psi_buffer.get(), *e = e_buffer.get();
  T *shift = shift_buffer.get(), *column = column_buffer.get(), *row = row_buffer.get();
  T *f_factor = f_factor_buffer.get(), *f_shift = f_shift_buffer.get();
  T* part_columns = part_column_buffer.get();
  // dW/dC = K * (sum_k A[:, k] F[k, :] + terminal_row terminal_column^T (1 - C / eps)).
  T *A = A_buffer.get(), *F = F_buffer.get();
  T *terminal_row = terminal_row_buffer.get(), *terminal_column = terminal_column_buffer.get();
  if (p.kernel_matrix == nullptr) build_kernel_matrix(C, B, m, n, eps, K);
  auto u_at = [&](int64_t b, int64_t l) { return p.u_history + (b * L + l - 1) * m; };
  auto v_at = [&](int64_t b, int64_t l) { return p.v_history + (b * L + l - 1) * n; };
  auto load_potentials = [&](int64_t l) {  // f^l, g^l
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < m; ++i) f[b * m + i] = log_alpha[b * m + i] + u_at(b, l)[i];
      for (int64_t j = 0; j < n; ++j) g[b * n + j] = log_beta[b * n + j] + v_at(b, l)[j];
    }
  };
  load_potentials(L);
  std::fill(p.grad_x_weights, p.grad_x_weights + B * m, T(0));

  // P_L = K_ij terminal_row_i terminal_column_j with terminal_row_i = exp((f_i + gamma) / eps)
  // and terminal_column_j = exp((g_j - gamma) / eps); psi^L_j = sum_i C_ij P_ij / (eps beta_j).
  shifted_exp(g, B, n, eps, shift, terminal_column);
  for (int64_t b = 0; b < B; ++b)
    exp_affine(f + b * m, -shift[b], inv_eps, static_cast<int>(m), terminal_row + b * m);
  cost_kernel_column_products(C, K, terminal_row, B, m, n, column);
  for (int64_t b = 0; b < B; ++b) {
    // exp((v_j - gamma) / eps) = terminal_column_j / beta_j, finite where beta_j = 0.
    exp_affine(v_at(b, L), shift[b], inv_eps, static_cast<int>(n), factor);
    for (int64_t j = 0; j < n; ++j) {
      const T expected_cost = factor[j] * column[b * n + j];
      psi[b * n + j] = expected_cost * inv_eps;
      p.grad_y_weights[b * n + j] = expected_cost;  // eps * psi^L
    }
  }
  // The terminal part of phi^L: sum_j C_ij K_ij terminal_column_j, per row.
  cost_kernel_row_products(C, K, terminal_column, B, m, n, row);

  for (int64_t l = L; l >= 1; --l) {
    const int64_t k = 2 * (L - l);  // the factors of this level: k (g-step), k + 1 (f-step)
    // Adjoint of the g-update, over the rows i: e_ij = exp((u_i + g_j - C_ij) / eps)
    // = exp((u_i + gamma) / eps) K_ij exp((g_j - gamma) / eps), gamma = max g.
    shifted_exp(g, B, n, eps, shift, e);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < n; ++j) {
        e[b * n + j] *= psi[b * n + j];
        F[(b * R + k) * f_stride + j] = e[b * n + j];
      }
    }
    // Adjoint of the f-update, over the columns j: e_ji = exp((s_j + f_i - C_ij) / eps)
    // = exp((s_j + max f) / eps) K_ij exp((f_i - max f) / eps), with s_j = v^{l-1}_j and
    // weight beta_j (s_j = 0 and weight 1 at l = 1, where the f-update read g^0 = 0). Each
    // tile's phi^l goes at once into its column sums, so that K is read once per level.
    shifted_exp(f, B, m, eps, f_shift, f_factor);
    row_then_column_products(K, e, B, m, n, parts, phi, part_columns,
                             [&](int64_t b, int64_t, int64_t i0, int64_t i1) -> const T* {
      const int count = static_cast<int>(i1 - i0);
      T* row_factor = factor + b * m + i0;
      exp_affine(u_at(b, l) + i0, -shift[b], inv_eps, count, row_factor);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bi = b * m + i;
        const T sum = l == L ? row[bi] * inv_eps - phi[bi] : -phi[bi];
        const T out = row_factor[i - i0] * sum;
        phi[bi] = out;
        p.grad_x_weights[bi] += eps * out;
      }
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bi = b * m + i;
        A[bi * R + k] = p.x_weights[bi] * row_factor[i - i0];  // alpha_i exp((u_i + gamma) / eps)
        f_factor[bi] *= phi[bi];  // the weights of the column sums
        A[bi * R + k + 1] = f_factor[bi];
      }
      return f_factor + b * m + i0;
    });
    if (l > 1) load_potentials(l - 1);  // the pass above was the last read of f^l, g^l
    for (int64_t b = 0; b < B; ++b) {
      T* sums = column + b * n;
      std::copy(part_columns + b * parts * n, part_columns + (b * parts + 1) * n, sums);
      for (int64_t part = 1; part < parts; ++part) {
        const T* part_sums = part_columns + (b * parts + part) * n;
        for (int64_t j = 0; j < n; ++j) sums[j] += part_sums[j];
      }
      T* F_row = F + (b * R + k + 1) * f_stride;
      if (l == 1) {  // g^0 = 0
        std::fill(F_row, F_row + n, fast_exp(f_shift[b] * inv_eps));
        continue;
      }
      // exp((v_j - max f) / eps), and beta_j times it, exp((g_j - max f) / eps), from g^{l-1}
      exp_affine(v_at(b, l - 1), -f_shift[b], inv_eps, static_cast<int>(n), factor);
      for (int64_t j = 0; j < n; ++j) {
        F_row[j] = p.y_weights[b * n + j] * factor[j];
        const T out = -factor[j] * sums[j];
        psi[b * n + j] = out;
        p.grad_y_weights[b * n + j] += eps * out;
      }
    }
  }

  // H = dW/dC * k(C), written over K tile by tile, the rank-2L part in registers.
  for (int64_t row = 0; row < B * R; ++row)  // the padding: finite, though unused
    std::fill(F + row * f_stride + n, F + (row + 1) * f_stride, T(0));
  for_each_tile(B, m, (R + 8) * n, [&](int64_t b, int64_t i0, int64_t i1) {
    const auto [C_tile, stride] = C.tile(b, i0, i1, 0, n, tile_scratch<T>(n));
    scaling_gradient_rows(K + (b * m + i0) * ld, ld, A + (b * m + i0) * R,
                          static_cast<int>(R), F + b * R * f_stride, f_stride, C_tile, stride,
                          terminal_row + b * m + i0, terminal_column + b * n, inv_eps,
                          static_cast<int>(i1 - i0), static_cast<int>(n), p.cost);
  });
  finish_backward(p, K, ld);
}

template void scaling_forward<float>(const SinkhornParams<float>&, const Costs<float>&);
template void scaling_forward<double>(const SinkhornParams<double>&, const Costs<double>&);
template void scaling_kernel_matrix<float>(const SinkhornParams<float>&, const Costs<float>&);
template void scaling_kernel_matrix<double>(const SinkhornParams<double>&, const Costs<double>&);
template void scaling_backward<float>(const SinkhornParams<float>&, const Costs<float>&);
template void scaling_backward<double>(const SinkhornParams<double>&, const Costs<double>&);

}  // namespace sinkhorn::cpu
