// Costs between two clouds, by tiles, and the products with the clouds that turn dW/dC into
// dW/dx, dW/dy: below kGemmMinDim row kernels along the columns, from it on matrix products
// (BLAS, through ATen) with |a|^2 + |b|^2 - 2 a.b.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/cost.h"

namespace sinkhorn::cpu {

constexpr int64_t kGemmMinDim = 16;

// A cloud (B, count, d) and what the tiles need of it, computed once. with_norms: the squared
// norms that cost_tile needs (by_products()); a cloud whose costs are not computed (they are
// kept, or it is only contracted with) goes without.
template <typename T>
struct Cloud {
  Cloud(const T* points, int64_t batch, int64_t count, int64_t d, bool with_norms = true);

  const T* point(int64_t b, int64_t r) const { return points + (b * count + r) * d; }
  bool by_products() const { return d >= kGemmMinDim; }
  // (d + 1, count) per batch: a row of ones, then the coordinates; row k + 1 holds
  // coordinate k of every point, so that sums over the points run along rows. by_products():
  // the row of ones alone, as the products read the points themselves.
  const T* ones_and_coordinates(int64_t b) const {
    return transposed.data() + b * transposed_rows() * count;
  }
  const T* coordinates(int64_t b) const { return ones_and_coordinates(b) + count; }

  const T* points;
  int64_t batch, count, d;
  std::vector<T> transposed;  // (B, transposed_rows(), count)
  std::vector<T> norms;       // (B, count) squared norms, if by_products() and with_norms

 private:
  int64_t transposed_rows() const { return by_products() ? 1 : d + 1; }
};

// out[(r - r0) * out_stride + c - c0] = c(a_r, b_c) for the rows [r0, r1) of a and the points
// [c0, c1) of b, in batch bi.
template <typename T>
void cost_tile(const Cloud<T>& a, const Cloud<T>& b, int64_t bi, int64_t r0, int64_t r1,
               int64_t c0, int64_t c1, Cost cost, T* out, int64_t out_stride);

// The cost matrix C[b, r, c] = c(a_r, b_c) as the strategies read it: stored (B, rows, cols),
// or, where a cost is as cheap to recompute as to read (d < kGemmMinDim), computed from the
// clouds tile by tile, so that no m x n array of costs is kept.
template <typename T>
class Costs {
 public:
  Costs(const Cloud<T>& a, const Cloud<T>& b, Cost cost, const T* stored)
      : a_(a), b_(b), cost_(cost), stored_(stored) {}

  // C[bi, r0:r1, c0:c1]: a pointer to it and its row stride. Unless stored, it is computed
  // into scratch, (r1 - r0) x (c1 - c0).
  std::pair<const T*, int64_t> tile(int64_t bi, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                    T* scratch) const {
    if (stored_ != nullptr) return {stored_ + (bi * a_.count + r0) * b_.count + c0, b_.count};
    cost_tile(a_, b_, bi, r0, r1, c0, c1, cost_, scratch, c1 - c0);
    return {scratch, c1 - c0};
  }

 private:
  const Cloud<T>& a_;
  const Cloud<T>& b_;
  Cost cost_;
  const T* stored_;
};

// M[b, r, c] = c(a_r, b_c), (B, rows, cols). b_is_a: b is a (the self-terms), and M is built
// as the symmetric matrix it is.
template <typename T>
void build_cost_matrix(const Cloud<T>& a, const Cloud<T>& b, bool b_is_a, Cost cost, T* M);

// The contraction of H = dW/dC * k(C), (B, rows, cols) with rows h_stride apart, with the
// clouds:
//   grad_a[b, r, :] = scale[b] sum_c H[b, r, c] (a_r - b_c) and, if grad_b is not null,
//   grad_b[b, c, :] = scale[b] sum_r H[b, r, c] (b_c - a_r).
// If b_is_a (the self-terms), grad_a gets the gradient through both arguments, and grad_b
// must be null; from kGemmMinDim on, H is overwritten by H + H^T, less its row sums on the
// diagonal.
template <typename T>
void contract_with_clouds(T* H, int64_t h_stride, const Cloud<T>& a, const Cloud<T>& b,
                          bool b_is_a, const T* scale, T* grad_a, T* grad_b);

}  // namespace sinkhorn::cpu
