#include "ops/sinkhorn.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

namespace sinkhorn::ops {
namespace {

Cost parse_cost(std::string_view cost) {
  if (cost == "sqeuclidean") return Cost::kSqEuclidean;
  if (cost == "euclidean") return Cost::kEuclidean;
  TORCH_CHECK_VALUE(false, "cost must be \"sqeuclidean\" or \"euclidean\", got \"", cost, "\"");
}

// Whether the backend is the online one; "auto" is resolved in Python (api.py).
bool parse_backend(const Kernels& kernels, std::string_view backend) {
  TORCH_CHECK_VALUE(backend == "tensorized" || backend == "online",
                    "backend must be \"tensorized\" or \"online\", got \"", backend, "\"");
  const bool online = backend == "online";
  TORCH_CHECK(!online || kernels.online_backend, "backend=\"online\" is not implemented on ",
              kernels.device_name, " yet: use backend=\"tensorized\"");
  return online;
}

void check_cloud(const at::Tensor& t, const char* name, const char* rows) {
  TORCH_CHECK_VALUE(t.dim() == 3, name, " must have shape (B, ", rows, ", d), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be a float32 or float64 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) >= 1, name, " must contain at least one problem (B >= 1), got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.size(1) >= 1, name, " must contain at least one point, got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.size(2) >= 1, name, " must have at least one feature, got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.size(1) <= std::numeric_limits<int>::max(), name, " has too many points (",
                    t.size(1), ")");
  TORCH_CHECK_VALUE(t.size(2) <= std::numeric_limits<int>::max(), name, " has too many features (",
                    t.size(2), ")");
}

// max_b |sum_k w[b, k] - 1| and whether every entry is >= 0 (NaN is not), read on the host
// without dispatching tensor ops: on the CPU these checks would otherwise cost more than a
// small problem's kernels.
template <typename T>
std::pair<bool, double> weight_stats_on_host(const at::Tensor& w) {
  const at::Tensor c = w.contiguous();
  const T* data = c.const_data_ptr<T>();
  const int64_t rows = c.size(0), count = c.size(1);
  bool nonnegative = true;
  double max_deviation = 0;
  for (int64_t b = 0; b < rows; ++b) {
    double total = 0;
    for (int64_t k = 0; k < count; ++k) {
      nonnegative = nonnegative && data[b * count + k] >= T(0);
      total += data[b * count + k];
    }
    max_deviation = std::max(max_deviation, std::fabs(total - 1));
  }
  return {nonnegative, max_deviation};
}

// Weights must be probability vectors: (B, rows), nonnegative, each summing to 1. On a GPU
// the values are read back (a device synchronisation), so only the forward checks them.
void check_weights(const at::Tensor& w, const char* name, const at::Tensor& cloud,
                   const char* rows, bool check_values) {
  TORCH_CHECK_TYPE(w.scalar_type() == cloud.scalar_type(), name, " must have the dtype of its ",
                   "points (", cloud.scalar_type(), "), got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.device() == cloud.device(), name, " must be on the device of its points (",
                    cloud.device(), "), got ", w.device());
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(0) == cloud.size(0) && w.size(1) == cloud.size(1),
                    name, " must have shape (B, ", rows, ") = (", cloud.size(0), ", ",
                    cloud.size(1), "), got ", w.sizes());
  if (!check_values) return;
  bool nonnegative;
  double max_deviation;
  if (w.is_cpu()) {
    std::tie(nonnegative, max_deviation) =
        w.scalar_type() == at::kDouble ? weight_stats_on_host<double>(w)
                                       : weight_stats_on_host<float>(w);
  } else {
    nonnegative = w.ge(0).all().item<bool>();
    max_deviation = (w.sum(1) - 1).abs().max().item<double>();
  }
  TORCH_CHECK_VALUE(nonnegative, name, " must be nonnegative and finite (a probability vector)");
  // Summation in float32 loses about 1e-7 * log2(m) relative; weights computed in half
  // precision and cast up need more room.
  const double tolerance = w.scalar_type() == at::kDouble ? 1e-8 : 1e-4;
  TORCH_CHECK_VALUE(max_deviation <= tolerance, name, " must sum to 1 (got a sum that is off by ",
                    max_deviation, ")");
}

void check_common(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                  const at::Tensor& y_weights, double eps, bool check_weight_values) {
  check_cloud(x, "x", "m");
  check_cloud(y, "y", "n");
  TORCH_CHECK_TYPE(y.scalar_type() == x.scalar_type(), "y must have the dtype of x (",
                   x.scalar_type(), "), got ", y.scalar_type());
  TORCH_CHECK_VALUE(y.device() == x.device(), "y must be on the device of x (", x.device(),
                    "), got ", y.device());
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), "x and y must have the same batch size, got ",
                    x.size(0), " and ", y.size(0));
  TORCH_CHECK_VALUE(x.size(2) == y.size(2), "x and y must have the same feature dimension d, got ",
                    x.size(2), " and ", y.size(2));
  check_weights(x_weights, "x_weights", x, "m", check_weight_values);
  check_weights(y_weights, "y_weights", y, "n", check_weight_values);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "eps must be a finite number > 0, got ", eps);
}

