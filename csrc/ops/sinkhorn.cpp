#include "ops/sinkhorn.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

namespace sinkhorn::ops {
namespace {

Cost parse_cost(std::string_view cost) {
  if (cost == "sqeuclidean") return Cost::kSqEuclidean;
  if (cost == "euclidean") return Cost::kEuclidean;
  TORCH_CHECK_VALUE(false, "cost must be \"sqeuclidean\" or \"euclidean\", got \"", cost, "\"");
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

// Weights must be probability vectors: (B, rows), nonnegative, each summing to 1. The values
// are read back (a device synchronisation), so only the forward checks them.
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
  TORCH_CHECK_VALUE(w.ge(0).all().item<bool>(), name,
                    " must be nonnegative and finite (a probability vector)");
  // Summation in float32 loses about 1e-7 * log2(m) relative; weights computed in half
  // precision and cast up need more room.
  const double tolerance = w.scalar_type() == at::kDouble ? 1e-8 : 1e-4;
  const double max_deviation = (w.sum(1) - 1).abs().max().item<double>();
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

template <typename T>
SinkhornParams<T> make_params(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
                              const at::Tensor& y_weights, double eps, int64_t iters, Cost cost) {
  SinkhornParams<T> p;
  p.x = x.const_data_ptr<T>();
  p.y = y.const_data_ptr<T>();
  p.x_weights = x_weights.const_data_ptr<T>();
  p.y_weights = y_weights.const_data_ptr<T>();
  p.batch = x.size(0);
  p.m = x.size(1);
  p.n = y.size(1);
  p.d = x.size(2);
  p.iters = static_cast<int>(iters);
  p.eps = static_cast<T>(eps);
  // The kernels divide by eps in T: it must stay a normal number there.
  TORCH_CHECK_VALUE(std::isfinite(p.eps) && p.eps >= std::numeric_limits<T>::min() &&
                        std::isfinite(T(1) / p.eps),
                    "eps = ", eps, " is out of the range of ", x.scalar_type(), " (",
                    std::numeric_limits<T>::min(), " to ", std::numeric_limits<T>::max(), ")");
  p.cost = cost;
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost(
    const Kernels& kernels, const at::Tensor& x_in, const at::Tensor& y_in,
    const at::Tensor& x_weights_in, const at::Tensor& y_weights_in, double eps, int64_t iters,
    std::string_view cost_name) {
  check_common(x_in, y_in, x_weights_in, y_weights_in, eps, /*check_weight_values=*/true);
  TORCH_CHECK_VALUE(iters >= 1 && iters <= std::numeric_limits<int>::max(),
                    "iters must be an integer >= 1, got ", iters);
  const Cost cost = parse_cost(cost_name);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const at::Tensor x_weights = x_weights_in.contiguous(), y_weights = y_weights_in.contiguous();
  const int64_t B = x.size(0), m = x.size(1), n = y.size(1);
  const auto opts = x.options();
  at::Tensor out = at::empty({B}, opts);
  at::Tensor u_history = at::empty({B, iters, m}, opts);
  at::Tensor v_history = at::empty({B, iters, n}, opts);
  at::Tensor cost_matrix = at::empty({B, m, n}, opts);
  at::Tensor cost_matrix_t = at::empty({B, n, m}, opts);
  at::Tensor f = at::empty({B, m}, opts), g = at::empty({B, n}, opts);
  at::Tensor column_cost = at::empty({B, n}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sinkhorn_cost", [&] {
    auto p = make_params<scalar_t>(x, y, x_weights, y_weights, eps, iters, cost);
    p.cost_out = out.mutable_data_ptr<scalar_t>();
    p.u_history = u_history.mutable_data_ptr<scalar_t>();
    p.v_history = v_history.mutable_data_ptr<scalar_t>();
    p.cost_matrix = cost_matrix.mutable_data_ptr<scalar_t>();
    p.cost_matrix_t = cost_matrix_t.mutable_data_ptr<scalar_t>();
    p.f = f.mutable_data_ptr<scalar_t>();
    p.g = g.mutable_data_ptr<scalar_t>();
    p.y_adjoint = column_cost.mutable_data_ptr<scalar_t>();
    kernels.of<scalar_t>().forward(p);
  });
  return {out, u_history, v_history};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost_backward(
    const Kernels& kernels, const at::Tensor& grad_cost_in, const at::Tensor& x_in,
    const at::Tensor& y_in, const at::Tensor& x_weights_in, const at::Tensor& y_weights_in,
    const at::Tensor& u_history_in, const at::Tensor& v_history_in, double eps,
    std::string_view cost_name) {
  check_common(x_in, y_in, x_weights_in, y_weights_in, eps, /*check_weight_values=*/false);
  const Cost cost = parse_cost(cost_name);
  const int64_t B = x_in.size(0), m = x_in.size(1), n = y_in.size(1);
  const int64_t iters = u_history_in.dim() == 3 ? u_history_in.size(1) : 0;
  TORCH_CHECK_VALUE(grad_cost_in.dim() == 1 && grad_cost_in.size(0) == B,
                    "grad_cost must have shape (B,) = (", B, ",), got ", grad_cost_in.sizes());
  TORCH_CHECK_VALUE(u_history_in.dim() == 3 && u_history_in.size(0) == B && iters >= 1 &&
                        u_history_in.size(2) == m,
                    "u_history must have shape (B, L, m) = (", B, ", L, ", m, "), got ",
                    u_history_in.sizes());
  TORCH_CHECK_VALUE(v_history_in.dim() == 3 && v_history_in.size(0) == B &&
                        v_history_in.size(1) == iters && v_history_in.size(2) == n,
                    "v_history must have shape (B, L, n) = (", B, ", ", iters, ", ", n, "), got ",
                    v_history_in.sizes());
  for (const at::Tensor* t : {&grad_cost_in, &u_history_in, &v_history_in}) {
    TORCH_CHECK_TYPE(t->scalar_type() == x_in.scalar_type(),
                     "grad_cost, u_history and v_history must have the dtype of x (",
                     x_in.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == x_in.device(),
                      "grad_cost, u_history and v_history must be on the device of x (",
                      x_in.device(), "), got ", t->device());
  }
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  const at::Tensor x_weights = x_weights_in.contiguous(), y_weights = y_weights_in.contiguous();
  const at::Tensor grad_cost = grad_cost_in.contiguous();
  const at::Tensor u_history = u_history_in.contiguous(), v_history = v_history_in.contiguous();
  const auto opts = x.options();
  at::Tensor grad_x = at::empty_like(x), grad_y = at::empty_like(y);
  at::Tensor grad_x_weights = at::empty({B, m}, opts), grad_y_weights = at::empty({B, n}, opts);
  at::Tensor cost_matrix = at::empty({B, m, n}, opts);
  at::Tensor cost_matrix_t = at::empty({B, n, m}, opts);
  at::Tensor grad_matrix = at::zeros({B, m, n}, opts);
  at::Tensor grad_matrix_t = at::zeros({B, n, m}, opts);
  at::Tensor f = at::empty({B, m}, opts), g = at::empty({B, n}, opts);
  at::Tensor phi = at::empty({B, m}, opts), psi = at::empty({B, n}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sinkhorn_cost_backward", [&] {
    auto p = make_params<scalar_t>(x, y, x_weights, y_weights, eps, iters, cost);
    p.u_history = const_cast<scalar_t*>(u_history.const_data_ptr<scalar_t>());
    p.v_history = const_cast<scalar_t*>(v_history.const_data_ptr<scalar_t>());
    p.grad_cost = grad_cost.const_data_ptr<scalar_t>();
    p.grad_x = grad_x.mutable_data_ptr<scalar_t>();
    p.grad_y = grad_y.mutable_data_ptr<scalar_t>();
    p.grad_x_weights = grad_x_weights.mutable_data_ptr<scalar_t>();
    p.grad_y_weights = grad_y_weights.mutable_data_ptr<scalar_t>();
    p.cost_matrix = cost_matrix.mutable_data_ptr<scalar_t>();
    p.cost_matrix_t = cost_matrix_t.mutable_data_ptr<scalar_t>();
    p.grad_matrix = grad_matrix.mutable_data_ptr<scalar_t>();
    p.grad_matrix_t = grad_matrix_t.mutable_data_ptr<scalar_t>();
    p.f = f.mutable_data_ptr<scalar_t>();
    p.g = g.mutable_data_ptr<scalar_t>();
    p.x_adjoint = phi.mutable_data_ptr<scalar_t>();
    p.y_adjoint = psi.mutable_data_ptr<scalar_t>();
    kernels.of<scalar_t>().backward(p);
  });
  return {grad_x, grad_y, grad_x_weights, grad_y_weights};
}

}  // namespace sinkhorn::ops

TORCH_LIBRARY(sinkhorn_ext, m) {
  m.def(
      "sinkhorn_cost(Tensor x, Tensor y, Tensor x_weights, Tensor y_weights, float eps, "
      "int iters, str cost) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sinkhorn_cost_backward(Tensor grad_cost, Tensor x, Tensor y, Tensor x_weights, "
      "Tensor y_weights, Tensor u_history, Tensor v_history, float eps, str cost) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}
