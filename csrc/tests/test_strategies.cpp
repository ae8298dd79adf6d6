// csrc/cpu/strategies.h: the scaling strategy and the online backend give the log-domain
// strategy's results to rounding (forward: W and both histories; backward: all four
// gradients), the scaling strategy where scaling_form_is_safe holds, the online backend at any
// eps; including zero weights (a whole tile of them), tails of the four-row, 128-column and
// 512-point blocks, batches, both costs and thread counts; and the dispatch picks the log
// domain past the bound.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/params.h"
#include "core/softmin.h"
#include "cpu/cost_matrix.h"
#include "cpu/sinkhorn_cpu.h"
#include "cpu/strategies.h"
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
using sktest::Problem;

using sinkhorn::cpu::Cloud;
using sinkhorn::cpu::Costs;

// A strategy as a kernel of the shape tests/problems.h runs: it builds C itself.
template <typename T, void (*Strategy)(const SinkhornParams<T>&, const T*)>
void with_cost_matrix(const SinkhornParams<T>& p) {
  std::vector<T> C(static_cast<std::size_t>(p.batch * p.m * p.n));
  const Cloud<T> x(p.x, p.batch, p.m, p.d), y(p.y, p.batch, p.n, p.d);
  sinkhorn::cpu::build_cost_matrix(x, y, p.x_is_y, p.cost, C.data());
  Strategy(p, C.data());
}

// The scaling strategy with C stored (Stored) or recomputed tile by tile.
template <typename T, void (*Strategy)(const SinkhornParams<T>&, const Costs<T>&), bool Stored>
void with_costs(const SinkhornParams<T>& p) {
  std::vector<T> C(static_cast<std::size_t>(p.batch * p.m * p.n));
  const Cloud<T> x(p.x, p.batch, p.m, p.d), y(p.y, p.batch, p.n, p.d);
  if (Stored) sinkhorn::cpu::build_cost_matrix(x, y, p.x_is_y, p.cost, C.data());
  Strategy(p, Costs<T>(x, y, p.cost, Stored ? C.data() : nullptr));
}

// The online backend as a kernel: its switch is in the params.
template <typename T, void (*Kernel)(const SinkhornParams<T>&)>
void online(const SinkhornParams<T>& p) {
  SinkhornParams<T> q = p;
  q.online = true;
  Kernel(q);
}

// Forward and backward of a candidate against the log-domain strategy.
template <typename T, typename Forward, typename Backward>
void check_matches_log_domain(const Problem<T>& p, double rtol, Forward forward, Backward backward) {
  using namespace sinkhorn::cpu;
  const std::string where = " (" + p.describe() + ")";
  const ForwardResult<T> log_fw = sktest::run_forward(p, with_cost_matrix<T, log_domain_forward<T>>);
  const ForwardResult<T> scaled_fw = sktest::run_forward(p, forward);
  // Potentials are compared relative to their own scale (max C + eps, as the naive tests do).
  const double potential_scale = std::max(max_abs(log_fw.u), max_abs(log_fw.v)) + p.eps;
  SK_CHECK(max_rel_diff(scaled_fw.W, log_fw.W) <= rtol) << "W" << where;
  SK_CHECK(max_rel_diff(scaled_fw.u, log_fw.u, potential_scale) <= rtol) << "u_history" << where;
  SK_CHECK(max_rel_diff(scaled_fw.v, log_fw.v, potential_scale) <= rtol) << "v_history" << where;

  std::vector<T> grad_cost(static_cast<std::size_t>(p.B));
  for (int64_t b = 0; b < p.B; ++b) grad_cost[b] = T(1) - T(0.4) * T(b);
  const Grads<T> log_g = sktest::run_backward(p, log_fw, grad_cost, with_cost_matrix<T, log_domain_backward<T>>);
  const Grads<T> scaled_g = sktest::run_backward(p, log_fw, grad_cost, backward);
  const double scale = std::max({max_abs(log_g.x), max_abs(log_g.y), max_abs(log_g.a), max_abs(log_g.b)});
  SK_CHECK(max_rel_diff(scaled_g.x, log_g.x, scale) <= rtol) << "grad_x" << where;
  SK_CHECK(max_rel_diff(scaled_g.y, log_g.y, scale) <= rtol) << "grad_y" << where;
  SK_CHECK(max_rel_diff(scaled_g.a, log_g.a, scale) <= rtol) << "grad_x_weights" << where;
  SK_CHECK(max_rel_diff(scaled_g.b, log_g.b, scale) <= rtol) << "grad_y_weights" << where;
  sktest::info(p.describe() + ": W " + sktest::fmt(max_rel_diff(scaled_fw.W, log_fw.W)) +
               ", gradients " + sktest::fmt(max_rel_diff(scaled_g.x, log_g.x, scale)));
}