void check_iters(int64_t iters) {
  TORCH_CHECK_VALUE(iters >= 1 && iters <= std::numeric_limits<int>::max(),
                    "iters must be an integer >= 1, got ", iters);
}

// The backward's incoming gradient (B,) and the histories (B, L, m), (B, L, n) of one problem;
// returns L.
int64_t check_backward_inputs(const at::Tensor& x, const at::Tensor& grad, const char* grad_name,
                              const at::Tensor& u, const char* u_name, const at::Tensor& v,
                              const char* v_name, int64_t m, int64_t n) {
  const int64_t B = x.size(0);
  const int64_t iters = u.dim() == 3 ? u.size(1) : 0;
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == B, grad_name, " must have shape (B,) = (",
                    B, ",), got ", grad.sizes());
  TORCH_CHECK_VALUE(u.dim() == 3 && u.size(0) == B && iters >= 1 && u.size(2) == m, u_name,
                    " must have shape (B, L, m) = (", B, ", L, ", m, "), got ", u.sizes());
  TORCH_CHECK_VALUE(v.dim() == 3 && v.size(0) == B && v.size(1) == iters && v.size(2) == n,
                    v_name, " must have shape (B, L, n) = (", B, ", ", iters, ", ", n, "), got ",
                    v.sizes());
  for (const at::Tensor* t : {&grad, &u, &v}) {
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), grad_name, ", ", u_name, " and ",
                     v_name, " must have the dtype of x (", x.scalar_type(), "), got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == x.device(), grad_name, ", ", u_name, " and ", v_name,
                      " must be on the device of x (", x.device(), "), got ", t->device());
  }
  return iters;
}

// One W_L problem: contiguous inputs, and its histories (outputs of the forward, inputs of
// the backward).
struct Problem {
  at::Tensor x, y, x_weights, y_weights;
  at::Tensor u_history, v_history;
  at::Tensor kept_costs;     // C (B, m, n) kept for the forward and the backward, if defined
  bool x_is_y = false;       // a self-term (SinkhornParams::x_is_y)
  bool needs_grad_y = true;  // the backward computes grad_y (unless x_is_y)

  int64_t batch() const { return x.size(0); }
  int64_t m() const { return x.size(1); }
  int64_t n() const { return y.size(1); }
};

Problem make_problem(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                     const at::Tensor& y_weights) {
  return {x.contiguous(), y.contiguous(), x_weights.contiguous(), y_weights.contiguous()};
}

template <typename T>
SinkhornParams<T> make_params(const Problem& problem, double eps, int64_t iters, Cost cost,
                              bool online) {
  SinkhornParams<T> p;
  p.x = problem.x.const_data_ptr<T>();
  p.y = problem.y.const_data_ptr<T>();
  p.x_weights = problem.x_weights.const_data_ptr<T>();
  p.y_weights = problem.y_weights.const_data_ptr<T>();
  p.batch = problem.batch();
  p.m = problem.m();
  p.n = problem.n();
  p.d = problem.x.size(2);
  p.iters = static_cast<int>(iters);
  p.eps = static_cast<T>(eps);
  // The kernels divide by eps in T: it must stay a normal number there.
  TORCH_CHECK_VALUE(std::isfinite(p.eps) && p.eps >= std::numeric_limits<T>::min() &&
                        std::isfinite(T(1) / p.eps),
                    "eps = ", eps, " is out of the range of ", problem.x.scalar_type(), " (",
                    std::numeric_limits<T>::min(), " to ", std::numeric_limits<T>::max(), ")");
  p.cost = cost;
  p.online = online;
  p.x_is_y = problem.x_is_y;
  p.u_history = problem.u_history.data_ptr<T>();
  p.v_history = problem.v_history.data_ptr<T>();
  if (problem.kept_costs.defined()) p.kept_costs = problem.kept_costs.data_ptr<T>();
  return p;
}

