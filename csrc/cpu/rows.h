// The row kernels of the CPU strategies, compiled for several x86 instruction sets
// (target_clones): the loader picks the widest the machine has, so one build runs everywhere
// and still uses AVX-512 or AVX2 + FMA where they exist.
#pragma once

#include "core/cost.h"

namespace sinkhorn::cpu {

// out_c = c(a, b_c) for a point a (d) and points b given transposed, bt (d, n).
void cost_row(const float* a, const float* bt, int d, int n, Cost cost, float* out);
void cost_row(const double* a, const double* bt, int d, int n, Cost cost, double* out);

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

// Scaling strategy: the same primitive as products with K = exp(-C / eps).
// out_c = exp((v_c - shift) * scale)
void exp_affine(const float* v, float shift, float scale, int n, float* out);
void exp_affine(const double* v, double shift, double scale, int n, double* out);
// out_r = sum_c M_rc v_c for the rows r < rows of M (rows, n), four rows at a time
void matvec(const float* M, int rows, int n, const float* v, float* out);
void matvec(const double* M, int rows, int n, const double* v, double* out);
// out_r = sum_c A_rc B_rc v_c for the rows r < rows of A and B (rows, n), four at a time
void matvec_product(const float* A, const float* B, int rows, int n, const float* v, float* out);
void matvec_product(const double* A, const double* B, int rows, int n, const double* v,
                    double* out);
// acc_c += sum_r v_r M[r * stride + c] for c < width: the product of a block of columns of
// M (rows, stride) with v, four rows at a time
void matvec_transposed(const float* M, int rows, long stride, int width, const float* v,
                       float* acc);
void matvec_transposed(const double* M, int rows, long stride, int width, const double* v,
                       double* acc);
// acc_c += sum_r v_r A[r * stride + c] B[r * stride + c] for c < width, likewise
void matvec_transposed_product(const float* A, const float* B, int rows, long stride, int width,
                               const float* v, float* acc);
void matvec_transposed_product(const double* A, const double* B, int rows, long stride,
                               int width, const double* v, double* acc);
// sum_c a_c b_c
float dot(const float* a, const float* b, int n);
double dot(const double* a, const double* b, int n);
// acc_c += alpha v_c
void add_scaled(float alpha, const float* v, int n, float* acc);
void add_scaled(double alpha, const double* v, int n, double* acc);

}  // namespace sinkhorn::cpu
