// The softmin primitive on one row, compiled for several x86 instruction sets
// (target_clones): the loader picks the widest the machine has, so one build runs
// everywhere and still uses AVX-512 or AVX2 + FMA where they exist.
#pragma once

namespace sinkhorn::cpu {

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

}  // namespace sinkhorn::cpu
