#include "ops/sinkhorn.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
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

// sizes as Python writes a shape: (5,), (2, 4).
std::string shape_of(at::IntArrayRef sizes) {
  std::string out = "(";
  for (std::size_t k = 0; k < sizes.size(); ++k)
    out += (k ? ", " : "") + std::to_string(sizes[k]);
  return out + (sizes.size() == 1 ? ",)" : ")");
}

// A cloud (m, d), or a batch of them (B, m, d).
void check_cloud(const at::Tensor& t, const char* name, const char* rows) {
  TORCH_CHECK_VALUE(t.dim() == 2 || t.dim() == 3, name, " must have shape (", rows, ", d) or (B, ",
                    rows, ", d), got ", shape_of(t.sizes()));
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be a float32 or float64 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2 || t.size(0) >= 1, name,
                    " must contain at least one problem (B >= 1), got shape ", shape_of(t.sizes()));
  TORCH_CHECK_VALUE(t.size(-2) >= 1, name, " must contain at least one point, got shape ",
                    shape_of(t.sizes()));
  TORCH_CHECK_VALUE(t.size(-1) >= 1, name, " must have at least one feature, got shape ",
                    shape_of(t.sizes()));
  TORCH_CHECK_VALUE(t.size(-2) <= std::numeric_limits<int>::max(), name,
                    " has too many points (", t.size(-2), ")");
  TORCH_CHECK_VALUE(t.size(-1) <= std::numeric_limits<int>::max(), name,
                    " has too many features (", t.size(-1), ")");
}

