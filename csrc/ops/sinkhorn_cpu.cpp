// CPU registration of the ops.
#include <torch/library.h>

#include "cpu/sinkhorn_cpu.h"
#include "ops/sinkhorn.h"

namespace sinkhorn::ops {
namespace {

constexpr Kernels kCpuKernels{{cpu::sinkhorn_forward<float>, cpu::sinkhorn_backward<float>,
                               cpu::build_kept_costs<float>},
                              {cpu::sinkhorn_forward<double>, cpu::sinkhorn_backward<double>,
                               cpu::build_kept_costs<double>},
                              /*needs_workspace=*/false,
                              /*concurrent_problems=*/true,
                              /*online_backend=*/true,
                              /*keeps_costs=*/cpu::keeps_cost_matrix,
                              "CPU"};

std::string_view view(c10::string_view s) { return {s.data(), s.size()}; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, double eps, int64_t iters, c10::string_view cost,
    c10::string_view backend) {
  return sinkhorn_cost(kCpuKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost_backward_cpu(
    const at::Tensor& grad_cost, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& u_history,
    const at::Tensor& v_history, const at::Tensor& kept_costs, double eps, c10::string_view cost,
    c10::string_view backend) {
  return sinkhorn_cost_backward(kCpuKernels, grad_cost, x, y, x_weights, y_weights, u_history,
                                v_history, kept_costs, eps, view(cost), view(backend));
}

LossOutputs sinkhorn_loss_cpu(const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& x_weights, const at::Tensor& y_weights,
                              double eps, int64_t iters, c10::string_view cost,
    c10::string_view backend) {
  return sinkhorn_loss(kCpuKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& u_xy,
    const at::Tensor& v_xy, const at::Tensor& u_xx, const at::Tensor& v_xx,
    const at::Tensor& u_yy, const at::Tensor& v_yy, const at::Tensor& kept_costs,
    std::array<bool, 4> output_mask, double eps, c10::string_view cost, c10::string_view backend) {
  return sinkhorn_loss_backward(kCpuKernels, grad_loss, x, y, x_weights, y_weights, u_xy, v_xy,
                                u_xx, v_xx, u_yy, v_yy, kept_costs, output_mask, eps, view(cost),
                                view(backend));
}

}  // namespace
}  // namespace sinkhorn::ops

TORCH_LIBRARY_IMPL(sinkhorn_ext, CPU, m) {
  m.impl("sinkhorn_cost", &sinkhorn::ops::sinkhorn_cost_cpu);
  m.impl("sinkhorn_cost_backward", &sinkhorn::ops::sinkhorn_cost_backward_cpu);
  m.impl("sinkhorn_loss", &sinkhorn::ops::sinkhorn_loss_cpu);
  m.impl("sinkhorn_loss_backward", &sinkhorn::ops::sinkhorn_loss_backward_cpu);
}