template <typename T>
void check_scaling_matches_log_domain(const Problem<T>& p, double rtol) {
  using namespace sinkhorn::cpu;
  check_matches_log_domain(p, rtol, with_costs<T, scaling_forward<T>, true>,
                           with_costs<T, scaling_backward<T>, true>);
  check_matches_log_domain(p, rtol, with_costs<T, scaling_forward<T>, false>,
                           with_costs<T, scaling_backward<T>, false>);
}

template <typename T>
void check_online_matches_log_domain(const Problem<T>& p, double rtol) {
  using namespace sinkhorn::cpu;
  check_matches_log_domain(p, rtol, online<T, sinkhorn_forward<T>>, online<T, sinkhorn_backward<T>>);
}

// Sizes around the blocks of rows of matvec (four, eight) and the 128-column blocks; eps up
// to the bound.
template <typename T>
std::vector<Problem<T>> strategy_problems() {
  std::vector<Problem<T>> ps;
  std::uint64_t seed = 300;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    ps.push_back(make_problem<T>(1, 1, 1, 2, 3, 0.5, cost, seed++));
    ps.push_back(make_problem<T>(2, 13, 7, 3, 1, 0.5, cost, seed++));
    ps.push_back(make_problem<T>(2, 37, 130, 2, 4, 0.2, cost, seed++));
    ps.push_back(make_problem<T>(1, 131, 259, 5, 10, 1.0, cost, seed++));
    // max C / eps near float's bound of 30: d = 3 in [0, 1.25]^3 gives max C about 3.
    ps.push_back(make_problem<T>(1, 40, 33, 3, 20, 0.11, cost, seed++));
  }
  return ps;
}

template <typename T>
Problem<T> with_zero_weights(Problem<T> p) {
  // alpha_1 = 0 in batch 0, beta_2 = 0 in the last batch, renormalised.
  auto zero = [](std::vector<T>& w, int64_t begin, int64_t count, int64_t k) {
    w[begin + k] = 0;
    T total = 0;
    for (int64_t i = 0; i < count; ++i) total += w[begin + i];
    for (int64_t i = 0; i < count; ++i) w[begin + i] /= total;
  };
  zero(p.a, 0, p.m, 1);
  zero(p.b, (p.B - 1) * p.n, p.n, 2);
  return p;
}

}  // namespace

SK_TEST(strategies, double_scaling_matches_log_domain) {
  for (const auto& p : strategy_problems<double>()) check_scaling_matches_log_domain(p, 1e-12);
}

SK_TEST(strategies, float_scaling_matches_log_domain) {
  for (const auto& p : strategy_problems<float>()) check_scaling_matches_log_domain(p, 5e-5);
}

SK_TEST(strategies, zero_weights_scaling_matches_log_domain) {
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    const auto p = with_zero_weights(make_problem<double>(2, 9, 11, 2, 5, 0.3, cost, 41));
    check_scaling_matches_log_domain(p, 1e-12);
    check_scaling_matches_log_domain(p.cast<float>(), 5e-5);
  }
}

SK_TEST(strategies, scaling_matches_log_domain_where_a_whole_tile_has_zero_weights) {
  // alpha_i = 0 for the first 40 rows, more than a tile of 32: the column sums of the
  // iterations start at the first tile that has a weight.
  auto p = make_problem<double>(1, 100, 70, 2, 6, 0.4, Cost::kSqEuclidean, 52);
  std::fill(p.a.begin(), p.a.begin() + 40, 0.0);
  for (double& w : p.a) w = w == 0.0 ? 0.0 : 1.0 / 60;
  check_scaling_matches_log_domain(p, 1e-12);
  check_scaling_matches_log_domain(p.cast<float>(), 5e-5);
}

