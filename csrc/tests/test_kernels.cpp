// csrc/cpu/sinkhorn_cpu.h: sinkhorn_forward against a naive long-double implementation of the
// log-domain iterations of DESIGN.md section 1, sinkhorn_backward against finite differences
// of the forward (double), determinism, and independence of the thread count.
// The workspaces are those of tests/problems.h (NaN-filled scratch, as csrc/ops allocates).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/params.h"
#include "cpu/sinkhorn_cpu.h"
#include "tests/harness.h"
#include "tests/problems.h"
#include "tests/threads.h"

namespace {

using sinkhorn::Cost;
using sinkhorn::SinkhornParams;
using sktest::ForwardResult;
using sktest::Grads;
using sktest::make_problem;
using sktest::max_abs;
using sktest::max_rel_diff;
using sktest::nans;
using sktest::Problem;

template <typename T>
ForwardResult<T> run_forward(const Problem<T>& p) {
  return sktest::run_forward(p, sinkhorn::cpu::sinkhorn_forward<T>);
}

template <typename T>
Grads<T> run_backward(const Problem<T>& p, const ForwardResult<T>& fw,
                      const std::vector<T>& grad_cost) {
  return sktest::run_backward(p, fw, grad_cost, sinkhorn::cpu::sinkhorn_backward<T>);
}

// ---------------------------------------------------------------------------------------------
// The naive long-double reference of DESIGN.md section 1 (log domain, g^0 = 0):
//   f^l_i = eps log alpha_i - eps LSE_j((g^{l-1}_j - C_ij) / eps)
//   g^l_j = eps log beta_j  - eps LSE_i((f^l_i - C_ij) / eps)
//   W_L   = sum_ij C_ij exp((f^L_i + g^L_j - C_ij) / eps)
// and u^l = f^l - eps log alpha, v^l = g^l - eps log beta (the kernels' histories).

using LD = long double;

LD lse(const std::vector<LD>& t) {
  LD mx = -std::numeric_limits<LD>::infinity();
  for (LD v : t) mx = std::max(mx, v);
  if (std::isinf(mx)) return mx;
  LD s = 0;
  for (LD v : t) s += std::exp(v - mx);
  return mx + std::log(s);
}

struct NaiveForward {
  std::vector<LD> W, u, v;
  LD max_cost = 0;
};

template <typename T>
NaiveForward naive_forward(const Problem<T>& p) {
  const int64_t B = p.B, m = p.m, n = p.n, d = p.d, L = p.L;
  const LD eps = p.eps;
  NaiveForward r;
  r.W.assign(B, 0);
  r.u.assign(B * L * m, 0);
  r.v.assign(B * L * n, 0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<LD> C(m * n);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        LD sq = 0;
        for (int64_t k = 0; k < d; ++k) {
          const LD diff = static_cast<LD>(p.x[(b * m + i) * d + k]) - p.y[(b * n + j) * d + k];
          sq += diff * diff;
        }
        C[i * n + j] = p.cost == Cost::kSqEuclidean ? sq : std::sqrt(sq);
        r.max_cost = std::max(r.max_cost, C[i * n + j]);
      }
    std::vector<LD> f(m), g(n, 0), t;
    for (int64_t l = 1; l <= L; ++l) {
      for (int64_t i = 0; i < m; ++i) {
        t.assign(n, 0);
        for (int64_t j = 0; j < n; ++j) t[j] = (g[j] - C[i * n + j]) / eps;
        const LD u = -eps * lse(t);
        r.u[(b * L + l - 1) * m + i] = u;
        f[i] = eps * std::log(static_cast<LD>(p.a[b * m + i])) + u;
      }
      for (int64_t j = 0; j < n; ++j) {
        t.assign(m, 0);
        for (int64_t i = 0; i < m; ++i) t[i] = (f[i] - C[i * n + j]) / eps;
        const LD v = -eps * lse(t);
        r.v[(b * L + l - 1) * n + j] = v;
        g[j] = eps * std::log(static_cast<LD>(p.b[b * n + j])) + v;
      }
    }
    LD w = 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) w += C[i * n + j] * std::exp((f[i] + g[j] - C[i * n + j]) / eps);
    r.W[b] = w;
  }
  return r;
}

