// csrc/core/softmin.h (softmin_row, softmin_adjoint_row) and its wrappers in csrc/cpu/rows.h
// (by hand for AVX-512 where the machine has it, else target_clones; also the online
// backend's adjoint_piece), against naive long-double implementations of the formulas in the
// header's comment:
//
//   s        = -eps log sum_c exp((h_c - M_c) / eps)
//   expected = sum_c M_c exp((h_c - M_c) / eps) / sum_c exp((h_c - M_c) / eps)
//   e_c      = exp((s + h_c - M_c) / eps)
//   out      = -sum_c a_c e_c                  [+ sum_c M_c e_c / eps         if terminal]
//   G_c     += w a_c e_c                       [+ w e_c (1 - M_c / eps)       if terminal]
//
// The long-double sums are not max-shifted: long double reaches exp(-11000), so they stay
// exact-enough where the float/double unshifted sum underflows to 0 (which is checked, so
// that the large-ratio cases do test the shift).
//
// Tolerances follow the conditioning of the inputs. With u the unit roundoff and
// kappa = max_c (|s| + |h_c| + |M_c|) / eps, rounding h_c - M_c alone perturbs each exponent
// by ~u kappa; the "dyadic" cases choose M, h, s and eps so that every exponent is exact in T,
// and get tolerances of a few ulps times the row length instead.
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/softmin.h"
#include "cpu/rows.h"
#include "tests/harness.h"

