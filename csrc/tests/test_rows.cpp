// The products with a vector of csrc/cpu/rows.cpp (matvec and matvec_transposed: hand-written
// AVX-512 kernels where the machine has them, the compiler's otherwise; the elementwise
// product forms) against sums in long double, over shapes around their blocks of rows, their
// vector widths and matvec_transposed's blocks of up to eight vectors of columns; and the
// rows of the scaling backward's H (scaling_gradient_rows, its rank-R sums in registers).
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cpu/rows.h"
#include "tests/harness.h"

namespace {

template <typename T>
std::vector<T> uniform(std::int64_t count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> out(static_cast<std::size_t>(count));
  for (T& value : out) value = static_cast<T>(u(rng));
  return out;
}

// Rows 1 to 19 (blocks of four and eight, and what is left over), columns around the vector
// widths (8 doubles, 16 floats), an unrolled reduction's 32 lanes, and blocks of one to
// eight vectors with one more block after (90 and 100 floats: six and seven vectors; 129:
// eight and one).
const int kRows[] = {1, 3, 4, 7, 8, 9, 12, 16, 17, 19};
const int kColumns[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 90, 100, 129, 200};

// |sum - exact| within a few roundings of sum |terms|.
template <typename T>
long double tolerance(long double magnitude, int n) {
  return 4 * (n + 2) * std::numeric_limits<T>::epsilon() * magnitude;
}

template <typename T>
void check_matvec_matches_exact_sums() {
  std::uint64_t seed = 1;
  for (int rows : kRows) {
    for (int n : kColumns) {
      const long stride = n + 3;  // the rows of a wider matrix
      const std::vector<T> M = uniform<T>(rows * stride, seed++);
      const std::vector<T> v = uniform<T>(n, seed++);
      std::vector<T> out(static_cast<std::size_t>(rows));
      sinkhorn::cpu::matvec(M.data(), stride, rows, n, v.data(), out.data());
      for (int r = 0; r < rows; ++r) {
        long double exact = 0, magnitude = 0;
        for (int c = 0; c < n; ++c) {
          exact += static_cast<long double>(M[r * stride + c]) * v[c];
          magnitude += std::fabs(static_cast<long double>(M[r * stride + c]) * v[c]);
        }
        SK_CHECK_CLOSE(out[r], exact, tolerance<T>(magnitude, n))
            << "rows = " << rows << ", n = " << n << ", row " << r;
      }
    }
  }
}

// With Product, matvec_product_transposed: M times P elementwise, P with a stride of its own.
template <typename T, bool Product>
void check_matvec_transposed_matches_exact_sums() {
  std::uint64_t seed = Product ? 200 : 100;
  for (int rows : kRows) {
    for (int width : kColumns) {
      const long stride = width + 3;  // a block of columns of a wider matrix
      const long p_stride = width + 5;
      const std::vector<T> M = uniform<T>(rows * stride, seed++);
      const std::vector<T> P = uniform<T>(rows * p_stride, seed++);
      const std::vector<T> v = uniform<T>(rows, seed++);
      std::vector<T> acc = uniform<T>(width, seed++);  // added to, not overwritten
      const std::vector<T> initial = acc;
      if (Product) {
        sinkhorn::cpu::matvec_product_transposed(M.data(), stride, P.data(), p_stride, rows,
                                                 width, v.data(), acc.data());
      } else {
        sinkhorn::cpu::matvec_transposed(M.data(), rows, stride, width, v.data(), acc.data());
      }
      for (int c = 0; c < width; ++c) {
        long double exact = initial[c], magnitude = std::fabs(initial[c]);
        for (int r = 0; r < rows; ++r) {
          long double term = static_cast<long double>(M[r * stride + c]) * v[r];
          if (Product) term *= P[r * p_stride + c];
          exact += term;
          magnitude += std::fabs(term);
        }
        SK_CHECK_CLOSE(acc[c], exact, tolerance<T>(magnitude, rows))
            << "rows = " << rows << ", width = " << width << ", column " << c;
      }
    }
  }
}

// scaling_gradient_rows against H computed in long double, with F's padding (the columns past
// n up to f_stride) set to NaN, which must not reach H, and K's rows padded, the padding left
// alone; and each row alike however many rows a call has (a tile of any height, as every
// thread count makes them), bitwise.
template <typename T>
void check_scaling_gradient_rows_match_exact_values() {
  using sinkhorn::Cost;
  constexpr int kBlock = sinkhorn::cpu::gradient_block_columns<T>();
  const T inv_eps = T(0.7);
  std::uint64_t seed = 300;
  for (const Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    for (int rank : {1, 3, 40}) {
      for (int rows : kRows) {
        for (int n : kColumns) {
          const long f_stride = (n + kBlock - 1) / kBlock * kBlock;
          const long c_stride = n + 3;  // C a tile of a wider matrix
          const long k_stride = n + 5;  // and K
          const std::vector<T> K = uniform<T>(rows * k_stride, seed++);
          const std::vector<T> A = uniform<T>(rows * rank, seed++);
          std::vector<T> F = uniform<T>(rank * f_stride, seed++);
          for (int k = 0; k < rank; ++k)
            for (long c = n; c < f_stride; ++c) F[k * f_stride + c] = std::nan("");
          std::vector<T> C = uniform<T>(rows * c_stride, seed++);
          for (T& c : C) c = std::fabs(c) + T(0.1);  // costs, > 0
          const std::vector<T> t_row = uniform<T>(rows, seed++);
          const std::vector<T> t_column = uniform<T>(n, seed++);
          std::vector<T> H = K;
          sinkhorn::cpu::scaling_gradient_rows(H.data(), k_stride, A.data(), rank, F.data(),
                                               f_stride, C.data(), c_stride, t_row.data(),
                                               t_column.data(), inv_eps, rows, n, cost);
          for (int r = 0; r < rows; ++r) {
            for (long c = n; c < k_stride; ++c)
              SK_CHECK(H[r * k_stride + c] == K[r * k_stride + c]) << "padding overwritten";
            std::vector<T> single(K.begin() + r * k_stride, K.begin() + r * k_stride + n);
            sinkhorn::cpu::scaling_gradient_rows(single.data(), n, A.data() + r * rank, rank,
                                                 F.data(), f_stride, C.data() + r * c_stride,
                                                 c_stride, t_row.data() + r, t_column.data(),
                                                 inv_eps, 1, n, cost);
            for (int c = 0; c < n; ++c) {
              const long double cost_rc = C[r * c_stride + c];
              long double sum = 0, magnitude = 0;
              for (int k = 0; k < rank; ++k) {
                const long double term =
                    static_cast<long double>(A[r * rank + k]) * F[k * f_stride + c];
                sum += term;
                magnitude += std::fabs(term);
              }
              const long double terminal =
                  static_cast<long double>(t_row[r]) * t_column[c] * (1 - cost_rc * inv_eps);
              const long double slope = cost == Cost::kSqEuclidean ? 2 : 1 / cost_rc;
              const long double exact = K[r * k_stride + c] * (sum + terminal) * slope;
              const long double bound =
                  std::fabs(K[r * k_stride + c] * slope) * (magnitude + std::fabs(terminal));
              SK_CHECK_CLOSE(H[r * k_stride + c], exact, tolerance<T>(bound, rank + 4))
                  << "rank = " << rank << ", rows = " << rows << ", n = " << n << ", row " << r
                  << ", column " << c;
              SK_CHECK(single[c] == H[r * k_stride + c])
                  << "rank = " << rank << ", rows = " << rows << ", n = " << n << ", row " << r
                  << ", column " << c << ": " << single[c] << " alone, " << H[r * k_stride + c];
            }
          }
        }
      }
    }
  }
}

}  // namespace

SK_TEST(rows, float_matvec_matches_exact_sums) { check_matvec_matches_exact_sums<float>(); }
SK_TEST(rows, double_matvec_matches_exact_sums) { check_matvec_matches_exact_sums<double>(); }
SK_TEST(rows, float_matvec_transposed_matches_exact_sums) {
  check_matvec_transposed_matches_exact_sums<float, false>();
}
SK_TEST(rows, double_matvec_transposed_matches_exact_sums) {
  check_matvec_transposed_matches_exact_sums<double, false>();
}
SK_TEST(rows, float_matvec_product_transposed_matches_exact_sums) {
  check_matvec_transposed_matches_exact_sums<float, true>();
}
SK_TEST(rows, double_matvec_product_transposed_matches_exact_sums) {
  check_matvec_transposed_matches_exact_sums<double, true>();
}
SK_TEST(rows, float_scaling_gradient_rows_match_exact_values) {
  check_scaling_gradient_rows_match_exact_values<float>();
}
SK_TEST(rows, double_scaling_gradient_rows_match_exact_values) {
  check_scaling_gradient_rows_match_exact_values<double>();
}