// rtol is relative to the conditioning scale: W to rtol * |W|, potentials to
// rtol * (max C + eps).
template <typename T>
void check_forward_against_naive(const Problem<T>& p, double rtol) {
  const ForwardResult<T> got = run_forward(p);
  const NaiveForward ref = naive_forward(p);
  const std::string where = p.describe();
  double worst = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    SK_CHECK(std::isfinite(ref.W[b]) && ref.W[b] > 0) << "test bug: naive W = " << ref.W[b] << " (" << where << ")";
    SK_CHECK(std::isfinite(got.W[b])) << "W[" << b << "] = " << got.W[b] << " (" << where << ")";
    SK_CHECK_CLOSE(got.W[b], ref.W[b], rtol * std::fabs(ref.W[b])) << "W[" << b << "] (" << where << ")";
    worst = std::max(worst, static_cast<double>(std::fabs(got.W[b] - ref.W[b]) / std::fabs(ref.W[b])));
  }
  const LD pot_tol = rtol * (ref.max_cost + p.eps);
  for (std::size_t k = 0; k < ref.u.size(); ++k)
    SK_CHECK_CLOSE(got.u[k], ref.u[k], pot_tol) << "u_history[" << k << "] (" << where << ")";
  for (std::size_t k = 0; k < ref.v.size(); ++k)
    SK_CHECK_CLOSE(got.v[k], ref.v[k], pot_tol) << "v_history[" << k << "] (" << where << ")";
  sktest::info(where + ": max rel. error of W " + sktest::fmt(worst));
}

std::vector<Problem<double>> forward_problems() {
  std::vector<Problem<double>> ps;
  std::uint64_t seed = 1;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    for (int L : {1, 2, 5, 20}) {
      ps.push_back(make_problem<double>(2, 5, 4, 3, L, 0.5, cost, seed++));
      ps.push_back(make_problem<double>(2, 3, 7, 2, L, 0.1, cost, seed++));
    }
    ps.push_back(make_problem<double>(2, 1, 4, 2, 3, 0.3, cost, seed++));  // m = 1
    ps.push_back(make_problem<double>(2, 6, 1, 1, 3, 0.3, cost, seed++));  // n = 1
    ps.push_back(make_problem<double>(2, 17, 33, 5, 4, 0.05, cost, seed++));
  }
  return ps;
}

// Large C / eps: eps = 1e-3 on points spread over [0, 2]^2 (C / eps up to ~1e4), where the
// scaling form underflows; the log-domain kernels must stay finite and accurate.
std::vector<Problem<double>> large_ratio_problems() {
  std::vector<Problem<double>> ps;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean})
    for (int L : {1, 10}) ps.push_back(make_problem<double>(2, 6, 5, 2, L, 1e-3, cost, 100 + L, 2.0));
  return ps;
}

// ---------------------------------------------------------------------------------------------
// Finite differences.

// The 5-point central difference of W_b (computed by the double forward) along one input.
template <typename Perturb>
double central_difference(const Problem<double>& p, int64_t b, double h, Perturb perturb) {
  auto at = [&](double delta) {
    Problem<double> q = p;
    perturb(q, delta);
    return run_forward(q).W[b];
  };
  return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h);
}

struct FdStats {
  double max_rel = 0;
};

// Checks got[k] against fd[k] within rtol * max(|fd[k]|, 1e-2 * max |fd|) + atol.
void compare_gradient(const std::vector<double>& got, const std::vector<double>& fd, double rtol,
                      double atol, const std::string& what, FdStats& stats) {
  double scale = 0;
  for (double v : fd) scale = std::max(scale, std::fabs(v));
  for (std::size_t k = 0; k < fd.size(); ++k) {
    const double ref = std::max(std::fabs(fd[k]), 1e-2 * scale);
    SK_CHECK_CLOSE(got[k], fd[k], rtol * ref + atol) << what << "[" << k << "]";
    if (ref > 0) stats.max_rel = std::max(stats.max_rel, std::fabs(got[k] - fd[k]) / ref);
  }
}

