#include "cpu/cost_matrix.h"

#include <algorithm>
#include <vector>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"

namespace sinkhorn::cpu {
namespace {

// |a_r|^2 + |b_c|^2 - 2 a_r.b_c loses digits to cancellation when the distance is small
// against the norms; below this fraction of |a_r|^2 + |b_c|^2 the distance is recomputed
// directly (so coincident points get exactly 0, which the euclidean gradient relies on).
constexpr double kRecomputeBelow = 1.0 / 32;

// The cloud transposed per batch, (d + 1, count), with a row of ones in front: sums over the
// points then run along rows, and the first gives the plain sum.
template <typename T>
std::vector<T> transpose_with_ones(const T* cloud, int64_t batch, int64_t count, int64_t d) {
  std::vector<T> out(static_cast<std::size_t>(batch * (d + 1) * count));
  for (int64_t b = 0; b < batch; ++b) {
    T* block = out.data() + b * (d + 1) * count;
    std::fill(block, block + count, T(1));
    for (int64_t r = 0; r < count; ++r)
      for (int64_t k = 0; k < d; ++k) block[(k + 1) * count + r] = cloud[(b * count + r) * d + k];
  }
  return out;
}

template <typename T>
void squared_norms(const T* cloud, int64_t count, int64_t d, T* out) {
  for (int64_t r = 0; r < count; ++r)
    out[r] = dot(cloud + r * d, cloud + r * d, static_cast<int>(d));
}

}  // namespace

template <typename T>
void build_cost_matrix(const T* a, const T* b, int64_t batch, int64_t rows, int64_t cols,
                       int64_t d, Cost cost, T* M) {
  if (d < kGemmMinDim) {
    const std::vector<T> bt = transpose_with_ones(b, batch, cols, d);
    for_each_row(batch, rows, cols * d, [&](int64_t bi, int64_t r) {
      // cost_row reads b^T, the rows after the ones
      cost_row(a + (bi * rows + r) * d, bt.data() + (bi * (d + 1) + 1) * cols, cols,
               static_cast<int>(d), static_cast<int>(cols), cost, M + (bi * rows + r) * cols);
    });
    return;
  }
  std::vector<T> a_norms(static_cast<std::size_t>(batch * rows));
  std::vector<T> b_norms(static_cast<std::size_t>(batch * cols));
  squared_norms(a, batch * rows, d, a_norms.data());
  squared_norms(b, batch * cols, d, b_norms.data());
  for (int64_t bi = 0; bi < batch; ++bi) {
    at::Tensor out = matrix(M + bi * rows * cols, rows, cols);
    at::mm_out(out, matrix(a + bi * rows * d, rows, d), matrix(b + bi * cols * d, cols, d).t());
  }
  for_each_row(batch, rows, 4 * cols, [&](int64_t bi, int64_t r) {
    const T* ar = a + (bi * rows + r) * d;
    const T na = a_norms[bi * rows + r];
    T* out = M + (bi * rows + r) * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const T norms = na + b_norms[bi * cols + c];
      T sq = norms - 2 * out[c];
      if (!(sq >= T(kRecomputeBelow) * norms))  // also NaN: recomputed, and stays NaN
        sq = squared_distance(ar, b + (bi * cols + c) * d, static_cast<int>(d));
      out[c] = cost == Cost::kSqEuclidean ? sq : std::sqrt(sq);
    }
  });
}

template <typename T>
void contract_with_clouds(const T* H, const T* a, const T* b, int64_t batch, int64_t rows,
                          int64_t cols, int64_t d, T* out, T* out_t) {
  const std::vector<T> bt = transpose_with_ones(b, batch, cols, d);
  const std::vector<T> a_t = transpose_with_ones(a, batch, rows, d);
  if (d >= kGemmMinDim) {
    // out = a * (H 1) - H b and out_t = b * (H^T 1) - H^T a, with the products from BLAS.
    for (int64_t bi = 0; bi < batch; ++bi) {
      const at::Tensor Hb = matrix(H + bi * rows * cols, rows, cols);
      const at::Tensor row_sums = at::mv(Hb, matrix(bt.data() + bi * (d + 1) * cols, 1, cols)[0]);
      const at::Tensor Hy = at::mm(Hb, matrix(b + bi * cols * d, cols, d));
      at::Tensor o = matrix(out + bi * rows * d, rows, d);
      o.copy_(matrix(a + bi * rows * d, rows, d) * row_sums.unsqueeze(1) - Hy);
      if (out_t != nullptr) {
        const at::Tensor ones = matrix(a_t.data() + bi * (d + 1) * rows, 1, rows)[0];
        const at::Tensor column_sums = at::mv(Hb.t(), ones);
        const at::Tensor Hx = at::mm(Hb.t(), matrix(a + bi * rows * d, rows, d));
        at::Tensor ot = matrix(out_t + bi * cols * d, cols, d);
        ot.copy_(matrix(b + bi * cols * d, cols, d) * column_sums.unsqueeze(1) - Hx);
      }
    }
    return;
  }
  // Small d: sum_c H_rc and sum_c H_rc b_ck along each row of H.
  for_each_row(batch, rows, (d + 1) * cols, [&](int64_t bi, int64_t r) {
    const int64_t br = bi * rows + r;
    thread_local std::vector<T> sums;
    sums.resize(static_cast<std::size_t>(d + 1));
    matvec(bt.data() + bi * (d + 1) * cols, static_cast<int>(d + 1), static_cast<int>(cols),
           H + br * cols, sums.data());
    for (int64_t k = 0; k < d; ++k) out[br * d + k] = a[br * d + k] * sums[0] - sums[k + 1];
  });
  if (out_t == nullptr) return;
  // sum_r H_rc and sum_r H_rc a_rk, by blocks of columns.
  for_each_column_block(batch, cols, (d + 1) * rows, [&](int64_t bi, int64_t c0, int64_t c1) {
    const int width = static_cast<int>(c1 - c0);
    thread_local std::vector<T> sums;  // (d + 1, width)
    sums.assign(static_cast<std::size_t>((d + 1) * width), T(0));
    for (int64_t k = 0; k <= d; ++k)
      matvec_transposed(H + bi * rows * cols + c0, static_cast<int>(rows), cols, width,
                        a_t.data() + (bi * (d + 1) + k) * rows, sums.data() + k * width);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t bc = bi * cols + c;
      for (int64_t k = 0; k < d; ++k)
        out_t[bc * d + k] = b[bc * d + k] * sums[c - c0] - sums[(k + 1) * width + c - c0];
    }
  });
}

template void build_cost_matrix<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                       int64_t, Cost, float*);
template void build_cost_matrix<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                        int64_t, Cost, double*);
template void contract_with_clouds<float>(const float*, const float*, const float*, int64_t,
                                          int64_t, int64_t, int64_t, float*, float*);
template void contract_with_clouds<double>(const double*, const double*, const double*, int64_t,
                                           int64_t, int64_t, int64_t, double*, double*);

}  // namespace sinkhorn::cpu
