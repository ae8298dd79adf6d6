// The ops' derivatives, registered in C++ at the Autograd key (as torchvision registers its
// ops'): the derivative of sinkhorn_cost and sinkhorn_loss is their backward op, the replay
// of DESIGN.md section 1, and the derivative of a backward op is an error (first derivatives
// only). torch.library.register_autograd would do the same through a Python
// autograd.Function, whose wrapping costs about as much as a small problem's kernels
// (0.1 ms a call on the CPU). Below this key each op runs its device kernel; torch.compile
// traces the ops themselves, with the fake kernels of sinkhorn_ext/_ops.py.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

namespace sinkhorn::ops {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The schemas of TORCH_LIBRARY(sinkhorn_ext) in ops/sinkhorn.cpp.
using Tensors4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensors8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using CostOp = Tensors4(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                        int64_t, c10::string_view, c10::string_view);
using CostBackwardOp = Tensors4(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                double, c10::string_view, c10::string_view);
using LossOp = Tensors8(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                        int64_t, c10::string_view, c10::string_view);
using LossBackwardOp = Tensors4(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                std::array<bool, 4>, double, c10::string_view, c10::string_view);

const c10::TypedOperatorHandle<CostOp>& cost_op() {
  static const auto op = find_op<CostOp>("sinkhorn_ext::sinkhorn_cost");
  return op;
}
const c10::TypedOperatorHandle<CostBackwardOp>& cost_backward_op() {
  static const auto op = find_op<CostBackwardOp>("sinkhorn_ext::sinkhorn_cost_backward");
  return op;
}
const c10::TypedOperatorHandle<LossOp>& loss_op() {
  static const auto op = find_op<LossOp>("sinkhorn_ext::sinkhorn_loss");
  return op;
}
const c10::TypedOperatorHandle<LossBackwardOp>& loss_backward_op() {
  static const auto op = find_op<LossBackwardOp>("sinkhorn_ext::sinkhorn_loss_backward");
  return op;
}

template <typename Tuple>
variable_list to_list(Tuple&& tuple) {
  return std::apply([](auto&&... t) { return variable_list{std::forward<decltype(t)>(t)...}; },
                    std::forward<Tuple>(tuple));
}

// The options the backward op takes besides tensors.
void save_options(AutogradContext* ctx, double eps, c10::string_view cost,
                  c10::string_view backend) {
  // The histories and kept costs are not differentiable: their gradients are not made into
  // zero tensors.
  ctx->set_materialize_grads(false);
  ctx->saved_data["eps"] = eps;
  ctx->saved_data["cost"] = std::string(cost);
  ctx->saved_data["backend"] = std::string(backend);
}

// The incoming gradient of the (B,) output, zeros where autograd passes none, contiguous.
Tensor incoming_gradient(const Tensor& grad, const Tensor& x) {
  return grad.defined() ? grad.contiguous() : at::zeros({x.size(0)}, x.options());
}

struct Options {
  double eps;
  std::string cost, backend;
};

Options saved_options(AutogradContext* ctx) {
  return {ctx->saved_data["eps"].toDouble(), ctx->saved_data["cost"].toStringRef(),
          ctx->saved_data["backend"].toStringRef()};
}

// Outputs (W_L, u_history, v_history, kept_costs); all but W_L are not differentiable.
struct SinkhornCostFunction : public torch::autograd::Function<SinkhornCostFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& y,
                               const Tensor& x_weights, const Tensor& y_weights, double eps,
                               int64_t iters, c10::string_view cost, c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    variable_list out =
        to_list(cost_op().call(x, y, x_weights, y_weights, eps, iters, cost, backend));
    ctx->mark_non_differentiable({out[1], out[2], out[3]});
    ctx->save_for_backward({x, y, x_weights, y_weights, out[1], out[2], out[3]});
    save_options(ctx, eps, cost, backend);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const Options o = saved_options(ctx);
    variable_list g =
        to_list(cost_backward_op().call(incoming_gradient(grads[0], s[0]), s[0], s[1], s[2],
                                         s[3], s[4], s[5], s[6], o.eps, o.cost, o.backend));
    g.resize(8);  // eps, iters, cost and backend have none
    return g;
  }
};

// Outputs (loss, u_xy, v_xy, u_xx, v_xx, u_yy, v_yy, kept_costs); all but the loss are not
// differentiable.
struct SinkhornLossFunction : public torch::autograd::Function<SinkhornLossFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& y,
                               const Tensor& x_weights, const Tensor& y_weights, double eps,
                               int64_t iters, c10::string_view cost, c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    variable_list out =
        to_list(loss_op().call(x, y, x_weights, y_weights, eps, iters, cost, backend));
    const variable_list kept(out.begin() + 1, out.end());  // the histories and kept costs
    ctx->mark_non_differentiable(kept);
    variable_list saved = {x, y, x_weights, y_weights};
    saved.insert(saved.end(), kept.begin(), kept.end());
    ctx->save_for_backward(saved);
    save_options(ctx, eps, cost, backend);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const Options o = saved_options(ctx);
    // The self-term of a cloud whose gradients nobody asked for is not replayed.
    const std::array<bool, 4> wanted = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                        ctx->needs_input_grad(2), ctx->needs_input_grad(3)};
    variable_list g = to_list(loss_backward_op().call(
        incoming_gradient(grads[0], s[0]), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8],
        s[9], s[10], wanted, o.eps, o.cost, o.backend));
    g.resize(8);
    return g;
  }
};