// max_b |sum_k w[b, k] - 1| over the rows of count weights of w, and whether every entry is
// >= 0 (NaN is not), read on the host without dispatching tensor ops: on the CPU these checks
// would otherwise cost more than a small problem's kernels.
template <typename T>
std::pair<bool, double> weight_stats_on_host(const at::Tensor& w, int64_t count) {
  const at::Tensor c = w.contiguous();
  const T* data = c.const_data_ptr<T>();
  const int64_t rows = c.numel() / count;
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

// Weights, where given, must be probability vectors, one per cloud of the batch: of the shape
// of their points without the last dimension, nonnegative, each summing to 1. On a GPU the
// values are read back (a device synchronisation).
void check_weights(const std::optional<at::Tensor>& weights, const char* name,
                   const at::Tensor& cloud) {
  if (!weights.has_value()) return;
  const at::Tensor& w = *weights;
  TORCH_CHECK_TYPE(w.scalar_type() == cloud.scalar_type(), name, " must have the dtype of its ",
                   "points (", cloud.scalar_type(), "), got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.device() == cloud.device(), name, " must be on the device of its points (",
                    cloud.device(), "), got ", w.device());
  const at::IntArrayRef expected = cloud.sizes().slice(0, cloud.dim() - 1);
  TORCH_CHECK_VALUE(w.sizes() == expected, name, " must have shape ", shape_of(expected),
                    ", got ", shape_of(w.sizes()));
  const int64_t count = cloud.size(-2);
  bool nonnegative;
  double max_deviation;
  if (w.is_cpu()) {
    std::tie(nonnegative, max_deviation) =
        w.scalar_type() == at::kDouble ? weight_stats_on_host<double>(w, count)
                                       : weight_stats_on_host<float>(w, count);
  } else {
    nonnegative = w.ge(0).all().item<bool>();
    max_deviation = (w.reshape({-1, count}).sum(1) - 1).abs().max().item<double>();
  }
  TORCH_CHECK_VALUE(nonnegative, name, " must be nonnegative and finite (a probability vector)");
  // Summation in float32 loses about 1e-7 * log2(m) relative; weights computed in half
  // precision and cast up need more room.
  const double tolerance = w.scalar_type() == at::kDouble ? 1e-8 : 1e-4;
  TORCH_CHECK_VALUE(max_deviation <= tolerance, name, " must sum to 1 (got a sum that is off by ",
                    max_deviation, ")");
}

void check_common(const at::Tensor& x, const at::Tensor& y,
                  const std::optional<at::Tensor>& x_weights,
                  const std::optional<at::Tensor>& y_weights, double eps) {
  check_cloud(x, "x", "m");
  check_cloud(y, "y", "n");
  TORCH_CHECK_VALUE(x.dim() == y.dim(), "x and y must both be batched (3-D) or both unbatched ",
                    "(2-D), got shapes ", shape_of(x.sizes()), " and ", shape_of(y.sizes()));
  TORCH_CHECK_TYPE(y.scalar_type() == x.scalar_type(), "y must have the dtype of x (",
                   x.scalar_type(), "), got ", y.scalar_type());
  TORCH_CHECK_VALUE(y.device() == x.device(), "y must be on the device of x (", x.device(),
                    "), got ", y.device());
  TORCH_CHECK_VALUE(x.dim() == 2 || x.size(0) == y.size(0),
                    "x and y must have the same batch size, got ", x.size(0), " and ", y.size(0));
  TORCH_CHECK_VALUE(x.size(-1) == y.size(-1),
                    "x and y must have the same feature dimension d, got ", x.size(-1), " and ",
                    y.size(-1));
  check_weights(x_weights, "x_weights", x);
  check_weights(y_weights, "y_weights", y);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "eps must be a finite number > 0, got ", eps);
}

void check_iters(int64_t iters) {
  TORCH_CHECK_VALUE(iters >= 1 && iters <= std::numeric_limits<int>::max(),
                    "iters must be an integer >= 1, got ", iters);
}

// One W_L problem: contiguous inputs, and where its arrays of one call lie in the call's
// block (run_problems): its histories (written by the forward, read by the backward) and the
// costs kept for both, if any.
struct Problem {
  at::Tensor x, y, x_weights, y_weights;
  int64_t u_history = 0, v_history = 0;  // offsets in the block, in elements
  int64_t kept_costs = -1;               // C (B, m, n), at this offset; -1: not kept
  bool kept_costs_first = false;  // built by KernelPair::build_costs (KeptCosts::kBuiltFirst)
  bool batched = true;       // the caller gave (B, m, d) clouds, not (m, d)
  bool x_is_y = false;       // a self-term (SinkhornParams::x_is_y)
  bool needs_grad = false;   // the backward runs after the forward
  bool needs_grad_y = true;  // the backward computes grad_y (unless x_is_y)
  double grad_factor = 1;    // the incoming gradient of its W_L: 2, -1, -1 in the loss

  int64_t batch() const { return x.size(0); }
  int64_t m() const { return x.size(1); }
  int64_t n() const { return y.size(1); }
  // Sizes of the batched form as the caller gave them: without B for unbatched input.
  at::IntArrayRef as_given(at::IntArrayRef sizes) const {
    return batched ? sizes : sizes.slice(1);
  }
};

// W(x, y), with the backward that grad_mask asks for: the clouds (B, m, d), their weights
// (B, m), uniform where not given.
Problem make_problem(const at::Tensor& x, const at::Tensor& y,
                     const std::optional<at::Tensor>& x_weights,
                     const std::optional<at::Tensor>& y_weights, std::array<bool, 4> grad_mask) {
  const bool batched = x.dim() == 3;
  auto batch_of = [&](const at::Tensor& t) { return (batched ? t : t.unsqueeze(0)).contiguous(); };
  auto weights_of = [&](const std::optional<at::Tensor>& w, const at::Tensor& cloud) {
    if (w.has_value()) return batch_of(*w);
    return at::full({cloud.size(0), cloud.size(1)}, 1.0 / static_cast<double>(cloud.size(1)),
                    cloud.options());
  };
  const at::Tensor x_batch = batch_of(x), y_batch = batch_of(y);
  Problem pr{x_batch, y_batch, weights_of(x_weights, x_batch), weights_of(y_weights, y_batch)};
  pr.batched = batched;
  pr.needs_grad = grad_mask[0] || grad_mask[1] || grad_mask[2] || grad_mask[3];
  pr.needs_grad_y = grad_mask[1];
  return pr;
}

template <typename T>
SinkhornParams<T> make_params(const Problem& problem, T* block, double eps, int64_t iters,
                              Cost cost, bool online) {
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
  p.u_history = block + problem.u_history;
  p.v_history = block + problem.v_history;
  if (problem.kept_costs >= 0) p.kept_costs = block + problem.kept_costs;
  p.kept_costs_built = problem.kept_costs_first;
  return p;
}

// Runs fn(k) for the k < count independent problems. Where the kernels allow it and the
// problems are small (2^18 costs or fewer each, where a problem's passes gain less from more
// threads than problems side by side do), at once, a problem per host thread: each thread
// takes the next problem, most work first (a backward costs about twice its forward), when
// it is done with its last. Of those left over from the last full round, the small ones
// (kQueuedCostsMax) join in, on the first thread free: split over all threads, they would
// meet at a barrier every iteration, which costs them more than they gain (measured on two
// threads, up to m = n = 256); the larger ones run after, one after another, each on all
// threads. A small one left over has ahead(k) run first, by the thread that takes the
// second task, and fn(k) waits for it: what of its work can go before its iterations, done
// by a thread that would otherwise wait at the end for the last problem. (Where BLAS
// products would dominate, at large d, the kept costs are built before, on all threads.) The
// loss's three problems at m = n = 200 on two threads, with the gradient of x, run as W(x, y)
// beside the K of W(y, y), then W(x, x), and W(y, y) after the first done.
constexpr int64_t kQueuedCostsMax = int64_t{1} << 16;

template <typename Ahead, typename Fn>
void for_each_problem(const Kernels& kernels, const std::vector<Problem>& problems,
                      const Ahead& ahead, const Fn& fn) {
  const int64_t count = static_cast<int64_t>(problems.size());
  std::vector<int64_t> size(count), work(count);
  for (int64_t k = 0; k < count; ++k) {
    size[k] = problems[k].batch() * problems[k].m() * problems[k].n();
    work[k] = size[k] * (problems[k].needs_grad ? 3 : 1);
  }
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return work[a] > work[b]; });
  const int64_t workers = std::min<int64_t>(count, at::get_num_threads());
  const bool at_once = kernels.concurrent_problems && workers >= 2 &&
                       *std::max_element(size.begin(), size.end()) <= (int64_t{1} << 18);
  const int64_t full_rounds = at_once ? count / workers * workers : 0;
  int64_t queued = full_rounds;
  while (at_once && queued < count && size[order[queued]] <= kQueuedCostsMax) ++queued;
  if (queued > 0) {
    // The tasks in the order taken: the first problem, the aheads of those left over, then
    // the other problems. A task's index: k for fn(order[k]), count + k for its ahead.
    std::vector<int64_t> tasks = {0};
    for (int64_t k = full_rounds; k < queued; ++k) tasks.push_back(count + k);
    for (int64_t k = 1; k < queued; ++k) tasks.push_back(k);
    std::vector<std::atomic<bool>> ready(count);
    for (int64_t k = 0; k < queued; ++k) ready[k] = k < full_rounds;
    std::atomic<int64_t> next{0};
    const int64_t task_count = static_cast<int64_t>(tasks.size());
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      for (int64_t t = next++; t < task_count; t = next++) {
        const int64_t k = tasks[t] % count;
        if (tasks[t] >= count) {
          // Ready even where ahead throws: the exception ends the call after the others.
          struct Done {
            std::atomic<bool>& flag;
            ~Done() { flag.store(true, std::memory_order_release); }
          } done{ready[k]};
          ahead(order[k]);
          continue;
        }
        while (!ready[k].load(std::memory_order_acquire)) std::this_thread::yield();
        fn(order[k]);
      }
    });
  }
  for (int64_t k = queued; k < count; ++k) fn(order[k]);
}

