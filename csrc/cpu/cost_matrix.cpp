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

// fn(r, c) for the rows r in [r_begin, r_end) and every c >= r < n, by 32 x 32 tiles, so
// that a symmetric update of (r, c) and (c, r) reads and writes the transposed side a cache
// line at a time.
template <typename Fn>
void for_each_pair_on_or_above_diagonal(int64_t n, int64_t r_begin, int64_t r_end,
                                        const Fn& fn) {
  constexpr int64_t kTile = 32;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kTile)
    for (int64_t c0 = r0; c0 < n; c0 += kTile)
      for (int64_t r = r0; r < std::min(r_end, r0 + kTile); ++r)
        for (int64_t c = std::max(c0, r); c < std::min(n, c0 + kTile); ++c) fn(r, c);
}

// The first row of part t of parts ranges of rows that cut the upper triangle (diagonal
// included) of an n x n matrix into about equal areas; n for t = parts.
int64_t equal_area_row(int64_t n, int64_t t, int64_t parts) {
  if (t >= parts) return n;
  const double target = static_cast<double>(t) * static_cast<double>(n) * (n + 1) / (2.0 * parts);
  double area = 0;
  int64_t r = 0;
  while (r < n && area < target) area += static_cast<double>(n - r++);
  return r;
}

// fn(r0, r1) for ranges of rows [r0, r1) of an n x n matrix that cut its upper triangle into
// equal areas, one per thread, in parallel (one after the other inside a parallel region):
// the symmetric passes over (r, c) and (c, r), whose ranges touch disjoint pairs.
template <typename Fn>
void for_each_equal_area_rows(int64_t n, const Fn& fn) {
  const int64_t parts = at::get_num_threads();
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      fn(equal_area_row(n, t, parts), equal_area_row(n, t + 1, parts));
  });
}

// fn(r0, r1) for strips [r0, r1) of the rows of an n x n matrix whose parts on or above the
// diagonal are computed (the symmetric self-terms): strips of about kStripRows rows or more,
// an even number, strip k paired with strip count - 1 - k. Each pair covers the same area
// (the strips shrink down the rows), so the threads take whole pairs, in parallel.
constexpr int64_t kStripRows = 64;

template <typename Fn>
void for_each_strip_pair(int64_t n, const Fn& fn) {
  const int64_t threads = at::get_num_threads();
  const int64_t pairs = threads * std::max<int64_t>(1, n / (2 * threads * kStripRows));
  const int64_t strips = 2 * pairs;
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      for (const int64_t strip : {k, strips - 1 - k})
        if (n * strip / strips < n * (strip + 1) / strips)
          fn(n * strip / strips, n * (strip + 1) / strips);
  });
}

}  // namespace

template <typename T>
Cloud<T>::Cloud(const T* points_, int64_t batch_, int64_t count_, int64_t d_, bool with_norms)
    : points(points_), batch(batch_), count(count_), d(d_) {
  transposed.resize(static_cast<std::size_t>(batch * transposed_rows() * count));
  for (int64_t b = 0; b < batch; ++b) {
    T* block = transposed.data() + b * transposed_rows() * count;
    std::fill(block, block + count, T(1));
    if (by_products()) continue;
    for (int64_t r = 0; r < count; ++r)
      for (int64_t k = 0; k < d; ++k) block[(k + 1) * count + r] = point(b, r)[k];
  }
  if (by_products() && with_norms) {
    norms.resize(static_cast<std::size_t>(batch * count));
    for (int64_t r = 0; r < batch * count; ++r)
      norms[r] = dot(points + r * d, points + r * d, static_cast<int>(d));
  }
}

