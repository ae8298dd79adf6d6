// The products with a vector of csrc/cpu/rows.cpp (matvec and matvec_transposed: hand-written
// AVX-512 kernels where the machine has them, the compiler's otherwise; the elementwise
// product forms) against sums in long double, over shapes around their blocks of rows, their
// vector widths and matvec_transposed's blocks of up to eight vectors of columns.
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
      const std::vector<T> M = uniform<T>(static_cast<std::int64_t>(rows) * n, seed++);
      const std::vector<T> v = uniform<T>(n, seed++);
      std::vector<T> out(static_cast<std::size_t>(rows));
      sinkhorn::cpu::matvec(M.data(), rows, n, v.data(), out.data());
      for (int r = 0; r < rows; ++r) {
        long double exact = 0, magnitude = 0;
        for (int c = 0; c < n; ++c) {
          exact += static_cast<long double>(M[r * n + c]) * v[c];
          magnitude += std::fabs(static_cast<long double>(M[r * n + c]) * v[c]);
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