// Checks every gradient of sum_b grad_cost_b W_b against finite differences. Inputs listed
// in `one_sided_weights` (indices into alpha) are zero weights: their derivative is the
// one-sided one, (-3 W(0) + 4 W(h) - W(2h)) / 2h.
void check_backward_against_fd(const Problem<double>& p, double h, double rtol,
                               const std::vector<int64_t>& one_sided_weights = {}) {
  const std::vector<double> grad_cost = {1.0, 0.5};
  SK_CHECK(p.B == 2) << "test bug";
  const ForwardResult<double> fw = run_forward(p);
  const Grads<double> got = run_backward(p, fw, grad_cost);
  const int64_t m = p.m, n = p.n, d = p.d;
  Grads<double> fd{std::vector<double>(got.x.size()), std::vector<double>(got.y.size()),
                   std::vector<double>(got.a.size()), std::vector<double>(got.b.size())};
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t k = 0; k < m * d; ++k)
      fd.x[b * m * d + k] = grad_cost[b] * central_difference(p, b, h, [&](Problem<double>& q, double t) {
                              q.x[b * m * d + k] += t;
                            });
    for (int64_t k = 0; k < n * d; ++k)
      fd.y[b * n * d + k] = grad_cost[b] * central_difference(p, b, h, [&](Problem<double>& q, double t) {
                              q.y[b * n * d + k] += t;
                            });
    for (int64_t i = 0; i < m; ++i) {
      const int64_t idx = b * m + i;
      auto perturb = [&](Problem<double>& q, double t) { q.a[idx] += t; };
      if (std::find(one_sided_weights.begin(), one_sided_weights.end(), idx) != one_sided_weights.end()) {
        auto at = [&](double t) {
          Problem<double> q = p;
          perturb(q, t);
          return run_forward(q).W[b];
        };
        const double hs = 1e-6;
        fd.a[idx] = grad_cost[b] * (-3 * at(0) + 4 * at(hs) - at(2 * hs)) / (2 * hs);
      } else {
        fd.a[idx] = grad_cost[b] * central_difference(p, b, h, perturb);
      }
    }
    for (int64_t j = 0; j < n; ++j)
      fd.b[b * n + j] = grad_cost[b] * central_difference(p, b, h, [&](Problem<double>& q, double t) {
                          q.b[b * n + j] += t;
                        });
  }
  const std::string where = " (" + p.describe() + ")";
  // The rounding noise of the difference quotients: W is computed to a few ulps of |W|, and
  // the 5-point stencil turns an error delta of W into up to 1.5 delta / h (a gradient that is
  // exactly 0, as that of a single point's weight, comes out of the stencil this large).
  double w_scale = 0;
  for (double w : fw.W) w_scale = std::max(w_scale, std::fabs(w));
  const double atol = 64 * std::numeric_limits<double>::epsilon() * w_scale / h;
  FdStats stats;
  compare_gradient(got.x, fd.x, rtol, atol, "grad_x" + where, stats);
  compare_gradient(got.y, fd.y, rtol, atol, "grad_y" + where, stats);
  compare_gradient(got.a, fd.a, one_sided_weights.empty() ? rtol : std::max(rtol, 1e-5), atol,
                   "grad_x_weights" + where, stats);
  compare_gradient(got.b, fd.b, rtol, atol, "grad_y_weights" + where, stats);
  sktest::info(p.describe() + ": max rel. deviation from finite differences " + sktest::fmt(stats.max_rel));
}

std::vector<Problem<double>> backward_problems() {
  std::vector<Problem<double>> ps;
  std::uint64_t seed = 1000;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    for (int L : {1, 3}) ps.push_back(make_problem<double>(2, 5, 4, 3, L, 0.5, cost, seed++));
    ps.push_back(make_problem<double>(2, 3, 6, 2, 10, 0.1, cost, seed++));
    ps.push_back(make_problem<double>(2, 1, 4, 2, 2, 0.3, cost, seed++));  // m = 1
    ps.push_back(make_problem<double>(2, 4, 1, 2, 2, 0.3, cost, seed++));  // n = 1
  }
  return ps;
}

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

// --- forward ---------------------------------------------------------------------------------

SK_TEST(forward, double_matches_naive) {
  for (const auto& p : forward_problems()) check_forward_against_naive(p, 1e-12);
}

SK_TEST(forward, float_matches_naive) {
  for (const auto& p : forward_problems()) {
    // The float kernel sees the float-rounded inputs; the reference uses the same values.
    check_forward_against_naive(p.cast<float>(), 2e-5);
  }
}

SK_TEST(forward, double_large_cost_ratio) {
  for (const auto& p : large_ratio_problems()) check_forward_against_naive(p, 1e-11);
}

SK_TEST(forward, float_large_cost_ratio) {
  for (const auto& p : large_ratio_problems()) check_forward_against_naive(p.cast<float>(), 1e-4);
}

SK_TEST(forward, zero_weight) {
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    Problem<double> p = make_problem<double>(2, 5, 4, 2, 3, 0.2, cost, 77);
    // alpha_1 = 0 in batch 0, beta_3 = 0 in batch 1 (renormalised).
    auto zero = [](std::vector<double>& w, int64_t begin, int64_t count, int64_t k) {
      w[begin + k] = 0;
      double total = 0;
      for (int64_t i = 0; i < count; ++i) total += w[begin + i];
      for (int64_t i = 0; i < count; ++i) w[begin + i] /= total;
    };
    zero(p.a, 0, p.m, 1);
    zero(p.b, p.n, p.n, 3);
    check_forward_against_naive(p, 1e-12);
    check_forward_against_naive(p.cast<float>(), 2e-5);
  }
}