template <typename T>
void cost_tile(const Cloud<T>& a, const Cloud<T>& b, int64_t bi, int64_t r0, int64_t r1,
               int64_t c0, int64_t c1, Cost cost, T* out, int64_t out_stride) {
  const int64_t d = a.d, width = c1 - c0;
  if (!a.by_products()) {
    for (int64_t r = r0; r < r1; ++r)
      cost_row(a.point(bi, r), b.coordinates(bi) + c0, b.count, static_cast<int>(d),
               static_cast<int>(width), cost, out + (r - r0) * out_stride);
    return;
  }
  TORCH_INTERNAL_ASSERT(!a.norms.empty() && !b.norms.empty(), "cost_tile needs the norms");
  at::Tensor dots = matrix(out, r1 - r0, width, out_stride);
  at::mm_out(dots, matrix(a.point(bi, r0), r1 - r0, d), matrix(b.point(bi, c0), width, d).t());
  for (int64_t r = r0; r < r1; ++r) {
    const T na = a.norms[bi * a.count + r];
    const T* nb = b.norms.data() + bi * b.count + c0;
    T* row = out + (r - r0) * out_stride;
    squared_distances_from_dots(row, na, nb, static_cast<int>(width));
    for (int64_t c = 0; c < width; ++c)
      if (!(row[c] >= T(kRecomputeBelow) * (na + nb[c])))  // also NaN: recomputed, stays NaN
        row[c] = squared_distance_by_lanes(a.point(bi, r), b.point(bi, c0 + c),
                                           static_cast<int>(d));
    if (cost == Cost::kEuclidean)
      for (int64_t c = 0; c < width; ++c) row[c] = std::sqrt(row[c]);
  }
}

template <typename T>
void build_cost_matrix(const Cloud<T>& a, const Cloud<T>& b, bool b_is_a, Cost cost, T* M) {
  const int64_t rows = a.count, cols = b.count;
  if (b_is_a && a.by_products()) {
    // C = C^T: strips of rows from the diagonal on, one BLAS product each, then mirrored;
    // about half the flops of the full product.
    for (int64_t bi = 0; bi < a.batch; ++bi) {
      T* Mb = M + bi * rows * rows;
      for_each_strip_pair(rows, [&](int64_t r0, int64_t r1) {
        cost_tile(a, a, bi, r0, r1, r0, rows, cost, Mb + r0 * rows + r0, rows);
        for_each_pair_on_or_above_diagonal(rows, r0, r1, [&](int64_t r, int64_t c) {
          Mb[c * rows + r] = Mb[r * rows + c];
        });
      });
    }
    return;
  }
  for_each_row_range(a.batch, rows, cols * std::min<int64_t>(a.d, 64),
                     [&](int64_t bi, int64_t r0, int64_t r1) {
    cost_tile(a, b, bi, r0, r1, 0, cols, cost, M + (bi * rows + r0) * cols, cols);
  });
}

