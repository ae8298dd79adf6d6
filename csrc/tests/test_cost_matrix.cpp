// csrc/cpu/cost_matrix.h: the cost matrix and the contraction with the clouds (also of a
// self-term), on both paths (row kernels below kGemmMinDim, matrix products from it on),
// against pair_cost and plain loops; coincident and near-coincident points get their exact
// distance on the product path.
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/cost.h"
#include "cpu/cost_matrix.h"
#include "tests/harness.h"
#include "tests/threads.h"

namespace {

using sinkhorn::Cost;

template <typename T>
std::vector<T> cloud(int64_t count, int64_t d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(1.0, 1.0);  // off-centre: large norms, small distances
  std::vector<T> out(static_cast<std::size_t>(count * d));
  for (T& v : out) v = static_cast<T>(normal(rng));
  return out;
}

template <typename T>
void check_cost_matrix(int64_t d, Cost cost, double rtol) {
  const int64_t B = 2, rows = 13, cols = 9;
  std::vector<T> a = cloud<T>(B * rows, d, 1), b = cloud<T>(B * cols, d, 2);
  // Coincident and nearly coincident pairs, where |a|^2 + |b|^2 - 2 a.b cancels.
  for (int64_t k = 0; k < d; ++k) {
    b[(0 * cols + 3) * d + k] = a[(0 * rows + 5) * d + k];
    b[(1 * cols + 0) * d + k] = a[(1 * rows + 2) * d + k] + static_cast<T>(k == 0 ? 1e-3 : 0);
  }
  std::vector<T> M(static_cast<std::size_t>(B * rows * cols));
  sinkhorn::cpu::build_cost_matrix(sinkhorn::cpu::Cloud<T>(a.data(), B, rows, d),
                                   sinkhorn::cpu::Cloud<T>(b.data(), B, cols, d), false, cost, M.data());
  const std::string where = "d=" + std::to_string(d) + (cost == Cost::kEuclidean ? " euclidean" : " sqeuclidean");
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const T expected = sinkhorn::pair_cost(a.data() + (bi * rows + r) * d,
                                               b.data() + (bi * cols + c) * d, static_cast<int>(d), cost);
        const T got = M[(bi * rows + r) * cols + c];
        SK_CHECK_CLOSE(got, expected, rtol * std::fabs(expected)) << where << " at " << bi << "," << r << "," << c;
      }
  SK_CHECK(M[(0 * rows + 5) * cols + 3] == T(0)) << where << ": coincident points";
}

// A self-term's C (b is a), built as a symmetric matrix from strips of rows, mirrored by
// 32-point tiles, with a zero diagonal.
template <typename T>
void check_self_cost_matrix(int64_t d, Cost cost, double rtol, int64_t rows = 150) {
  const int64_t B = 2;
  const std::vector<T> a = cloud<T>(B * rows, d, 7);
  const sinkhorn::cpu::Cloud<T> ca(a.data(), B, rows, d);
  std::vector<T> M(static_cast<std::size_t>(B * rows * rows));
  sinkhorn::cpu::build_cost_matrix(ca, ca, true, cost, M.data());
  const std::string where = "self-term d=" + std::to_string(d) + " rows=" + std::to_string(rows) +
                            " threads=" + std::to_string(at::get_num_threads()) +
                            (cost == Cost::kEuclidean ? " euclidean" : " sqeuclidean");
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < rows; ++c) {
        const T expected = sinkhorn::pair_cost(a.data() + (bi * rows + r) * d,
                                               a.data() + (bi * rows + c) * d, static_cast<int>(d), cost);
        const T got = M[(bi * rows + r) * rows + c];
        SK_CHECK_CLOSE(got, expected, rtol * std::fabs(expected)) << where << " at " << bi << "," << r << "," << c;
        SK_CHECK(got == M[(bi * rows + c) * rows + r]) << where << ": not symmetric at " << r << "," << c;
      }
}

