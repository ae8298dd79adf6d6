// The row kernels of the CPU strategies, compiled for several x86 instruction sets
// (target_clones): the loader picks the widest the machine has, so one build runs everywhere
// and still uses AVX-512 or AVX2 + FMA where they exist. matvec, matvec_transposed and
// exp_affine, the scaling strategy's products with K and K^T and its exponentials, and the
// softmin rows and adjoint rows and pieces of the log domain and of the online backend, are
// also written by hand for AVX-512, chosen at run time; matvec and matvec_transposed also in
// AVX2's vectors, and scaling_gradient_rows for each vector width (AVX-512, AVX2, 16 bytes),
// its register blocks sized to fit, chosen at run time too.
#pragma once

#include "core/cost.h"
#include "core/softmin.h"

namespace sinkhorn::cpu {

// out_c = c(a, b_c), c < n, for a point a (d) and points b given transposed: b_c's k-th
// coordinate at bt[k * stride + c].
void cost_row(const float* a, const float* bt, long stride, int d, int n, Cost cost, float* out);
void cost_row(const double* a, const double* bt, long stride, int d, int n, Cost cost,
              double* out);

// row_c = norm_a + norms_b[c] - 2 row_c, c < n: squared distances |a|^2 + |b_c|^2 - 2 a.b_c
// from a row of dot products (cpu/cost_matrix.cpp, the matrix-product path).
void squared_distances_from_dots(float* row, float norm_a, const float* norms_b, int n);
void squared_distances_from_dots(double* row, double norm_a, const double* norms_b, int n);

// Log-domain strategy: the softmin primitive and its adjoint on one row (core/softmin.h).
float softmin_row(const float* row, const float* h, int n, float eps);
double softmin_row(const double* row, const double* h, int n, double eps);
float softmin_row_with_expected_cost(const float* row, const float* h, int n, float eps,
                                     float* expected_cost);
double softmin_row_with_expected_cost(const double* row, const double* h, int n, double eps,
                                      double* expected_cost);
float softmin_adjoint_row(const float* row, const float* h, const float* adj, float s,
                          float w, int n, float eps, bool terminal, float* grad_row);
double softmin_adjoint_row(const double* row, const double* h, const double* adj, double s,
                           double w, int n, double eps, bool terminal, double* grad_row);

// Online backend: a row streamed in pieces of the other cloud.
// The log-sum-exp pieces of softmin_row (core/softmin.h), cost only if with_expected_cost.
RowSums<float> softmin_sums(const float* row, const float* h, int n, float eps,
                            bool with_expected_cost);
RowSums<double> softmin_sums(const double* row, const double* h, int n, double eps,
                             bool with_expected_cost);
// The adjoint terms of a piece (core/softmin.h, adjoint_term): returns their sum and writes
// gk_c = (contribution to dW/dM_rc) * k(M_rc), the factor of (a_r - b_c) in dW/da_r.
float adjoint_piece(const float* row, const float* h, const float* adj, float s, float w, int n,
                    float eps, bool terminal, Cost cost, float* gk);
double adjoint_piece(const double* row, const double* h, const double* adj, double s, double w,
                     int n, double eps, bool terminal, Cost cost, double* gk);
// row_acc[0] += sum_c gk_c, row_acc[1 + k] += sum_c gk_c bt[k * stride + c] (the sums that give
// dW/da_r), and col_acc[c] += gk_c, col_acc[(1 + k) * col_stride + c] += gk_c a_k (those that
// give dW/db_c).
void accumulate_piece(const float* gk, int n, const float* bt, long stride, const float* a, int d,
                      float* row_acc, float* col_acc, long col_stride);
void accumulate_piece(const double* gk, int n, const double* bt, long stride, const double* a,
                      int d, double* row_acc, double* col_acc, long col_stride);

// Scaling strategy: the same primitive as products with K = exp(-C / eps).
// out_c = exp((v_c - shift) * scale)
void exp_affine(const float* v, float shift, float scale, int n, float* out);
void exp_affine(const double* v, double shift, double scale, int n, double* out);
// exp_affine where every (v_c - shift) * scale is <= 0 (or NaN), with fast_exp_nonpositive
// (core/exp.h): K's exps, and those of values shifted by their maximum.
void exp_affine_nonpositive(const float* v, float shift, float scale, int n, float* out);
void exp_affine_nonpositive(const double* v, double shift, double scale, int n, double* out);
// out_c = scaled_softmin(sums_c, shift, eps) = -shift - eps log(sums_c) (core/softmin.h)
void scaled_softmins(const float* sums, float shift, float eps, int n, float* out);
void scaled_softmins(const double* sums, double shift, double eps, int n, double* out);
// out_r = sum_c M[r * stride + c] v_c for c < n and the rows r < rows of M, several rows per
// load of v
void matvec(const float* M, long stride, int rows, int n, const float* v, float* out);
void matvec(const double* M, long stride, int rows, int n, const double* v, double* out);
// out_r = sum_c A[r * a_stride + c] B[r * b_stride + c] v_c for c < n and the rows r < rows,
// four at a time
void matvec_product(const float* A, long a_stride, const float* B, long b_stride, int rows,
                    int n, const float* v, float* out);
void matvec_product(const double* A, long a_stride, const double* B, long b_stride, int rows,
                    int n, const double* v, double* out);
// acc_c += sum_r v_r M[r * stride + c] for c < width: the product of a block of columns of
// M (rows, stride) with v (on AVX-512 and AVX2 by blocks of columns summed in registers over
// all the rows, elsewhere four rows at a time)
void matvec_transposed(const float* M, int rows, long stride, int width, const float* v,
                       float* acc);
void matvec_transposed(const double* M, int rows, long stride, int width, const double* v,
                       double* acc);
// acc_c += sum_r v_r A[r * a_stride + c] B[r * b_stride + c] for c < width: matvec_transposed
// of the elementwise product of A and B, four rows at a time
void matvec_product_transposed(const float* A, long a_stride, const float* B, long b_stride,
                               int rows, int width, const float* v, float* acc);
void matvec_product_transposed(const double* A, long a_stride, const double* B, long b_stride,
                               int rows, int width, const double* v, double* acc);
// The rows r < rows of H = dW/dC * k(C) for the scaling strategy, over the rows of K (rows, n;
// k_stride apart) they overwrite, with k of core/cost.h and C's rows c_stride apart:
//   H_rc = K_rc (sum_k A[r * R + k] F[k * f_stride + c] + t_row_r t_column_c (1 - C_rc inv_eps))
//          k(C_rc). The rank-R sums are made in registers, by blocks of rows and of
// gradient_block_columns<T>() columns, each over k in order; F's rows hold a whole number of
// blocks (f_stride >= n rounded up to one), whose columns past n are read but not used.
template <typename T>
constexpr int gradient_block_columns() {
  return static_cast<int>(128 / sizeof(T));
}
void scaling_gradient_rows(float* K, long k_stride, const float* A, int R, const float* F,
                           long f_stride, const float* C, long c_stride, const float* t_row,
                           const float* t_column, float inv_eps, int rows, int n, Cost cost);
void scaling_gradient_rows(double* K, long k_stride, const double* A, int R, const double* F,
                           long f_stride, const double* C, long c_stride, const double* t_row,
                           const double* t_column, double inv_eps, int rows, int n, Cost cost);
// sum_k (a_k - b_k)^2, summed in vector lanes (for large d; core/cost.h squared_distance sums
// in order)
float squared_distance_by_lanes(const float* a, const float* b, int d);
double squared_distance_by_lanes(const double* a, const double* b, int d);
// max_c a_c, -inf for n = 0 (a NaN may or may not be returned: the scaling strategy's
// potentials, its one caller, are never NaN)
float max_of(const float* a, int n);
double max_of(const double* a, int n);
// sum_c a_c b_c
float dot(const float* a, const float* b, int n);
double dot(const double* a, const double* b, int n);

}  // namespace sinkhorn::cpu