// Runs fn(k) for the k < count independent problems. Where the kernels allow it and the
// problems are small (2^18 costs or fewer each, where a problem's passes gain less from more
// threads than problems side by side do), as many at once as there are host threads, largest
// first; those left over from the last full round one after another, each on all threads.
// (Where BLAS products would dominate, at large d, the kept costs are built before, on all
// threads.) The loss's three problems on two threads run as W(x, y) beside W(x, x), then
// W(y, y) on both.
template <typename Fn>
void for_each_problem(const Kernels& kernels, const std::vector<Problem>& problems, const Fn& fn) {
  const int64_t count = static_cast<int64_t>(problems.size());
  std::vector<int64_t> size(count);
  for (int64_t k = 0; k < count; ++k)
    size[k] = problems[k].batch() * problems[k].m() * problems[k].n();
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return size[a] > size[b]; });
  const int64_t workers = std::min<int64_t>(count, at::get_num_threads());
  const bool at_once = kernels.concurrent_problems && workers >= 2 &&
                       size[order[0]] <= (int64_t{1} << 18);
  const int64_t concurrent = at_once ? count / workers * workers : 0;
  if (concurrent > 0) {
    at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w)  // one problem of each round
        for (int64_t k = w; k < concurrent; k += workers) fn(order[k]);
    });
  }
  for (int64_t k = concurrent; k < count; ++k) fn(order[k]);
}

// Whether the kernels keep the costs of all these problems (Kernels::keeps_costs).
bool keeps_costs(const Kernels& kernels, const std::vector<Problem>& problems, bool online) {
  if (online || kernels.keeps_costs == nullptr) return false;
  return std::all_of(problems.begin(), problems.end(), [&](const Problem& pr) {
    return kernels.keeps_costs(pr.batch(), pr.m(), pr.n(), pr.x.size(2));
  });
}

// The size of the problems' kept costs: C (B, m, n) of each, one after the other.
int64_t kept_costs_size(const std::vector<Problem>& problems) {
  int64_t size = 0;
  for (const Problem& pr : problems) size += pr.batch() * pr.m() * pr.n();
  return size;
}

// Gives each problem its C (B, m, n), a view of the flat kept costs.
void attach_kept_costs(std::vector<Problem>& problems, const at::Tensor& kept_costs) {
  int64_t offset = 0;
  for (Problem& pr : problems) {
    const int64_t size = pr.batch() * pr.m() * pr.n();
    pr.kept_costs = kept_costs.narrow(0, offset, size).view({pr.batch(), pr.m(), pr.n()});
    offset += size;
  }
}

// The forward's kept costs: allocated and attached where the kernels keep them, empty (0,)
// elsewhere.
at::Tensor make_kept_costs(const Kernels& kernels, std::vector<Problem>& problems, bool online) {
  const bool kept = keeps_costs(kernels, problems, online);
  at::Tensor kept_costs = at::empty({kept ? kept_costs_size(problems) : 0},
                                    problems[0].x.options());
  if (kept) attach_kept_costs(problems, kept_costs);
  return kept_costs;
}

// The backward's kept costs, as the forward returned them: attached if not empty.
void use_kept_costs(const Kernels& kernels, std::vector<Problem>& problems,
                    const at::Tensor& kept_costs, bool online) {
  if (kept_costs.numel() == 0) return;  // not kept: the kernels build C again
  const at::Tensor& x = problems[0].x;
  const int64_t size = kept_costs_size(problems);
  TORCH_CHECK_VALUE(keeps_costs(kernels, problems, online),
                    "kept_costs must be empty for these inputs (the forward keeps no costs for "
                    "them), got shape ", kept_costs.sizes());
  TORCH_CHECK_VALUE(kept_costs.dim() == 1 && kept_costs.size(0) == size,
                    "kept_costs must be the forward's, of shape (", size, ",), got ",
                    kept_costs.sizes());
  TORCH_CHECK_TYPE(kept_costs.scalar_type() == x.scalar_type(),
                   "kept_costs must have the dtype of x (", x.scalar_type(), "), got ",
                   kept_costs.scalar_type());
  TORCH_CHECK_VALUE(kept_costs.device() == x.device(), "kept_costs must be on the device of x (",
                    x.device(), "), got ", kept_costs.device());
  attach_kept_costs(problems, kept_costs.contiguous());
}