// --- backward --------------------------------------------------------------------------------

SK_TEST(backward, double_matches_finite_differences) {
  for (const auto& p : backward_problems()) check_backward_against_fd(p, 1e-4, 1e-6);
}

SK_TEST(backward, zero_weight_matches_finite_differences) {
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    Problem<double> p = make_problem<double>(2, 5, 4, 2, 3, 0.3, cost, 99);
    p.a[1] = 0;  // batch 0, point 1 (the others no longer sum to 1: W is defined all the same)
    check_backward_against_fd(p, 1e-4, 1e-6, {1});
    const ForwardResult<double> fw = run_forward(p);
    const Grads<double> g = run_backward(p, fw, {1.0, 0.5});
    for (int64_t k = 0; k < p.d; ++k)
      SK_CHECK(g.x[1 * p.d + k] == 0.0) << "a point of zero weight has grad_x " << g.x[1 * p.d + k];
  }
}

// W(x, x) for the euclidean cost: every diagonal pair coincides, where the gradient of the
// cost is taken as 0. The central difference of |t| at 0 is 0 as well, so the two agree, to
// O(h) (the diagonal cost moves to |h| on both sides; the deviation measured 37 h), hence
// the small step.
SK_TEST(backward, euclidean_coincident_points) {
  Problem<double> p = make_problem<double>(2, 5, 5, 3, 3, 0.3, Cost::kEuclidean, 5);
  p.y = p.x;
  p.b = p.a;
  const ForwardResult<double> fw = run_forward(p);
  const Grads<double> g = run_backward(p, fw, {1.0, 0.5});
  for (const auto* v : {&g.x, &g.y, &g.a, &g.b})
    for (double e : *v) SK_CHECK(std::isfinite(e)) << "non-finite gradient " << e;
  check_backward_against_fd(p, 1e-7, 1e-4);
}

// A backward in the same call as its forward reads the forward's K (kernel_matrix) instead of
// computing it: the same gradients, bit for bit, in both strategies (the large-ratio problems
// run the log domain, which leaves K unused).
template <typename T>
void check_shared_kernel_matrix(const Problem<T>& p) {
  std::vector<T> K = nans<T>(p.B * p.m * sinkhorn::kernel_matrix_stride<T>(p.n));
  auto with_K = [&](auto kernel) {
    return [&, kernel](SinkhornParams<T> sp) {
      sp.kernel_matrix = K.data();
      kernel(sp);
    };
  };
  const ForwardResult<T> fw = sktest::run_forward(p, with_K(sinkhorn::cpu::sinkhorn_forward<T>));
  const Grads<T> shared =
      sktest::run_backward(p, fw, {T(1), T(0.5)}, with_K(sinkhorn::cpu::sinkhorn_backward<T>));
  const Grads<T> own = run_backward(p, run_forward(p), {T(1), T(0.5)});
  for (const auto& [a, b] : {std::pair{&shared.x, &own.x}, std::pair{&shared.y, &own.y},
                             std::pair{&shared.a, &own.a}, std::pair{&shared.b, &own.b}})
    SK_CHECK(bitwise_equal(*a, *b)) << p.describe();
}

SK_TEST(backward, reading_the_forwards_kernel_matrix_changes_nothing) {
  for (const auto& p : backward_problems()) {
    check_shared_kernel_matrix(p);
    check_shared_kernel_matrix(p.cast<float>());
  }
  for (const auto& p : large_ratio_problems()) check_shared_kernel_matrix(p);
}

// The float backward against the double one on the same (float-representable) inputs,
// relative to the largest gradient of all four (with m = 1, W does not depend on alpha and
// grad_x_weights is 0 up to rounding).
SK_TEST(backward, float_matches_double) {
  for (const auto& pd : backward_problems()) {
    const Problem<float> pf = pd.cast<float>();
    const Problem<double> p = pf.cast<double>();
    const Grads<double> gd = run_backward(p, run_forward(p), {1.0, 0.5});
    const Grads<float> gf = run_backward(pf, run_forward(pf), {1.0f, 0.5f});
    const std::string where = " (" + p.describe() + ")";
    const double scale = std::max({max_abs(gd.x), max_abs(gd.y), max_abs(gd.a), max_abs(gd.b)});
    const std::vector<std::pair<const char*, double>> diffs = {
        {"grad_x", max_rel_diff(gf.x, gd.x, scale)},
        {"grad_y", max_rel_diff(gf.y, gd.y, scale)},
        {"grad_x_weights", max_rel_diff(gf.a, gd.a, scale)},
        {"grad_y_weights", max_rel_diff(gf.b, gd.b, scale)}};
    double worst = 0;
    for (const auto& [name, diff] : diffs) {
      SK_CHECK(diff <= 2e-5) << name << ": " << diff << where;
      worst = std::max(worst, diff);
    }
    sktest::info(p.describe() + ": max rel. deviation of float from double " + sktest::fmt(worst));
  }
}