SK_TEST(strategies, scaling_is_independent_of_thread_count) {
  sktest::ThreadCountGuard guard;
  auto run = [](const Problem<double>& p, int threads) {
    at::set_num_threads(threads);
    const ForwardResult<double> fw = sktest::run_forward(p, sinkhorn::cpu::sinkhorn_forward<double>);
    return std::make_pair(fw, sktest::run_backward(p, fw, {1.0, 0.5}, sinkhorn::cpu::sinkhorn_backward<double>));
  };
  // Small enough that each problem of the batch runs on one thread: bitwise.
  const Problem<double> small = make_problem<double>(2, 131, 200, 3, 4, 0.5, Cost::kSqEuclidean, 8);
  const auto [f1, g1] = run(small, 1);
  for (int threads : {2, 3}) {
    const auto [fk, gk] = run(small, threads);
    SK_CHECK(fk.W == f1.W && fk.u == f1.u && fk.v == f1.v) << threads << " threads, forward";
    SK_CHECK(gk.x == g1.x && gk.y == g1.y && gk.a == g1.a && gk.b == g1.b)
        << threads << " threads, backward";
  }
  // Large enough that the rows are split into parts, each with its column sums
  // (cpu/parallel.h row_parts): bitwise per thread count, equal across counts to rounding.
  // One batch: a part per thread, in one region. Two: at 4 threads two parts each, in one
  // region; at 3 two parts each (4 slots), a region per step.
  for (const int64_t batch : {1, 2}) {
    const Problem<double> large =
        make_problem<double>(batch, 803, 517, 3, 4, 0.5, Cost::kEuclidean, 9);
    const auto [fl1, gl1] = run(large, 1);
    for (int threads : {2, 3, 4}) {
      const auto [fk, gk] = run(large, threads);
      const std::string where = std::to_string(batch) + " batches, " + std::to_string(threads) +
                                " threads";
      SK_CHECK(max_rel_diff(fk.W, fl1.W) <= 1e-13) << where << ", W";
      SK_CHECK(max_rel_diff(fk.v, fl1.v, max_abs(fl1.v) + 0.5) <= 1e-13) << where << ", v";
      for (const auto& [got, expected] :
           {std::make_pair(&gk.x, &gl1.x), std::make_pair(&gk.y, &gl1.y),
            std::make_pair(&gk.a, &gl1.a), std::make_pair(&gk.b, &gl1.b)})
        SK_CHECK(max_rel_diff(*got, *expected) <= 1e-12)
            << where << ", backward: " << max_rel_diff(*got, *expected);
      const auto [fk2, gk2] = run(large, threads);
      SK_CHECK(fk2.v == fk.v && gk2.x == gk.x && gk2.y == gk.y) << where << ", repeated";
    }
  }
}

SK_TEST(strategies, dispatch_uses_the_log_domain_past_the_bound) {
  // max C / eps = 3 / 0.05 = 60: past float's bound, where the scaling form loses the
  // smallest row sums (exp(-60) * K underflows), within double's.
  const auto p = make_problem<double>(1, 30, 20, 3, 8, 0.05, Cost::kSqEuclidean, 17);
  SK_CHECK(!sinkhorn::scaling_form_is_safe(60.0f) && sinkhorn::scaling_form_is_safe(60.0));
  using namespace sinkhorn::cpu;
  const Problem<float> pf = p.cast<float>();
  const ForwardResult<float> dispatched = sktest::run_forward(pf, sinkhorn_forward<float>);
  const ForwardResult<float> log_domain = sktest::run_forward(pf, with_cost_matrix<float, log_domain_forward<float>>);
  SK_CHECK(dispatched.W == log_domain.W && dispatched.u == log_domain.u && dispatched.v == log_domain.v);
}