template <typename T>
void contract_with_clouds(T* H, int64_t h_stride, const Cloud<T>& a, const Cloud<T>& b,
                          bool b_is_a, const T* scale, T* grad_a, T* grad_b) {
  const int64_t batch = a.batch, rows = a.count, cols = b.count, d = a.d;
  // b_is_a: dW/da_r = sum_c H_rc (a_r - a_c) + sum_c H_cr (a_r - a_c), the row sums of H and
  // its column sums, as for grad_b; the products take them as the rows of H + H^T.
  if (b_is_a && a.by_products()) {
    for (int64_t bi = 0; bi < batch; ++bi) {
      T* Hb = H + bi * rows * h_stride;
      for_each_equal_area_rows(rows, [&](int64_t start, int64_t stop) {
        for_each_pair_on_or_above_diagonal(rows, start, stop, [&](int64_t r, int64_t c) {
          Hb[r * h_stride + c] = Hb[c * h_stride + r] = Hb[r * h_stride + c] + Hb[c * h_stride + r];
        });
      });
    }
  }
  if (a.by_products()) {
    // grad_a = scale (a * (H 1) - H b) and grad_b = scale (b * (H^T 1) - H^T a): the products
    // from BLAS, written in place, and the sums of the rows and columns by the row kernels.
    // b_is_a: grad_a = -scale (H - diag(H 1)) a for H + H^T (formed above), one product
    // with the row sums taken off the diagonal first.
    std::vector<T> sums(static_cast<std::size_t>(std::max(rows, cols)));
    auto finish = [&](const T* points, T s, T* grad, int64_t count) {
      for (int64_t r = 0; r < count; ++r)
        for (int64_t k = 0; k < d; ++k)
          grad[r * d + k] = s * (points[r * d + k] * sums[r] - grad[r * d + k]);
    };
    for (int64_t bi = 0; bi < batch; ++bi) {
      T* Hb = H + bi * rows * h_stride;
      for_each_row_range(1, rows, cols, [&](int64_t, int64_t r0, int64_t r1) {
        matvec(Hb + r0 * h_stride, h_stride, static_cast<int>(r1 - r0), static_cast<int>(cols),
               b.ones_and_coordinates(bi), sums.data() + r0);
      });
      at::Tensor out = matrix(grad_a + bi * rows * d, rows, d);
      if (b_is_a) {
        for (int64_t r = 0; r < rows; ++r) Hb[r * h_stride + r] -= sums[r];
        at::addmm_out(out, out, matrix(Hb, rows, cols, h_stride), matrix(b.point(bi, 0), cols, d),
                      /*beta=*/0, /*alpha=*/-scale[bi]);
        continue;
      }
      at::mm_out(out, matrix(Hb, rows, cols, h_stride), matrix(b.point(bi, 0), cols, d));
      finish(a.point(bi, 0), scale[bi], grad_a + bi * rows * d, rows);
      if (grad_b == nullptr) continue;
      for_each_column_block(1, cols, rows, [&](int64_t, int64_t c0, int64_t c1) {
        std::fill(sums.begin() + c0, sums.begin() + c1, T(0));
        matvec_transposed(Hb + c0, static_cast<int>(rows), h_stride, static_cast<int>(c1 - c0),
                          a.ones_and_coordinates(bi), sums.data() + c0);
      });
      at::Tensor out_t = matrix(grad_b + bi * cols * d, cols, d);
      at::mm_out(out_t, matrix(Hb, rows, cols, h_stride).t(), matrix(a.point(bi, 0), rows, d));
      finish(b.point(bi, 0), scale[bi], grad_b + bi * cols * d, cols);
    }
    return;
  }
  // Small d: sum_c H_rc and sum_c H_rc b_ck, the products of a tile of rows of H with the row
  // of ones and each of b's coordinates while the tile is in cache.
  for_each_tile(batch, rows, (d + 1) * cols, [&](int64_t bi, int64_t r0, int64_t r1) {
    const int count = static_cast<int>(r1 - r0);
    thread_local std::vector<T> sums;  // (d + 1, count)
    sums.resize(static_cast<std::size_t>((d + 1) * count));
    for (int64_t k = 0; k <= d; ++k)
      matvec(H + (bi * rows + r0) * h_stride, h_stride, count, static_cast<int>(cols),
             b.ones_and_coordinates(bi) + k * cols, sums.data() + k * count);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t br = bi * rows + r;
      for (int64_t k = 0; k < d; ++k)
        grad_a[br * d + k] = scale[bi] * (a.points[br * d + k] * sums[r - r0] -
                                          sums[(k + 1) * count + r - r0]);
    }
  });
  if (grad_b == nullptr && !b_is_a) return;
  // sum_r H_rc and sum_r H_rc a_rk, by blocks of columns: grad_b, or for b_is_a added to grad_a.
  for_each_column_block(batch, cols, (d + 1) * rows, [&](int64_t bi, int64_t c0, int64_t c1) {
    const int width = static_cast<int>(c1 - c0);
    thread_local std::vector<T> sums;  // (d + 1, width)
    sums.assign(static_cast<std::size_t>((d + 1) * width), T(0));
    for (int64_t k = 0; k <= d; ++k)
      matvec_transposed(H + bi * rows * h_stride + c0, static_cast<int>(rows), h_stride, width,
                        a.ones_and_coordinates(bi) + k * rows, sums.data() + k * width);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t bc = bi * cols + c;
      for (int64_t k = 0; k < d; ++k) {
        const T column_term =
            scale[bi] * (b.points[bc * d + k] * sums[c - c0] - sums[(k + 1) * width + c - c0]);
        if (b_is_a) {
          grad_a[bc * d + k] += column_term;
        } else {
          grad_b[bc * d + k] = column_term;
        }
      }
    }
  });
}

#define SK_INSTANTIATE(T)                                                                     \
  template struct Cloud<T>;                                                                   \
  template void cost_tile<T>(const Cloud<T>&, const Cloud<T>&, int64_t, int64_t, int64_t,     \
                             int64_t, int64_t, Cost, T*, int64_t);                            \
  template void build_cost_matrix<T>(const Cloud<T>&, const Cloud<T>&, bool, Cost, T*);       \
  template void contract_with_clouds<T>(T*, int64_t, const Cloud<T>&, const Cloud<T>&, bool,  \
                                        const T*, T*, T*);

SK_INSTANTIATE(float)
SK_INSTANTIATE(double)

#undef SK_INSTANTIATE

}  // namespace sinkhorn::cpu