// grad_a and grad_b against plain loops, with a per-batch scale; and the self-term, where
// grad_a gets both arguments' gradients: the contraction with H + H^T. H's rows are padded
// with NaN, which must not reach the gradients.
template <typename T>
void check_contraction(int64_t d, double rtol) {
  using sinkhorn::cpu::Cloud;
  const int64_t B = 2, rows = 7, cols = 11;
  const T scale[] = {T(1), T(-0.5)};
  const std::vector<T> a = cloud<T>(B * rows, d, 3), b = cloud<T>(B * cols, d, 4);
  const std::vector<T> H = cloud<T>(B * rows * cols, 1, 5);
  const std::vector<T> H_self = cloud<T>(B * rows * rows, 1, 6);
  std::vector<T> out(static_cast<std::size_t>(B * rows * d)), out_t(static_cast<std::size_t>(B * cols * d));
  std::vector<T> out_self(out.size());
  auto padded = [](const std::vector<T>& M, int64_t count, int64_t width, int64_t stride) {
    std::vector<T> out(static_cast<std::size_t>(count * stride), T(std::nan("")));
    for (int64_t r = 0; r < count; ++r)
      std::copy(M.begin() + r * width, M.begin() + (r + 1) * width, out.begin() + r * stride);
    return out;
  };
  const int64_t stride = cols + 3, self_stride = rows + 5;
  std::vector<T> work = padded(H, B * rows, cols, stride);
  std::vector<T> work_self = padded(H_self, B * rows, rows, self_stride);
  const Cloud<T> ca(a.data(), B, rows, d), cb(b.data(), B, cols, d);
  sinkhorn::cpu::contract_with_clouds(work.data(), stride, ca, cb, false, scale, out.data(),
                                      out_t.data());
  sinkhorn::cpu::contract_with_clouds(work_self.data(), self_stride, ca, ca, true, scale,
                                      out_self.data(), static_cast<T*>(nullptr));
  // sum_c h(c) (p_k - q(c)_k) over count terms, and the sum of its terms' magnitudes.
  auto contraction = [](int64_t count, auto h, T p_k, auto q_k) {
    double sum = 0, magnitude = 0;
    for (int64_t c = 0; c < count; ++c) {
      sum += h(c) * (p_k - q_k(c));
      magnitude += std::fabs(h(c)) * (std::fabs(p_k) + std::fabs(q_k(c)));
    }
    return std::make_pair(sum, magnitude);
  };
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t k = 0; k < d; ++k) {
      auto a_k = [&](int64_t r) { return a[(bi * rows + r) * d + k]; };
      auto b_k = [&](int64_t c) { return b[(bi * cols + c) * d + k]; };
      for (int64_t r = 0; r < rows; ++r) {
        const auto [sum, mag] = contraction(cols, [&](int64_t c) { return H[(bi * rows + r) * cols + c]; }, a_k(r), b_k);
        SK_CHECK_CLOSE(out[(bi * rows + r) * d + k], scale[bi] * sum, rtol * mag) << "d=" << d << " grad_a";
        const auto [self, self_mag] = contraction(rows, [&](int64_t c) {
          return H_self[(bi * rows + r) * rows + c] + H_self[(bi * rows + c) * rows + r];
        }, a_k(r), a_k);
        SK_CHECK_CLOSE(out_self[(bi * rows + r) * d + k], scale[bi] * self, rtol * self_mag) << "d=" << d << " self-term";
      }
      for (int64_t c = 0; c < cols; ++c) {
        const auto [sum, mag] = contraction(rows, [&](int64_t r) { return H[(bi * rows + r) * cols + c]; }, b_k(c), a_k);
        SK_CHECK_CLOSE(out_t[(bi * cols + c) * d + k], scale[bi] * sum, rtol * mag) << "d=" << d << " grad_b";
      }
    }
}

}  // namespace

SK_TEST(cost_matrix, row_kernel_path_matches_pair_cost) {
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    check_cost_matrix<double>(3, cost, 1e-15);
    check_cost_matrix<float>(3, cost, 1e-6);
  }
}

// |a|^2 + |b|^2 - 2 a.b is exact to rounding of the norms; the distances here are at least
// 1/32 of them, or recomputed.
SK_TEST(cost_matrix, product_path_and_symmetric_self_term_match_pair_cost) {
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    for (int64_t d : {sinkhorn::cpu::kGemmMinDim, int64_t{64}, int64_t{784}}) {
      check_cost_matrix<double>(d, cost, 1e-12);
      check_cost_matrix<float>(d, cost, 1e-4);
      check_self_cost_matrix<double>(d, cost, 1e-12);
      check_self_cost_matrix<float>(d, cost, 1e-4);
    }
  }
}

// The strips of the self-term go to the threads in pairs: fewer rows than strips, and several
// pairs per thread.
SK_TEST(cost_matrix, symmetric_self_term_is_whole_at_any_thread_count) {
  sktest::ThreadCountGuard guard;
  for (int threads : {1, 2, 3}) {
    at::set_num_threads(threads);
    for (int64_t rows : {1, 3, 5, 600}) {
      check_self_cost_matrix<double>(sinkhorn::cpu::kGemmMinDim, Cost::kSqEuclidean, 1e-12, rows);
      check_self_cost_matrix<float>(sinkhorn::cpu::kGemmMinDim, Cost::kEuclidean, 1e-4, rows);
    }
  }
}

SK_TEST(cost_matrix, contraction_and_self_term_contraction_on_both_paths) {
  for (int64_t d : {int64_t{1}, int64_t{3}, sinkhorn::cpu::kGemmMinDim, int64_t{100}}) {
    check_contraction<double>(d, 1e-14);
    check_contraction<float>(d, 1e-5);
  }
}
