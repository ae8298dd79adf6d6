// Test problems and workspaces for the kernel tests: random point clouds and weights, and
// runners that call a forward or backward kernel on a workspace allocated the way csrc/ops
// allocates it. Outputs and scratch buffers are filled with NaN (a kernel that reads one
// before writing it shows up as a NaN result); grad_matrix and grad_matrix_t are zero.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/params.h"
#include "tests/harness.h"

namespace sktest {

using sinkhorn::Cost;
using sinkhorn::SinkhornParams;

inline const char* cost_name(Cost c) { return c == Cost::kSqEuclidean ? "sqeuclidean" : "euclidean"; }

template <typename T>
struct Problem {
  int64_t B = 0, m = 0, n = 0, d = 0;
  int L = 1;
  T eps = T(1);
  Cost cost = Cost::kSqEuclidean;
  std::vector<T> x, y, a, b;  // (B, m, d), (B, n, d), alpha (B, m), beta (B, n)

  std::string describe() const {
    return "B=" + std::to_string(B) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
           " d=" + std::to_string(d) + " L=" + std::to_string(L) + " eps=" + sktest::fmt(eps) +
           " " + cost_name(cost);
  }

  template <typename U>
  Problem<U> cast() const {
    Problem<U> p;
    p.B = B, p.m = m, p.n = n, p.d = d, p.L = L, p.eps = static_cast<U>(eps), p.cost = cost;
    p.x.assign(x.begin(), x.end());
    p.y.assign(y.begin(), y.end());
    p.a.assign(a.begin(), a.end());
    p.b.assign(b.begin(), b.end());
    return p;
  }
};

// Points uniform in [0, spread]^d (y shifted by 0.25), weights proportional to U[0.5, 1.5].
template <typename T>
Problem<T> make_problem(int64_t B, int64_t m, int64_t n, int64_t d, int L, double eps, Cost cost,
                        std::uint64_t seed, double spread = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Problem<T> p;
  p.B = B, p.m = m, p.n = n, p.d = d, p.L = L, p.eps = static_cast<T>(eps), p.cost = cost;
  for (int64_t k = 0; k < B * m * d; ++k) p.x.push_back(static_cast<T>(spread * unit(rng)));
  for (int64_t k = 0; k < B * n * d; ++k) p.y.push_back(static_cast<T>(spread * unit(rng) + 0.25));
  auto weights = [&](int64_t count, std::vector<T>& w) {
    for (int64_t bi = 0; bi < B; ++bi) {
      std::vector<double> raw(count);
      double total = 0;
      for (auto& r : raw) total += (r = 0.5 + unit(rng));
      for (double r : raw) w.push_back(static_cast<T>(r / total));
    }
  };
  weights(m, p.a);
  weights(n, p.b);
  return p;
}

template <typename T>
std::vector<T> nans(int64_t count) {
  return std::vector<T>(static_cast<std::size_t>(count), std::numeric_limits<T>::quiet_NaN());
}

template <typename T>
struct ForwardResult {
  std::vector<T> W, u, v;  // (B,), (B, L, m), (B, L, n)
};

template <typename T>
SinkhornParams<T> base_params(const Problem<T>& p) {
  SinkhornParams<T> sp;
  sp.x = p.x.data();
  sp.y = p.y.data();
  sp.x_weights = p.a.data();
  sp.y_weights = p.b.data();
  sp.batch = p.B, sp.m = p.m, sp.n = p.n, sp.d = p.d;
  sp.iters = p.L;
  sp.eps = p.eps;
  sp.cost = p.cost;
  return sp;
}

// Runs a forward kernel on a fresh workspace (scratch filled with NaN).
template <typename T, typename Kernel>
ForwardResult<T> run_forward(const Problem<T>& p, Kernel forward) {
  const int64_t B = p.B, m = p.m, n = p.n, L = p.L;
  ForwardResult<T> r{nans<T>(B), nans<T>(B * L * m), nans<T>(B * L * n)};
  std::vector<T> C = nans<T>(B * m * n), Ct = nans<T>(B * n * m);
  std::vector<T> f = nans<T>(B * m), g = nans<T>(B * n), column_cost = nans<T>(B * n);
  SinkhornParams<T> sp = base_params(p);
  sp.cost_out = r.W.data();
  sp.u_history = r.u.data();
  sp.v_history = r.v.data();
  sp.cost_matrix = C.data();
  sp.cost_matrix_t = Ct.data();
  sp.f = f.data();
  sp.g = g.data();
  sp.y_adjoint = column_cost.data();
  forward(sp);
  return r;
}

template <typename T>
struct Grads {
  std::vector<T> x, y, a, b;
};

// Runs a backward kernel on a fresh workspace that holds only the forward's histories.
template <typename T, typename Kernel>
Grads<T> run_backward(const Problem<T>& p, const ForwardResult<T>& fw,
                      const std::vector<T>& grad_cost, Kernel backward) {
  const int64_t B = p.B, m = p.m, n = p.n, d = p.d;
  Grads<T> gr{nans<T>(B * m * d), nans<T>(B * n * d), nans<T>(B * m), nans<T>(B * n)};
  std::vector<T> u = fw.u, v = fw.v;
  std::vector<T> C = nans<T>(B * m * n), Ct = nans<T>(B * n * m);
  std::vector<T> G(static_cast<std::size_t>(B * m * n), T(0));
  std::vector<T> Gt(static_cast<std::size_t>(B * n * m), T(0));
  std::vector<T> f = nans<T>(B * m), g = nans<T>(B * n), phi = nans<T>(B * m), psi = nans<T>(B * n);
  SinkhornParams<T> sp = base_params(p);
  sp.u_history = u.data();
  sp.v_history = v.data();
  sp.grad_cost = grad_cost.data();
  sp.grad_x = gr.x.data();
  sp.grad_y = gr.y.data();
  sp.grad_x_weights = gr.a.data();
  sp.grad_y_weights = gr.b.data();
  sp.cost_matrix = C.data();
  sp.cost_matrix_t = Ct.data();
  sp.grad_matrix = G.data();
  sp.grad_matrix_t = Gt.data();
  sp.f = f.data();
  sp.g = g.data();
  sp.x_adjoint = phi.data();
  sp.y_adjoint = psi.data();
  backward(sp);
  return gr;
}

template <typename T>
double max_abs(const std::vector<T>& a) {
  double m = 0;
  for (T v : a) m = std::max(m, std::fabs(static_cast<double>(v)));
  return m;
}

// max_k |a_k - b_k| / max(max_k |b_k|, floor); infinite if any is NaN.
template <typename T, typename U>
double max_rel_diff(const std::vector<T>& a, const std::vector<U>& b, double floor = 0) {
  double diff = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    const double e = std::fabs(static_cast<double>(a[k]) - static_cast<double>(b[k]));
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, e);
  }
  const double scale = std::max(max_abs(b), floor);
  return scale > 0 ? diff / scale : diff;
}

}  // namespace sktest