SK_TEST(strategies, dispatch_decides_by_a_bound_on_the_costs_then_by_their_max) {
  using namespace sinkhorn::cpu;
  // x at (0, 0) and (10, 10), y at (10, 0) and (0, 10), four times each (enough points that
  // the bound, from (m + n) d numbers, is cheaper than the max over m n costs, and goes
  // first): the bounding boxes allow max C = 200, the costs reach 100. eps = 0.5 puts
  // 200 / eps past double's bound of 300 and 100 / eps within: the max must pick the scaling
  // strategy after the bound did not.
  auto p = make_problem<double>(1, 8, 8, 2, 5, 0.5, Cost::kSqEuclidean, 23);
  const double x_points[] = {0, 0, 10, 10}, y_points[] = {10, 0, 0, 10};
  for (int k = 0; k < 4; ++k) {
    std::copy(x_points, x_points + 4, p.x.begin() + 4 * k);
    std::copy(y_points, y_points + 4, p.y.begin() + 4 * k);
  }
  SK_CHECK(sinkhorn::scaling_form_is_safe(100.0 / 0.5) && !sinkhorn::scaling_form_is_safe(200.0 / 0.5));
  const ForwardResult<double> dispatched = sktest::run_forward(p, sinkhorn_forward<double>);
  const ForwardResult<double> scaling = sktest::run_forward(p, with_costs<double, scaling_forward<double>, true>);
  SK_CHECK(dispatched.W == scaling.W && dispatched.u == scaling.u && dispatched.v == scaling.v);
  // A self-term (x_is_y, y the same cloud) of points at -1 and 1: the box allows max C = 4,
  // which at eps = 0.1 is past float's bound; the dispatch must take the log domain.
  auto self = make_problem<double>(1, 8, 8, 1, 5, 0.1, Cost::kSqEuclidean, 29);
  for (int64_t i = 0; i < 8; ++i) self.x[i] = i % 2 == 0 ? -1.0 : 1.0;
  self.y = self.x, self.b = self.a;
  const Problem<float> self_f = self.cast<float>();
  auto as_self = [](const SinkhornParams<float>& q) {
    SinkhornParams<float> s = q;
    s.x_is_y = true;
    sinkhorn_forward<float>(s);
  };
  const ForwardResult<float> self_dispatched = sktest::run_forward(self_f, as_self);
  const ForwardResult<float> self_log = sktest::run_forward(self_f, with_cost_matrix<float, log_domain_forward<float>>);
  SK_CHECK(self_dispatched.W == self_log.W && self_dispatched.u == self_log.u &&
           self_dispatched.v == self_log.v);
  // A NaN coordinate leaves no bound: the max, NaN, picks the log domain, which propagates it.
  p.x[1] = std::numeric_limits<double>::quiet_NaN();
  const ForwardResult<double> with_nan = sktest::run_forward(p, sinkhorn_forward<double>);
  SK_CHECK(std::isnan(with_nan.W[0]));
}

SK_TEST(online, double_matches_log_domain) {
  for (const auto& p : strategy_problems<double>()) check_online_matches_log_domain(p, 1e-12);
  // Pieces of 512 points: 1100 and 513 cross them; eps small enough for the log domain.
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    check_online_matches_log_domain(make_problem<double>(1, 513, 1100, 2, 3, 0.02, cost, 61), 1e-12);
    check_online_matches_log_domain(with_zero_weights(make_problem<double>(2, 9, 11, 2, 5, 0.3, cost, 41)), 1e-12);
  }
}

SK_TEST(online, float_matches_log_domain) {
  for (const auto& p : strategy_problems<float>()) check_online_matches_log_domain(p, 5e-5);
}

SK_TEST(online, thread_counts_agree_to_rounding) {
  // The column sums of the backward are per thread: bitwise per thread count, and equal
  // across counts to rounding.
  sktest::ThreadCountGuard guard;
  const Problem<double> p = make_problem<double>(2, 301, 517, 3, 4, 0.1, Cost::kEuclidean, 9);
  auto run = [&](int threads) {
    at::set_num_threads(threads);
    const ForwardResult<double> fw = sktest::run_forward(p, online<double, sinkhorn::cpu::sinkhorn_forward<double>>);
    return std::make_pair(fw, sktest::run_backward(p, fw, {1.0, 0.5}, online<double, sinkhorn::cpu::sinkhorn_backward<double>>));
  };
  const auto [f1, g1] = run(1);
  for (int threads : {2, 3}) {
    const auto [fk, gk] = run(threads);
    SK_CHECK(fk.W == f1.W && fk.u == f1.u && fk.v == f1.v) << threads << " threads, forward";
    for (const auto& [got, expected] : {std::make_pair(&gk.x, &g1.x), std::make_pair(&gk.y, &g1.y),
                                        std::make_pair(&gk.a, &g1.a), std::make_pair(&gk.b, &g1.b)})
      SK_CHECK(max_rel_diff(*got, *expected) <= 1e-12)
          << threads << " threads, backward: " << max_rel_diff(*got, *expected);
    const auto [fk2, gk2] = run(threads);
    SK_CHECK(gk2.x == gk.x && gk2.y == gk.y) << threads << " threads, repeated";
  }
}