// Without a derivative of their own, autograd would treat the backward ops' outputs as
// constants and return second derivatives that are silently wrong; asking for them is an
// error instead.
[[noreturn]] void no_double_backward() {
  TORCH_CHECK(false,
              "sinkhorn_ext computes first derivatives only: differentiating its gradient "
              "(double backward, create_graph=True) is not supported");
}

struct SinkhornCostBackwardFunction
    : public torch::autograd::Function<SinkhornCostBackwardFunction> {
  static variable_list forward(AutogradContext*, const Tensor& grad_cost, const Tensor& x,
                               const Tensor& y, const Tensor& x_weights,
                               const Tensor& y_weights, const Tensor& u_history,
                               const Tensor& v_history, const Tensor& kept_costs, double eps,
                               c10::string_view cost, c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return to_list(cost_backward_op().call(grad_cost, x, y, x_weights, y_weights, u_history,
                                           v_history, kept_costs, eps, cost, backend));
  }
  static variable_list backward(AutogradContext*, variable_list) { no_double_backward(); }
};

struct SinkhornLossBackwardFunction
    : public torch::autograd::Function<SinkhornLossBackwardFunction> {
  static variable_list forward(AutogradContext*, const Tensor& grad_loss, const Tensor& x,
                               const Tensor& y, const Tensor& x_weights,
                               const Tensor& y_weights, const Tensor& u_xy, const Tensor& v_xy,
                               const Tensor& u_xx, const Tensor& v_xx, const Tensor& u_yy,
                               const Tensor& v_yy, const Tensor& kept_costs,
                               std::array<bool, 4> output_mask, double eps,
                               c10::string_view cost, c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return to_list(loss_backward_op().call(grad_loss, x, y, x_weights, y_weights, u_xy, v_xy,
                                           u_xx, v_xx, u_yy, v_yy, kept_costs, output_mask, eps,
                                           cost, backend));
  }
  static variable_list backward(AutogradContext*, variable_list) { no_double_backward(); }
};

Tensors4 sinkhorn_cost_autograd(const Tensor& x, const Tensor& y, const Tensor& x_weights,
                                const Tensor& y_weights, double eps, int64_t iters,
                                c10::string_view cost, c10::string_view backend) {
  const variable_list out =
      SinkhornCostFunction::apply(x, y, x_weights, y_weights, eps, iters, cost, backend);
  return {out[0], out[1], out[2], out[3]};
}

Tensors4 sinkhorn_cost_backward_autograd(const Tensor& grad_cost, const Tensor& x,
                                         const Tensor& y, const Tensor& x_weights,
                                         const Tensor& y_weights, const Tensor& u_history,
                                         const Tensor& v_history, const Tensor& kept_costs,
                                         double eps, c10::string_view cost,
                                         c10::string_view backend) {
  const variable_list out = SinkhornCostBackwardFunction::apply(
      grad_cost, x, y, x_weights, y_weights, u_history, v_history, kept_costs, eps, cost,
      backend);
  return {out[0], out[1], out[2], out[3]};
}

Tensors8 sinkhorn_loss_autograd(const Tensor& x, const Tensor& y, const Tensor& x_weights,
                                const Tensor& y_weights, double eps, int64_t iters,
                                c10::string_view cost, c10::string_view backend) {
  const variable_list out =
      SinkhornLossFunction::apply(x, y, x_weights, y_weights, eps, iters, cost, backend);
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]};
}

Tensors4 sinkhorn_loss_backward_autograd(
    const Tensor& grad_loss, const Tensor& x, const Tensor& y, const Tensor& x_weights,
    const Tensor& y_weights, const Tensor& u_xy, const Tensor& v_xy, const Tensor& u_xx,
    const Tensor& v_xx, const Tensor& u_yy, const Tensor& v_yy, const Tensor& kept_costs,
    std::array<bool, 4> output_mask, double eps, c10::string_view cost,
    c10::string_view backend) {
  const variable_list out = SinkhornLossBackwardFunction::apply(
      grad_loss, x, y, x_weights, y_weights, u_xy, v_xy, u_xx, v_xx, u_yy, v_yy, kept_costs,
      output_mask, eps, cost, backend);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace
}  // namespace sinkhorn::ops

TORCH_LIBRARY_IMPL(sinkhorn_ext, Autograd, m) {
  m.impl("sinkhorn_cost", &sinkhorn::ops::sinkhorn_cost_autograd);
  m.impl("sinkhorn_cost_backward", &sinkhorn::ops::sinkhorn_cost_backward_autograd);
  m.impl("sinkhorn_loss", &sinkhorn::ops::sinkhorn_loss_autograd);
  m.impl("sinkhorn_loss_backward", &sinkhorn::ops::sinkhorn_loss_backward_autograd);
}