namespace {

constexpr int kRowLengths[] = {1, 7, 16, 17, 100, 257};

template <typename T>
struct RowCase {
  std::string label;
  std::vector<T> row;  // M_c
  std::vector<T> h;
  T eps;
  bool dyadic;       // every (h_c - M_c) / eps, and (s + h_c - M_c) / eps, is exact in T
  bool large_ratio;  // the unshifted sum of exp((h - M) / eps) underflows in T
};

template <typename T>
std::vector<RowCase<T>> make_cases(int n, std::mt19937_64& rng) {
  auto uniform = [&](double lo, double hi) {
    return static_cast<T>(std::uniform_real_distribution<double>(lo, hi)(rng));
  };
  auto dyadic = [&](int lo, int hi, int denominator) {  // k / denominator, k in [lo, hi]
    return static_cast<T>(std::uniform_int_distribution<int>(lo, hi)(rng)) / T(denominator);
  };
  constexpr T inf = std::numeric_limits<T>::infinity();
  std::vector<RowCase<T>> cases;
  auto add = [&](const std::string& label, T eps, bool is_dyadic, bool large, auto row_fn,
                 auto h_fn) {
    RowCase<T> c{label, std::vector<T>(n), std::vector<T>(n), eps, is_dyadic, large};
    for (int k = 0; k < n; ++k) {
      c.row[k] = row_fn(k);
      c.h[k] = h_fn(k, c.row[k]);
    }
    cases.push_back(c);
    if (n >= 2) {
      // A zero weight: one entry of h is -inf (at the front, the middle, the back).
      RowCase<T> z = c;
      z.label += ", h = -inf at 0, n/2, n-1";
      z.h[0] = z.h[n / 2] = z.h[n - 1] = -inf;
      if (n == 2) z.h[1] = c.h[1];
      cases.push_back(z);
      // All weights but one are zero.
      RowCase<T> one = c;
      one.label += ", h = -inf except at n/3";
      for (int k = 0; k < n; ++k)
        if (k != n / 3) one.h[k] = -inf;
      cases.push_back(one);
    }
  };
  add("moderate (M in [0,4], h in [-1,1], eps 0.5)", T(0.5), false, false,
      [&](int) { return uniform(0, 4); }, [&](int, T) { return uniform(-1, 1); });
  add("moderate (eps 0.05)", T(0.05), false, false, [&](int) { return uniform(0, 2); },
      [&](int, T) { return uniform(-0.5, 0.5); });
  add("large ratio (M in [5,10], h in [-0.5,0.5], eps 1e-3: C/eps ~ 1e4)", T(1e-3), false, true,
      [&](int) { return uniform(5, 10); }, [&](int, T) { return uniform(-0.5, 0.5); });
  add("large ratio, balanced (h = M - [0,0.01] - 5, eps 1e-3)", T(1e-3), false, true,
      [&](int) { return uniform(5, 10); },
      [&](int, T m) { return static_cast<T>(m - T(5) - uniform(0, 0.01)); });
  add("dyadic large ratio (M = k/64 in [5,10], h = j/64 in [-0.5,0.5], eps 2^-10)",
      std::ldexp(T(1), -10), true, true, [&](int) { return dyadic(320, 640, 64); },
      [&](int, T) { return dyadic(-32, 32, 64); });
  add("dyadic, balanced (h = M - j/1024 - 5, eps 2^-10)", std::ldexp(T(1), -10), true, true,
      [&](int) { return dyadic(320, 640, 64); },
      [&](int, T m) { return static_cast<T>(m - dyadic(0, 16, 1024) - T(5)); });
  return cases;
}

struct Naive {
  long double s = 0, expected_cost = 0;
  long double sum = 0;  // sum_c exp((h_c - M_c) / eps), unshifted
};

template <typename T>
Naive naive_softmin(const RowCase<T>& c) {
  const long double eps = c.eps;
  Naive r;
  long double weighted = 0;
  for (std::size_t k = 0; k < c.row.size(); ++k) {
    const long double e = std::exp((static_cast<long double>(c.h[k]) - c.row[k]) / eps);
    r.sum += e;
    weighted += static_cast<long double>(c.row[k]) * e;
  }
  r.s = -eps * std::log(r.sum);
  r.expected_cost = weighted / r.sum;
  return r;
}

// The unshifted sum in T precision: what a naive implementation would compute.
template <typename T>
T unshifted_sum(const RowCase<T>& c) {
  T sum = 0;
  for (std::size_t k = 0; k < c.row.size(); ++k) sum += std::exp((c.h[k] - c.row[k]) / c.eps);
  return sum;
}

template <typename T>
long double kappa(const RowCase<T>& c, long double s) {
  if (c.dyadic) return 0;
  long double k = 0;
  for (std::size_t i = 0; i < c.row.size(); ++i)
    if (std::isfinite(c.h[i]))
      k = std::max(k, (std::fabs(s) + std::fabs(static_cast<long double>(c.h[i])) +
                       std::fabs(static_cast<long double>(c.row[i]))) /
                          static_cast<long double>(c.eps));
  return k;
}

template <typename T>
struct Impl {
  const char* name;
  std::function<T(const T*, const T*, int, T)> softmin;
  std::function<T(const T*, const T*, int, T, T*)> softmin_with_expected_cost;
  std::function<T(const T*, const T*, const T*, T, T, int, T, bool, T*)> adjoint;
};

template <typename T>
std::vector<Impl<T>> implementations() {
  return {
      {"core/softmin.h",
       [](const T* row, const T* h, int n, T eps) {
         return sinkhorn::softmin_row<T, false>(row, h, n, eps, nullptr);
       },
       [](const T* row, const T* h, int n, T eps, T* ec) {
         return sinkhorn::softmin_row<T, true>(row, h, n, eps, ec);
       },
       [](const T* row, const T* h, const T* adj, T s, T w, int n, T eps, bool terminal,
          T* grad) {
         return terminal ? sinkhorn::softmin_adjoint_row<T, true>(row, h, adj, s, w, n, eps, grad)
                         : sinkhorn::softmin_adjoint_row<T, false>(row, h, adj, s, w, n, eps, grad);
       }},
      {"cpu/rows.h",
       [](const T* row, const T* h, int n, T eps) { return sinkhorn::cpu::softmin_row(row, h, n, eps); },
       [](const T* row, const T* h, int n, T eps, T* ec) {
         return sinkhorn::cpu::softmin_row_with_expected_cost(row, h, n, eps, ec);
       },
       [](const T* row, const T* h, const T* adj, T s, T w, int n, T eps, bool terminal, T* grad) {
         return sinkhorn::cpu::softmin_adjoint_row(row, h, adj, s, w, n, eps, terminal, grad);
       }},
  };
}

template <typename T>
void check_softmin_rows() {
  const long double u = std::numeric_limits<T>::epsilon() / 2;
  std::mt19937_64 rng(20180401);
  int large_ratio_rows = 0;
  for (int n : kRowLengths) {
    for (const RowCase<T>& c : make_cases<T>(n, rng)) {
      const std::string where = "n = " + std::to_string(n) + ", " + c.label;
      const Naive ref = naive_softmin(c);
      SK_CHECK(ref.sum > 0 && std::isfinite(ref.sum)) << "test bug: long-double sum " << ref.sum << " (" << where << ")";
      if (c.large_ratio) {
        ++large_ratio_rows;
        SK_CHECK(unshifted_sum(c) == T(0)) << "the unshifted sum does not underflow (" << where << ")";
      }
      const long double k = kappa(c, ref.s);
      long double max_cost = 0;
      for (T m : c.row) max_cost = std::max(max_cost, std::fabs(static_cast<long double>(m)));
      const long double tol_s = 8 * u * (std::fabs(ref.s) + c.eps * (n + 4 + k));
      const long double tol_ec = 8 * u * (n + 4 + k) * max_cost;
      for (const Impl<T>& impl : implementations<T>()) {
        const T s = impl.softmin(c.row.data(), c.h.data(), n, c.eps);
        SK_CHECK(std::isfinite(s)) << impl.name << ": softmin = " << s << " (" << where << ")";
        SK_CHECK_CLOSE(s, ref.s, tol_s) << impl.name << ", softmin (" << where << ")";
        T ec = std::numeric_limits<T>::quiet_NaN();
        const T s2 = impl.softmin_with_expected_cost(c.row.data(), c.h.data(), n, c.eps, &ec);
        SK_CHECK_CLOSE(s2, ref.s, tol_s) << impl.name << ", softmin with expected cost (" << where << ")";
        SK_CHECK_CLOSE(ec, ref.expected_cost, tol_ec) << impl.name << ", expected cost (" << where << ")";
      }
    }
  }
  SK_CHECK(large_ratio_rows > 0);
}

template <typename T>
void check_softmin_adjoint_rows() {
  const long double u = std::numeric_limits<T>::epsilon() / 2;
  std::mt19937_64 rng(20180402);
  auto uniform = [&](double lo, double hi) {
    return static_cast<T>(std::uniform_real_distribution<double>(lo, hi)(rng));
  };
  for (int n : kRowLengths) {
    for (const RowCase<T>& c : make_cases<T>(n, rng)) {
      // s: the row's own softmin, made exact on a 2^-16 grid in the dyadic cases (|s| < 16,
      // so s + h_c - M_c needs at most 21 significant bits).
      const Naive ref = naive_softmin(c);
      const T s = c.dyadic ? static_cast<T>(std::nearbyint(ref.s * 65536.0L) / 65536.0L)
                           : static_cast<T>(ref.s);
      const long double k = kappa(c, s);
      std::vector<T> adj(n), grad0(n);
      for (int i = 0; i < n; ++i) {
        adj[i] = uniform(-1, 1);
        grad0[i] = uniform(-1, 1);
      }
      for (bool terminal : {false, true}) {
        for (T w : {T(0.375), T(0)}) {
          const std::string where = "n = " + std::to_string(n) + ", " + c.label +
                                    (terminal ? ", terminal" : ", not terminal") +
                                    ", w = " + sktest::fmt(w);
          // Naive long double.
          const long double eps = c.eps;
          long double out = 0, out_scale = 0;
          std::vector<long double> grad(n), grad_scale(n);
          for (int i = 0; i < n; ++i) {
            const long double e = std::exp((static_cast<long double>(s) + c.h[i] - c.row[i]) / eps);
            const long double scaled_cost = c.row[i] / eps;
            const long double term = terminal ? (scaled_cost - adj[i]) * e : -adj[i] * e;
            out += term;
            out_scale += std::fabs(term);
            const long double dg = terminal ? w * e * (adj[i] + 1 - scaled_cost) : w * adj[i] * e;
            grad[i] = grad0[i] + dg;
            grad_scale[i] = (k + 6) * std::fabs(w * e) * (std::fabs(adj[i]) + 1 + scaled_cost) +
                            std::fabs(grad0[i]) + std::fabs(grad[i]);
          }
          const long double tol_out = 8 * u * (n + 6 + k) * out_scale;
          for (const Impl<T>& impl : implementations<T>()) {
            std::vector<T> g = grad0;
            const T got = impl.adjoint(c.row.data(), c.h.data(), adj.data(), s, w, n, c.eps,
                                       terminal, g.data());
            SK_CHECK(std::isfinite(got)) << impl.name << ": out = " << got << " (" << where << ")";
            SK_CHECK_CLOSE(got, out, tol_out) << impl.name << ", out (" << where << ")";
            for (int i = 0; i < n; ++i) {
              if (std::isinf(c.h[i])) {
                // A zero weight contributes nothing: the accumulator is left bitwise unchanged.
                SK_CHECK(g[i] == grad0[i]) << impl.name << ", grad[" << i << "] = " << g[i]
                                           << " at h = -inf, was " << grad0[i] << " (" << where << ")";
              } else {
                SK_CHECK_CLOSE(g[i], grad[i], 8 * u * grad_scale[i])
                    << impl.name << ", grad[" << i << "] (" << where << ")";
              }
            }
          }
          // The online backend's adjoint_piece: the same terms, with each contribution to G
          // times k(M_c) (2 for the squared distance, 1 / M_c for the distance, 0 at M_c <= 0)
          // written to gk rather than added to G.
          for (sinkhorn::Cost cost : {sinkhorn::Cost::kSqEuclidean, sinkhorn::Cost::kEuclidean}) {
            const std::string piece = where + (cost == sinkhorn::Cost::kSqEuclidean
                                                   ? ", sqeuclidean piece" : ", euclidean piece");
            std::vector<T> gk(n, std::numeric_limits<T>::quiet_NaN());
            const T got = sinkhorn::cpu::adjoint_piece(c.row.data(), c.h.data(), adj.data(), s, w,
                                                       n, c.eps, terminal, cost, gk.data());
            SK_CHECK_CLOSE(got, out, tol_out) << "adjoint_piece, out (" << piece << ")";
            for (int i = 0; i < n; ++i) {
              const long double slope = cost == sinkhorn::Cost::kSqEuclidean ? 2.0L
                                        : c.row[i] > 0 ? 1.0L / c.row[i] : 0.0L;
              const long double expected = (grad[i] - grad0[i]) * slope;
              if (std::isinf(c.h[i])) {
                SK_CHECK(gk[i] == T(0)) << "adjoint_piece, gk[" << i << "] = " << gk[i]
                                        << " at h = -inf (" << piece << ")";
              } else {
                SK_CHECK_CLOSE(gk[i], expected, 8 * u * grad_scale[i] * slope)
                    << "adjoint_piece, gk[" << i << "] (" << piece << ")";
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace

SK_TEST(softmin, float_rows) { check_softmin_rows<float>(); }
SK_TEST(softmin, double_rows) { check_softmin_rows<double>(); }
SK_TEST(softmin, float_adjoint_rows) { check_softmin_adjoint_rows<float>(); }
SK_TEST(softmin, double_adjoint_rows) { check_softmin_adjoint_rows<double>(); }