// Hands out consecutive pieces of one workspace allocation.
template <typename T>
struct Carve {
  T* next;
  T* operator()(int64_t size) { return std::exchange(next, next + size); }
};

struct Gradients {
  at::Tensor x, y, x_weights, y_weights;
};

// Runs every problem: its forward, which writes its histories, then, where it needs_grad, its
// backward, with incoming gradient grad_factor, on the same thread; both read its C where the
// kernels keep it (Kernels::keeps_costs), built first or by the forward, and the backward the
// forward's K where they share it. Returns each W_L (B,) and the gradients of those with a
// backward.
std::pair<std::vector<at::Tensor>, std::vector<Gradients>> run_problems(
    const Kernels& kernels, std::vector<Problem>& problems, double eps, int64_t iters, Cost cost,
    bool online) {
  auto scratch = [&](at::IntArrayRef sizes, const at::TensorOptions& options) {
    return kernels.scratch ? kernels.scratch(sizes, options) : at::empty(sizes, options);
  };
  std::vector<at::Tensor> costs, grad_costs;
  std::vector<Gradients> grads;
  // The arrays that live for this call alone, every problem's, in one block (one allocation,
  // where they were one each), each at a multiple of 16 elements.
  int64_t block_size = 0;
  auto reserve = [&](int64_t size) {
    constexpr int64_t kAlign = 64 / sizeof(float);
    return std::exchange(block_size, block_size + (size + kAlign - 1) / kAlign * kAlign);
  };
  for (Problem& pr : problems) {
    const auto opts = pr.x.options();
    const KeptCosts kept =
        online || kernels.keeps_costs == nullptr
            ? KeptCosts::kNone
            : kernels.keeps_costs(pr.batch(), pr.m(), pr.n(), pr.x.size(2), pr.needs_grad);
    if (kept != KeptCosts::kNone) pr.kept_costs = reserve(pr.batch() * pr.m() * pr.n());
    pr.kept_costs_first = kept == KeptCosts::kBuiltFirst;
    pr.u_history = reserve(pr.batch() * iters * pr.m());
    pr.v_history = reserve(pr.batch() * iters * pr.n());
    costs.push_back(at::empty(pr.as_given({pr.batch()}), opts));
    if (!pr.needs_grad) {
      grad_costs.emplace_back();
      grads.emplace_back();
      continue;
    }
    grad_costs.push_back(at::full({pr.batch()}, pr.grad_factor, opts));
    const bool grad_y = pr.needs_grad_y && !pr.x_is_y;
    auto given = [&](const at::Tensor& t) { return at::empty(pr.as_given(t.sizes()), opts); };
    grads.push_back({given(pr.x), grad_y ? given(pr.y) : at::Tensor(), given(pr.x_weights),
                     given(pr.y_weights)});
  }
  const at::Tensor block = scratch({block_size}, problems[0].x.options());
  AT_DISPATCH_FLOATING_TYPES(problems[0].x.scalar_type(), "sinkhorn", [&] {
    scalar_t* const block_data = block.mutable_data_ptr<scalar_t>();
    // The costs kept and built first (KeptCosts::kBuiltFirst), each on all threads: where
    // they dominate (BLAS products at large d), the problems at once would leave a thread
    // idle while another builds two. But two self-terms side by side, one per thread: their
    // strips of rows (build_cost_matrix) are products too small for BLAS to gain much from
    // two threads.
    auto build = [&](const Problem& pr) {
      kernels.of<scalar_t>().build_costs(
          make_params<scalar_t>(pr, block_data, eps, iters, cost, online));
    };
    std::vector<const Problem*> self_terms;
    for (const Problem& pr : problems) {
      if (!pr.kept_costs_first) continue;
      if (pr.x_is_y) {
        self_terms.push_back(&pr);
      } else {
        build(pr);
      }
    }
    if (self_terms.size() == 2) {
      at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) build(*self_terms[k]);
      });
    } else if (self_terms.size() == 1) {
      build(*self_terms[0]);
    }
    // K (its rows kernel_matrix_stride(n) apart), and C where the problem keeps none in the
    // block, built ahead of a problem's forward by another thread (for_each_problem), where
    // the kernels can, in one array, K first.
    const auto build_kernel_matrix = kernels.of<scalar_t>().build_kernel_matrix;
    std::vector<at::Tensor> built_ahead(problems.size());
    auto kernel_matrix_size = [&](const Problem& pr) {
      return pr.batch() * pr.m() * kernel_matrix_stride<scalar_t>(pr.n());
    };
    auto use_built_ahead = [&](int64_t k, SinkhornParams<scalar_t>& p) {
      scalar_t* const arrays = built_ahead[k].mutable_data_ptr<scalar_t>();
      p.kernel_matrix = arrays;
      if (p.kept_costs == nullptr) p.kept_costs = arrays + kernel_matrix_size(problems[k]);
    };
    auto ahead = [&](int64_t k) {
      if (online || build_kernel_matrix == nullptr) return;
      const Problem& pr = problems[k];
      const int64_t costs = pr.kept_costs >= 0 ? 0 : pr.batch() * pr.m() * pr.n();
      built_ahead[k] = scratch({kernel_matrix_size(pr) + costs}, pr.x.options());
      auto p = make_params<scalar_t>(pr, block_data, eps, iters, cost, online);
      use_built_ahead(k, p);
      build_kernel_matrix(p);
    };
    for_each_problem(kernels, problems, ahead, [&](int64_t k) {
      const Problem& pr = problems[k];
      const int64_t B = pr.batch(), m = pr.m(), n = pr.n();
      auto p = make_params<scalar_t>(pr, block_data, eps, iters, cost, online);
      p.cost_out = costs[k].mutable_data_ptr<scalar_t>();
      at::Tensor workspace, kernel_matrix;
      if (built_ahead[k].defined()) {
        use_built_ahead(k, p);
        p.kernel_matrix_built = p.kept_costs_built = true;
      } else if (!online && kernels.shares_kernel_matrix && pr.needs_grad) {
        // Allocated here, not before all problems: those run one after the other (at large
        // sizes) then hold one at a time.
        kernel_matrix = scratch({kernel_matrix_size(pr)}, pr.x.options());
        p.kernel_matrix = kernel_matrix.mutable_data_ptr<scalar_t>();
      }
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
      if (!pr.needs_grad) return;
      p.kept_costs_built = true;  // by the forward, if not before
      p.grad_cost = grad_costs[k].const_data_ptr<scalar_t>();
      p.grad_x = grads[k].x.mutable_data_ptr<scalar_t>();
      p.grad_y = grads[k].y.defined() ? grads[k].y.mutable_data_ptr<scalar_t>() : nullptr;
      p.grad_x_weights = grads[k].x_weights.mutable_data_ptr<scalar_t>();
      p.grad_y_weights = grads[k].y_weights.mutable_data_ptr<scalar_t>();
      at::Tensor grad_matrices;
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
  return {costs, grads};
}

// The checks and options common to both ops.
struct Call {
  Cost cost;
  bool online;
};

Call check_call(const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
                const std::optional<at::Tensor>& x_weights,
                const std::optional<at::Tensor>& y_weights, double eps,
                int64_t iters, std::string_view cost, std::string_view backend) {
  check_common(x, y, x_weights, y_weights, eps);
  check_iters(iters);
  return {parse_cost(cost), parse_backend(kernels, backend)};
}

// The outputs: the value, and the gradients that grad_mask names, empty (0,) for the others
// (each its own tensor: outputs do not alias).
Outputs outputs(const at::Tensor& value, const Gradients& g, std::array<bool, 4> grad_mask) {
  auto pick = [&](int k, const at::Tensor& grad) {
    return grad_mask[k] ? grad : at::empty({0}, value.options());
  };
  return {value, pick(0, g.x), pick(1, g.y), pick(2, g.x_weights), pick(3, g.y_weights)};
}

}  // namespace