// Hands out consecutive pieces of one workspace allocation.
template <typename T>
struct Carve {
  T* next;
  T* operator()(int64_t size) { return std::exchange(next, next + size); }
};

// Runs the forward of every problem; fills their histories and returns their W_L (B,).
std::vector<at::Tensor> run_forward(const Kernels& kernels, std::vector<Problem>& problems,
                                    double eps, int64_t iters, Cost cost, bool online) {
  std::vector<at::Tensor> costs;
  for (Problem& pr : problems) {
    const auto opts = pr.x.options();
    costs.push_back(at::empty({pr.batch()}, opts));
    pr.u_history = at::empty({pr.batch(), iters, pr.m()}, opts);
    pr.v_history = at::empty({pr.batch(), iters, pr.n()}, opts);
  }
  AT_DISPATCH_FLOATING_TYPES(problems[0].x.scalar_type(), "sinkhorn_forward", [&] {
    // Kept costs first, each on all threads: where they dominate (BLAS products at large d),
    // the problems at once would leave a thread idle while another builds two.
    for (const Problem& pr : problems)
      if (pr.kept_costs.defined())
        kernels.of<scalar_t>().build_costs(make_params<scalar_t>(pr, eps, iters, cost, online));
    for_each_problem(kernels, problems, [&](int64_t k) {
      const Problem& pr = problems[k];
      const int64_t B = pr.batch(), m = pr.m(), n = pr.n();
      auto p = make_params<scalar_t>(pr, eps, iters, cost, online);
      p.cost_out = costs[k].mutable_data_ptr<scalar_t>();
      at::Tensor workspace;
      if (kernels.needs_workspace) {  // C and C^T (not online), f, g, the column costs
        const int64_t matrices = online ? 0 : 2 * B * m * n;
        workspace = at::empty({matrices + B * m + 2 * B * n}, pr.x.options());
        Carve<scalar_t> take{workspace.mutable_data_ptr<scalar_t>()};
        if (!online) {
          p.cost_matrix = take(B * m * n);
          p.cost_matrix_t = take(B * n * m);
        }
        p.f = take(B * m);
        p.g = take(B * n);
        p.y_adjoint = take(B * n);
      }
      kernels.of<scalar_t>().forward(p);
    });
  });
  return costs;
}

struct Gradients {
  at::Tensor x, y, x_weights, y_weights;
};

// Runs the backward of every problem, with incoming gradients grad_costs[k] (B,).
std::vector<Gradients> run_backward(const Kernels& kernels, const std::vector<Problem>& problems,
                                    const std::vector<at::Tensor>& grad_costs, double eps,
                                    int64_t iters, Cost cost, bool online) {
  std::vector<Gradients> grads;
  for (const Problem& pr : problems) {
    const bool grad_y = pr.needs_grad_y && !pr.x_is_y;
    grads.push_back({at::empty_like(pr.x), grad_y ? at::empty_like(pr.y) : at::Tensor(),
                     at::empty_like(pr.x_weights), at::empty_like(pr.y_weights)});
  }
  AT_DISPATCH_FLOATING_TYPES(problems[0].x.scalar_type(), "sinkhorn_backward", [&] {
    for_each_problem(kernels, problems, [&](int64_t k) {
      const Problem& pr = problems[k];
      const int64_t B = pr.batch(), m = pr.m(), n = pr.n();
      auto p = make_params<scalar_t>(pr, eps, iters, cost, online);
      p.grad_cost = grad_costs[k].const_data_ptr<scalar_t>();
      p.grad_x = grads[k].x.mutable_data_ptr<scalar_t>();
      p.grad_y = grads[k].y.defined() ? grads[k].y.mutable_data_ptr<scalar_t>() : nullptr;
      p.grad_x_weights = grads[k].x_weights.mutable_data_ptr<scalar_t>();
      p.grad_y_weights = grads[k].y_weights.mutable_data_ptr<scalar_t>();
      at::Tensor workspace, grad_matrices;
      if (kernels.needs_workspace) {  // C, C^T and the zeroed gradient matrices (not online);
                                      // f, g, phi, psi
        const int64_t matrices = online ? 0 : 2 * B * m * n;
        workspace = at::empty({matrices + 2 * B * m + 2 * B * n}, pr.x.options());
        Carve<scalar_t> take{workspace.mutable_data_ptr<scalar_t>()};
        if (!online) {
          p.cost_matrix = take(B * m * n);
          p.cost_matrix_t = take(B * n * m);
          grad_matrices = at::zeros({2 * B * m * n}, pr.x.options());
          p.grad_matrix = grad_matrices.mutable_data_ptr<scalar_t>();
          p.grad_matrix_t = p.grad_matrix + B * m * n;
        }
        p.f = take(B * m);
        p.g = take(B * n);
        p.x_adjoint = take(B * m);
        p.y_adjoint = take(B * n);
      }
      kernels.of<scalar_t>().backward(p);
    });
  });
  return grads;
}

