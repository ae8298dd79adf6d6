// The ops' derivatives, registered in C++ at the Autograd key (as torchvision registers its
// ops'). Each op computes, in the same call as its value, the gradients of the value's sum
// with respect to the inputs that grad_mask names (the replay of DESIGN.md section 1, run
// right after the forward on its potentials and costs); here grad_mask also names every input
// that requires a gradient while grad mode is on. The derivative is then the product of the
// incoming gradient with those, and a second derivative is an error (first derivatives
// only). torch.library.register_autograd would do the same through a Python
// autograd.Function, whose wrapping costs about as much as a small problem's kernels
// (0.1 ms a call on the CPU). Below this key each op runs its device kernel; torch.compile
// traces the ops themselves, with the fake kernels of sinkhorn_ext/_ops.py.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include "ops/sinkhorn.h"

namespace sinkhorn::ops {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The schema of both ops in TORCH_LIBRARY(sinkhorn_ext) (ops/sinkhorn.cpp).
using Weights = std::optional<Tensor>;
using Op = Outputs(const Tensor&, const Tensor&, const Weights&, const Weights&, double, int64_t,
                   c10::string_view, c10::string_view, std::array<bool, 4>);
using OpHandle = c10::TypedOperatorHandle<Op>;

OpHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Op>();
}
const OpHandle& cost_op() {
  static const OpHandle op = find_op("sinkhorn_ext::sinkhorn_cost");
  return op;
}
const OpHandle& loss_op() {
  static const OpHandle op = find_op("sinkhorn_ext::sinkhorn_loss");
  return op;
}

// Without a derivative of its own, the product below would treat the op's gradients as
// constants and give second derivatives that are silently wrong; asking for them is an
// error instead. The input the gradients are of is an argument, unused, so that the
// product is a function of it in a graph that create_graph=True records.
struct GradientProduct : public torch::autograd::Function<GradientProduct> {
  // incoming, () or (B,), times the gradients, (...) or (B, ...), of its values.
  static variable_list forward(AutogradContext*, const Tensor& incoming,
                               const Tensor& gradients, const Tensor& /*input*/) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return {product(incoming, gradients)};
  }
  static Tensor product(const Tensor& incoming, const Tensor& gradients) {
    std::vector<int64_t> shape(gradients.dim(), 1);
    std::copy(incoming.sizes().begin(), incoming.sizes().end(), shape.begin());
    return gradients * incoming.reshape(shape);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "sinkhorn_ext computes first derivatives only: differentiating its gradient "
                "(double backward, create_graph=True) is not supported");
  }
};

// Outputs (value, grad_x, grad_y, grad_x_weights, grad_y_weights); the gradients are not
// differentiable.
template <const OpHandle& (*op)()>
struct SinkhornFunction : public torch::autograd::Function<SinkhornFunction<op>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& y,
                               const Weights& x_weights, const Weights& y_weights, double eps,
                               int64_t iters, c10::string_view cost, c10::string_view backend,
                               std::array<bool, 4> grad_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [value, gx, gy, gxw, gyw] =
        op().call(x, y, x_weights, y_weights, eps, iters, cost, backend, grad_mask);
    ctx->mark_non_differentiable({gx, gy, gxw, gyw});
    ctx->save_for_backward(
        {gx, gy, gxw, gyw, x, y, x_weights.value_or(Tensor()), y_weights.value_or(Tensor())});
    ctx->set_materialize_grads(false);  // no incoming gradient: none out
    return {value, gx, gy, gxw, gyw};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);  // eps, iters, cost, backend and grad_mask have none
    if (!grads[0].defined()) return out;
    const variable_list saved = ctx->get_saved_variables();  // the gradients, the inputs
    // Only a graph being recorded (create_graph=True) needs the product's own node, which
    // costs more than the product itself.
    const bool recording = at::GradMode::is_enabled();
    // The graph's edges are those of the inputs given: weights left None have none.
    for (int k = 0, edge = 0; k < 4; ++k) {
      const Tensor& input = saved[4 + k];
      if (!input.defined() || !ctx->needs_input_grad(edge++)) continue;
      out[k] = recording ? GradientProduct::apply(grads[0], saved[k], input)[0]
                         : GradientProduct::product(grads[0], saved[k]);
    }
    return out;
  }
};

template <const OpHandle& (*op)()>
Outputs with_derivative(const Tensor& x, const Tensor& y, const Weights& x_weights,
                        const Weights& y_weights, double eps, int64_t iters, c10::string_view cost,
                        c10::string_view backend, std::array<bool, 4> grad_mask) {
  // Autograd will need the gradients of the inputs that require one.
  const bool recording = at::GradMode::is_enabled();
  auto requires_grad = [](const Weights& w) { return w.has_value() && w->requires_grad(); };
  const std::array<bool, 4> required = {x.requires_grad(), y.requires_grad(),
                                        requires_grad(x_weights), requires_grad(y_weights)};
  for (int k = 0; k < 4; ++k) grad_mask[k] = grad_mask[k] || (recording && required[k]);
  const variable_list out = SinkhornFunction<op>::apply(x, y, x_weights, y_weights, eps, iters,
                                                        cost, backend, grad_mask);
  return {out[0], out[1], out[2], out[3], out[4]};
}

}  // namespace
}  // namespace sinkhorn::ops

TORCH_LIBRARY_IMPL(sinkhorn_ext, Autograd, m) {
  m.impl("sinkhorn_cost", &sinkhorn::ops::with_derivative<sinkhorn::ops::cost_op>);
  m.impl("sinkhorn_loss", &sinkhorn::ops::with_derivative<sinkhorn::ops::loss_op>);
}