namespace {

// A backward kernel run as the loss's self-term (x_is_y, no grad_y), or without grad_y.
template <typename T, typename Kernel>
auto as_self_term(Kernel backward) {
  return [backward](const SinkhornParams<T>& p) {
    SinkhornParams<T> q = p;
    q.x_is_y = true;
    q.grad_y = nullptr;
    backward(q);
  };
}

template <typename T, typename Kernel>
auto without_grad_y(Kernel backward) {
  return [backward](const SinkhornParams<T>& p) {
    SinkhornParams<T> q = p;
    q.grad_y = nullptr;
    backward(q);
  };
}

// For one backward: as a self-term, grad_x is the plain backward's grad_x + grad_y (to
// rounding); without grad_y, grad_y is left alone and the other three are unchanged.
template <typename Forward, typename Backward>
void check_self_term_and_skipped_grad_y(const Problem<double>& p, Forward forward, Backward backward,
                                        const std::string& name) {
  const std::string where = " (" + name + ", " + p.describe() + ")";
  Problem<double> self = p;  // y = x, beta = alpha
  self.n = self.m, self.y = self.x, self.b = self.a;
  const ForwardResult<double> fw = sktest::run_forward(self, forward);
  const std::vector<double> grad_cost(static_cast<std::size_t>(p.B), 0.7);
  const Grads<double> plain = sktest::run_backward(self, fw, grad_cost, backward);
  const Grads<double> merged = sktest::run_backward(self, fw, grad_cost, as_self_term<double>(backward));
  std::vector<double> both(plain.x.size());
  for (std::size_t k = 0; k < both.size(); ++k) both[k] = plain.x[k] + plain.y[k];
  SK_CHECK(max_rel_diff(merged.x, both) <= 1e-12) << "self-term grad_x" << where;
  SK_CHECK(std::all_of(merged.y.begin(), merged.y.end(), [](double v) { return std::isnan(v); }))
      << "self-term wrote grad_y" << where;
  // (C of a self-term is built as the symmetric matrix it is: equal to rounding.)
  SK_CHECK(max_rel_diff(merged.a, plain.a) <= 1e-12 && max_rel_diff(merged.b, plain.b) <= 1e-12)
      << "self-term weight gradients" << where;

  const ForwardResult<double> fw_xy = sktest::run_forward(p, forward);
  const Grads<double> all = sktest::run_backward(p, fw_xy, grad_cost, backward);
  const Grads<double> skipped = sktest::run_backward(p, fw_xy, grad_cost, without_grad_y<double>(backward));
  SK_CHECK(skipped.x == all.x && skipped.a == all.a && skipped.b == all.b) << "without grad_y" << where;
  SK_CHECK(std::all_of(skipped.y.begin(), skipped.y.end(), [](double v) { return std::isnan(v); }))
      << "grad_y written" << where;
}

}  // namespace

SK_TEST(strategies, self_term_sums_both_arguments_and_grad_y_can_be_skipped) {
  using namespace sinkhorn::cpu;
  // d = 3 takes the row kernels, d = 20 the matrix products; eps = 0.02 the log domain.
  for (int64_t d : {int64_t{3}, int64_t{20}}) {
    for (double eps : {0.5, 0.02}) {
      const auto p = make_problem<double>(2, 37, 29, d, 4, eps, Cost::kEuclidean, 70 + d);
      check_self_term_and_skipped_grad_y(p, with_cost_matrix<double, log_domain_forward<double>>,
                                         with_cost_matrix<double, log_domain_backward<double>>, "log domain");
      if (eps == 0.5) {
        check_self_term_and_skipped_grad_y(p, with_costs<double, scaling_forward<double>, true>,
                                           with_costs<double, scaling_backward<double>, true>, "scaling, stored");
        check_self_term_and_skipped_grad_y(p, with_costs<double, scaling_forward<double>, false>,
                                           with_costs<double, scaling_backward<double>, false>, "scaling, recomputed");
      }
      check_self_term_and_skipped_grad_y(p, online<double, sinkhorn_forward<double>>,
                                         online<double, sinkhorn_backward<double>>, "online");
    }
  }
}
