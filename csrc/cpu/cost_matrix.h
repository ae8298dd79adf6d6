// The cost matrix and the products with the clouds that turn dW/dC into dW/dx, dW/dy: for
// small d row kernels along the columns; for large d matrix products (BLAS, through ATen).
#pragma once

#include <cstdint>

#include "core/cost.h"

namespace sinkhorn::cpu {

// From this dimension on, the distances come from |a|^2 + |b|^2 - 2 a.b with a matrix product.
constexpr int64_t kGemmMinDim = 16;

// M[b, r, c] = c(a_r, b_c) for clouds a (B, rows, d) and b (B, cols, d).
template <typename T>
void build_cost_matrix(const T* a, const T* b, int64_t batch, int64_t rows, int64_t cols,
                       int64_t d, Cost cost, T* M);

// out[b, r, :] = sum_c H[b, r, c] (a_r - b_c) for H (B, rows, cols), and, if out_t is not
// null, out_t[b, c, :] = sum_r H[b, r, c] (b_c - a_r): the contraction of dW/dC * k(C).
template <typename T>
void contract_with_clouds(const T* H, const T* a, const T* b, int64_t batch, int64_t rows,
                          int64_t cols, int64_t d, T* out, T* out_t);

}  // namespace sinkhorn::cpu