// The three problems of the loss: W(x, y), W(x, x), W(y, y).
std::vector<Problem> loss_problems(const at::Tensor& x, const at::Tensor& y,
                                   const at::Tensor& x_weights, const at::Tensor& y_weights) {
  const Problem xy = make_problem(x, y, x_weights, y_weights);
  return {xy, {xy.x, xy.x, xy.x_weights, xy.x_weights, {}, {}, {}, /*x_is_y=*/true},
          {xy.y, xy.y, xy.y_weights, xy.y_weights, {}, {}, {}, /*x_is_y=*/true}};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost(
    const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, double eps, int64_t iters,
    std::string_view cost_name, std::string_view backend) {
  check_common(x, y, x_weights, y_weights, eps, /*check_weight_values=*/true);
  check_iters(iters);
  const Cost cost = parse_cost(cost_name);
  const bool online = parse_backend(kernels, backend);
  std::vector<Problem> problems = {make_problem(x, y, x_weights, y_weights)};
  at::Tensor kept_costs = make_kept_costs(kernels, problems, online);
  const std::vector<at::Tensor> costs = run_forward(kernels, problems, eps, iters, cost, online);
  return {costs[0], problems[0].u_history, problems[0].v_history, kept_costs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost_backward(
    const Kernels& kernels, const at::Tensor& grad_cost, const at::Tensor& x,
    const at::Tensor& y, const at::Tensor& x_weights, const at::Tensor& y_weights,
    const at::Tensor& u_history, const at::Tensor& v_history, const at::Tensor& kept_costs,
    double eps, std::string_view cost_name, std::string_view backend) {
  check_common(x, y, x_weights, y_weights, eps, /*check_weight_values=*/false);
  const Cost cost = parse_cost(cost_name);
  const bool online = parse_backend(kernels, backend);
  const int64_t iters = check_backward_inputs(x, grad_cost, "grad_cost", u_history, "u_history",
                                              v_history, "v_history", x.size(1), y.size(1));
  std::vector<Problem> problems = {make_problem(x, y, x_weights, y_weights)};
  problems[0].u_history = u_history.contiguous();
  problems[0].v_history = v_history.contiguous();
  use_kept_costs(kernels, problems, kept_costs, online);
  const Gradients g =
      run_backward(kernels, problems, {grad_cost.contiguous()}, eps, iters, cost, online)[0];
  return {g.x, g.y, g.x_weights, g.y_weights};
}

LossOutputs sinkhorn_loss(const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
                          const at::Tensor& x_weights, const at::Tensor& y_weights, double eps,
                          int64_t iters, std::string_view cost_name, std::string_view backend) {
  check_common(x, y, x_weights, y_weights, eps, /*check_weight_values=*/true);
  check_iters(iters);
  const Cost cost = parse_cost(cost_name);
  const bool online = parse_backend(kernels, backend);
  std::vector<Problem> problems = loss_problems(x, y, x_weights, y_weights);
  at::Tensor kept_costs = make_kept_costs(kernels, problems, online);
  const std::vector<at::Tensor> w = run_forward(kernels, problems, eps, iters, cost, online);
  return {2 * w[0] - w[1] - w[2], problems[0].u_history, problems[0].v_history,
          problems[1].u_history,  problems[1].v_history, problems[2].u_history,
          problems[2].v_history,  kept_costs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_loss_backward(
    const Kernels& kernels, const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& u_xy,
    const at::Tensor& v_xy, const at::Tensor& u_xx, const at::Tensor& v_xx,
    const at::Tensor& u_yy, const at::Tensor& v_yy, const at::Tensor& kept_costs,
    std::array<bool, 4> output_mask, double eps, std::string_view cost_name,
    std::string_view backend) {
  check_common(x, y, x_weights, y_weights, eps, /*check_weight_values=*/false);
  const Cost cost = parse_cost(cost_name);
  const bool online = parse_backend(kernels, backend);
  const int64_t m = x.size(1), n = y.size(1);
  const int64_t iters =
      check_backward_inputs(x, grad_loss, "grad_loss", u_xy, "u_xy", v_xy, "v_xy", m, n);
  const int64_t iters_xx =
      check_backward_inputs(x, grad_loss, "grad_loss", u_xx, "u_xx", v_xx, "v_xx", m, m);
  const int64_t iters_yy =
      check_backward_inputs(x, grad_loss, "grad_loss", u_yy, "u_yy", v_yy, "v_yy", n, n);
  TORCH_CHECK_VALUE(iters_xx == iters && iters_yy == iters,
                    "u_xy, u_xx and u_yy must have the same number of iterations L, got ", iters,
                    ", ", iters_xx, " and ", iters_yy);
  std::vector<Problem> all = loss_problems(x, y, x_weights, y_weights);
  use_kept_costs(kernels, all, kept_costs, online);
  const at::Tensor* histories[] = {&u_xy, &v_xy, &u_xx, &v_xx, &u_yy, &v_yy};
  const at::Tensor grad = grad_loss.contiguous();
  const at::Tensor grad_costs[] = {2 * grad, -grad, -grad};
  // W(x, x) only matters for the gradients of x and its weights, W(y, y) for those of y.
  const bool wanted[] = {true, output_mask[0] || output_mask[2], output_mask[1] || output_mask[3]};
  std::vector<Problem> problems;
  std::vector<at::Tensor> problem_grads;
  std::vector<int> which;
  for (int k = 0; k < 3; ++k) {
    if (!wanted[k]) continue;
    problems.push_back(all[k]);
    problems.back().needs_grad_y = k != 0 || output_mask[1];
    problems.back().u_history = histories[2 * k]->contiguous();
    problems.back().v_history = histories[2 * k + 1]->contiguous();
    problem_grads.push_back(grad_costs[k]);
    which.push_back(k);
  }
  const std::vector<Gradients> g =
      run_backward(kernels, problems, problem_grads, eps, iters, cost, online);
  Gradients total = g[0];  // W(x, y); its own tensors, so added to in place
  for (std::size_t k = 1; k < g.size(); ++k) {
    // W(x, x) and W(y, y) depend on their cloud and weights through both of their arguments
    // (the kernels sum the cloud's two, x_is_y).
    at::Tensor& cloud = which[k] == 1 ? total.x : total.y;
    at::Tensor& weights = which[k] == 1 ? total.x_weights : total.y_weights;
    cloud.add_(g[k].x);
    weights.add_(g[k].x_weights).add_(g[k].y_weights);
  }
  // Those not asked for lack their self-term (and grad_y its contraction): they are returned
  // as zeros.
  std::array<at::Tensor*, 4> outputs = {&total.x, &total.y, &total.x_weights, &total.y_weights};
  const std::array<const at::Tensor*, 4> inputs = {&x, &y, &x_weights, &y_weights};
  for (int k = 0; k < 4; ++k)
    if (!output_mask[k]) *outputs[k] = at::zeros(inputs[k]->sizes(), inputs[k]->options());
  return {total.x, total.y, total.x_weights, total.y_weights};
}

}  // namespace sinkhorn::ops

TORCH_LIBRARY(sinkhorn_ext, m) {
  m.def(
      "sinkhorn_cost(Tensor x, Tensor y, Tensor x_weights, Tensor y_weights, float eps, "
      "int iters, str cost, str backend=\"tensorized\") -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "sinkhorn_cost_backward(Tensor grad_cost, Tensor x, Tensor y, Tensor x_weights, "
      "Tensor y_weights, Tensor u_history, Tensor v_history, Tensor kept_costs, float eps, "
      "str cost, str backend=\"tensorized\") -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "sinkhorn_loss(Tensor x, Tensor y, Tensor x_weights, Tensor y_weights, float eps, "
      "int iters, str cost, str backend=\"tensorized\") "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "sinkhorn_loss_backward(Tensor grad_loss, Tensor x, Tensor y, Tensor x_weights, "
      "Tensor y_weights, Tensor u_xy, Tensor v_xy, Tensor u_xx, Tensor v_xx, Tensor u_yy, "
      "Tensor v_yy, Tensor kept_costs, bool[4] output_mask, float eps, str cost, "
      "str backend=\"tensorized\") -> (Tensor, Tensor, Tensor, Tensor)");
}