Outputs sinkhorn_cost(const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
                      const std::optional<at::Tensor>& x_weights,
                      const std::optional<at::Tensor>& y_weights, double eps,
                      int64_t iters, std::string_view cost_name, std::string_view backend,
                      std::array<bool, 4> grad_mask) {
  const Call call =
      check_call(kernels, x, y, x_weights, y_weights, eps, iters, cost_name, backend);
  std::vector<Problem> problems = {make_problem(x, y, x_weights, y_weights, grad_mask)};
  const auto [costs, grads] = run_problems(kernels, problems, eps, iters, call.cost, call.online);
  return outputs(costs[0], grads[0], grad_mask);
}

Outputs sinkhorn_loss(const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
                      const std::optional<at::Tensor>& x_weights,
                      const std::optional<at::Tensor>& y_weights, double eps,
                      int64_t iters, std::string_view cost_name, std::string_view backend,
                      std::array<bool, 4> grad_mask) {
  const Call call =
      check_call(kernels, x, y, x_weights, y_weights, eps, iters, cost_name, backend);
  const Problem xy = make_problem(x, y, x_weights, y_weights, grad_mask);
  auto self_term = [&](const at::Tensor& cloud, const at::Tensor& weights) {
    Problem pr{cloud, cloud, weights, weights};
    pr.batched = xy.batched;
    pr.x_is_y = true;
    return pr;
  };
  std::vector<Problem> problems = {xy, self_term(xy.x, xy.x_weights),
                                   self_term(xy.y, xy.y_weights)};
  // W(x, x) only matters for the gradients of x and its weights, W(y, y) for those of y.
  problems[1].needs_grad = grad_mask[0] || grad_mask[2];
  problems[2].needs_grad = grad_mask[1] || grad_mask[3];
  const double factors[] = {2, -1, -1};
  for (int k = 0; k < 3; ++k) problems[k].grad_factor = factors[k];
  const auto [w, g] = run_problems(kernels, problems, eps, iters, call.cost, call.online);
  // 2 W(x, y) as W(x, y) + W(x, y), exact, and in place after: a product with a scalar would
  // make a tensor of it first, which costs more on the CPU than the rest together.
  const at::Tensor loss = w[0].add(w[0]).sub_(w[1]).sub_(w[2]);
  if (!problems[0].needs_grad) return outputs(loss, {}, grad_mask);
  Gradients total = g[0];  // W(x, y)'s; its own tensors, so added to in place
  // W(x, x) and W(y, y) depend on their cloud and weights through both of their arguments
  // (the kernels sum the cloud's two, x_is_y). Only the gradients asked for are summed.
  if (problems[1].needs_grad) {
    if (grad_mask[0]) total.x.add_(g[1].x);
    if (grad_mask[2]) total.x_weights.add_(g[1].x_weights).add_(g[1].y_weights);
  }
  if (problems[2].needs_grad) {
    if (grad_mask[1]) total.y.add_(g[2].x);
    if (grad_mask[3]) total.y_weights.add_(g[2].x_weights).add_(g[2].y_weights);
  }
  return outputs(loss, total, grad_mask);
}

}  // namespace sinkhorn::ops

TORCH_LIBRARY(sinkhorn_ext, m) {
  // Clouds (m, d) and (n, d), or batches (B, m, d) and (B, n, d); weights (m,), (n,) or
  // (B, m), (B, n), uniform where None. Outputs: the value, () or (B,), and the gradients of
  // its sum with respect to x, y, x_weights, y_weights where grad_mask asks for them (in the
  // shape of the input, or for None weights of what they would have), empty (0,) elsewhere
  // (ops/sinkhorn.h).
  m.def(
      "sinkhorn_cost(Tensor x, Tensor y, Tensor? x_weights, Tensor? y_weights, float eps, "
      "int iters, str cost, str backend=\"tensorized\", "
      "bool[4] grad_mask=[False, False, False, False]) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "sinkhorn_loss(Tensor x, Tensor y, Tensor? x_weights, Tensor? y_weights, float eps, "
      "int iters, str cost, str backend=\"tensorized\", "
      "bool[4] grad_mask=[False, False, False, False]) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