// --- determinism -----------------------------------------------------------------------------

template <typename T>
void check_repeatable() {
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    const Problem<T> p = make_problem<T>(2, 37, 29, 3, 5, 0.1, cost, 31);
    const std::vector<T> grad_cost = {T(1), T(0.5)};
    const ForwardResult<T> f1 = run_forward(p), f2 = run_forward(p);
    SK_CHECK(bitwise_equal(f1.W, f2.W)) << p.describe();
    SK_CHECK(bitwise_equal(f1.u, f2.u)) << p.describe();
    SK_CHECK(bitwise_equal(f1.v, f2.v)) << p.describe();
    const Grads<T> g1 = run_backward(p, f1, grad_cost), g2 = run_backward(p, f1, grad_cost);
    SK_CHECK(bitwise_equal(g1.x, g2.x)) << p.describe();
    SK_CHECK(bitwise_equal(g1.y, g2.y)) << p.describe();
    SK_CHECK(bitwise_equal(g1.a, g2.a)) << p.describe();
    SK_CHECK(bitwise_equal(g1.b, g2.b)) << p.describe();
  }
}

SK_TEST(determinism, float_repeated_calls_bitwise_equal) { check_repeatable<float>(); }
SK_TEST(determinism, double_repeated_calls_bitwise_equal) { check_repeatable<double>(); }

// m = n = 200 rows per batch entry is several at::parallel_for chunks (grain 32768 / 200).
template <typename T>
void check_thread_count_independence(double rtol) {
  sktest::ThreadCountGuard guard;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    const Problem<T> p = make_problem<T>(2, 200, 180, 3, 5, 0.05, cost, 11);
    const std::vector<T> grad_cost = {T(1), T(0.5)};
    at::set_num_threads(1);
    SK_CHECK(at::get_num_threads() == 1);
    const ForwardResult<T> f1 = run_forward(p);
    const Grads<T> g1 = run_backward(p, f1, grad_cost);
    bool all_bitwise = true;
    for (int threads : {2, 3}) {
      at::set_num_threads(threads);
      SK_CHECK(at::get_num_threads() == threads);
      const ForwardResult<T> fk = run_forward(p);
      const Grads<T> gk = run_backward(p, fk, grad_cost);
      const std::string where = p.describe() + ", 1 vs " + std::to_string(threads) + " threads";
      const std::vector<std::pair<const char*, double>> diffs = {
          {"W", max_rel_diff(fk.W, f1.W)},          {"u_history", max_rel_diff(fk.u, f1.u)},
          {"v_history", max_rel_diff(fk.v, f1.v)},  {"grad_x", max_rel_diff(gk.x, g1.x)},
          {"grad_y", max_rel_diff(gk.y, g1.y)},     {"grad_x_weights", max_rel_diff(gk.a, g1.a)},
          {"grad_y_weights", max_rel_diff(gk.b, g1.b)}};
      for (const auto& [name, diff] : diffs) SK_CHECK(diff <= rtol) << name << ": " << diff << " (" << where << ")";
      all_bitwise = all_bitwise && bitwise_equal(fk.W, f1.W) && bitwise_equal(fk.u, f1.u) &&
                    bitwise_equal(fk.v, f1.v) && bitwise_equal(gk.x, g1.x) &&
                    bitwise_equal(gk.y, g1.y) && bitwise_equal(gk.a, g1.a) && bitwise_equal(gk.b, g1.b);
    }
    sktest::info(p.describe() + ": results for 1, 2, 3 threads are " +
                 (all_bitwise ? "bitwise identical" : "NOT bitwise identical (within tolerance)"));
  }
}

SK_TEST(threads, double_1_2_3_threads_agree) { check_thread_count_independence<double>(1e-12); }
SK_TEST(threads, float_1_2_3_threads_agree) { check_thread_count_independence<float>(1e-5); }
