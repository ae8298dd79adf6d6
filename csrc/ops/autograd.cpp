// The ops' derivatives, registered in C++ at the Autograd key (as torchvision registers its
// ops'). Each op computes, in the same call as its value, the gradients of the value's sum
// with respect to the inputs that grad_mask names (the replay of DESIGN.md section 1, run
// right after the forward on its potentials and costs); here grad_mask also names every input
// that requires a gradient while grad mode is on. The derivative is then the product of the
// incoming gradient with those, and a second derivative is an error (first derivatives
// only). torch.library.register_autograd would do the same through a Python
// autograd.Function, whose wrapping costs about as much as a small problem's kernels
// (0.1 ms a call on the CPU); the op's node is written here as PyTorch's own generated nodes
// are (SinkhornBackward). Below this key each op runs its device kernel; torch.compile
// traces the ops themselves, with the fake kernels of sinkhorn_ext/_ops.py.
#include <ATen/ATen.h>
#include <ATen/FuncTorchTLS.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
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
    if (incoming.dim() == 0) return gradients * incoming;  // a view would cost more
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

// The node of both ops in the autograd graph. The op computed the gradients of its value's
// sum with its value, so the derivative is the incoming gradient times those. A node of its
// own, holding them as plain tensors: through torch::autograd::Function, with saved
// variables, a small loss with its backward() took about 20 us more on the CPU.
struct SinkhornBackward : public torch::autograd::Node {
  // Per input (x, y, x_weights, y_weights): the gradient of the value's sum, where autograd
  // will need it; the input itself, for the product's graph under create_graph=True.
  std::array<Tensor, 4> gradients, inputs;
  bool released = false;  // by a backward without retain_graph=True

  std::string name() const override { return "SinkhornBackward"; }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(!released, torch::autograd::ERR_BACKWARD_TWICE);
    variable_list out(num_outputs());
    if (!grads[0].defined()) return out;
    // Only a graph being recorded (create_graph=True) needs the product's own node, which
    // costs more than the product itself.
    const bool recording = at::GradMode::is_enabled();
    for (std::size_t k = 0; k < out.size(); ++k) {
      if (!gradients[k].defined() || !should_compute_output(k)) continue;
      out[k] = recording ? GradientProduct::apply(grads[0], gradients[k], inputs[k])[0]
                         : GradientProduct::product(grads[0], gradients[k]);
    }
    return out;
  }

  void release_variables() override {
    gradients = inputs = {};
    released = true;
  }
};

// Outputs (value, grad_x, grad_y, grad_x_weights, grad_y_weights): the value is
// differentiable, the gradients are not.
template <const OpHandle& (*op)()>
Outputs with_derivative(const Tensor& x, const Tensor& y, const Weights& x_weights,
                        const Weights& y_weights, double eps, int64_t iters, c10::string_view cost,
                        c10::string_view backend, std::array<bool, 4> grad_mask) {
  // functorch's transforms (torch.func.grad, jvp, ...) and forward-mode AD would not see
  // the derivative below, and give wrong numbers: errors instead, as for a
  // torch::autograd::Function.
  if (const auto& functorch = at::functorch::functorchTLSAccessor())
    functorch->checkSupportsCppAutogradFunction();
  const std::array<Tensor, 4> inputs = {x, y, x_weights.value_or(Tensor()),
                                        y_weights.value_or(Tensor())};
  for (const Tensor& input : inputs) {
    TORCH_CHECK(!input.defined() || !input._fw_grad(/*level=*/0).defined(),
                "sinkhorn_ext computes reverse-mode derivatives only: forward-mode AD ",
                "(torch.autograd.forward_ad, torch.func.jvp) is not supported");
  }
  // Autograd will need the gradients of the inputs that require one.
  const bool recording = at::GradMode::is_enabled();
  std::array<bool, 4> required{};
  for (int k = 0; k < 4; ++k) {
    required[k] = recording && inputs[k].defined() && inputs[k].requires_grad();
    grad_mask[k] = grad_mask[k] || required[k];
  }
  Outputs out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op().call(x, y, x_weights, y_weights, eps, iters, cost, backend, grad_mask);
  }
  if (std::none_of(required.begin(), required.end(), [](bool r) { return r; })) return out;
  auto node = c10::make_intrusive<SinkhornBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs[0], inputs[1], inputs[2],
                                                           inputs[3]));
  const std::array<Tensor, 4> gradients = {std::get<1>(out), std::get<2>(out),
                                           std::get<3>(out), std::get<4>(out)};
  for (int k = 0; k < 4; ++k) {
    if (!required[k]) continue;
    node->gradients[k] = gradients[k];
    node->inputs[k] = inputs[k];
  }
  torch::autograd::set_history(std::get<0>(out), node);
  return out;
}

}  // namespace
}  // namespace sinkhorn::ops

TORCH_LIBRARY_IMPL(sinkhorn_ext, Autograd, m) {
  m.impl("sinkhorn_cost", &sinkhorn::ops::with_derivative<sinkhorn::ops::cost_op>);
  m.impl("sinkhorn_loss", &sinkhorn::ops::with_derivative<sinkhorn::ops::loss_op>);
}
