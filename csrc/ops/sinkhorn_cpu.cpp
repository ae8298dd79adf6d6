// CPU registration of the ops.
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include "cpu/scratch.h"
#include "cpu/sinkhorn_cpu.h"
#include "ops/sinkhorn.h"

namespace sinkhorn::ops {
namespace {

// A large tensor over a block of cpu/scratch.h, which goes back to its cache with the
// tensor; a small one from at::empty.
at::Tensor scratch_tensor(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const std::size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (bytes < cpu::kPooledMin) return at::empty(sizes, options);
  const cpu::ScratchBlock block = cpu::acquire_scratch(bytes);
  return at::from_blob(block.data, sizes, [block](void*) { cpu::release_scratch(block); },
                       options);
}

constexpr Kernels kCpuKernels{{cpu::sinkhorn_forward<float>, cpu::sinkhorn_backward<float>,
                               cpu::build_kept_costs<float>,
                               cpu::build_kernel_matrix_ahead<float>},
                              {cpu::sinkhorn_forward<double>, cpu::sinkhorn_backward<double>,
                               cpu::build_kept_costs<double>,
                               cpu::build_kernel_matrix_ahead<double>},
                              /*needs_workspace=*/false,
                              /*concurrent_problems=*/true,
                              /*online_backend=*/true,
                              /*keeps_costs=*/cpu::keeps_cost_matrix,
                              /*shares_kernel_matrix=*/true,
                              /*scratch=*/scratch_tensor,
                              "CPU"};

std::string_view view(c10::string_view s) { return {s.data(), s.size()}; }

Outputs sinkhorn_cost_cpu(const at::Tensor& x, const at::Tensor& y,
                          const std::optional<at::Tensor>& x_weights,
                          const std::optional<at::Tensor>& y_weights,
                          double eps, int64_t iters, c10::string_view cost,
                          c10::string_view backend, std::array<bool, 4> grad_mask) {
  return sinkhorn_cost(kCpuKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend), grad_mask);
}

Outputs sinkhorn_loss_cpu(const at::Tensor& x, const at::Tensor& y,
                          const std::optional<at::Tensor>& x_weights,
                          const std::optional<at::Tensor>& y_weights,
                          double eps, int64_t iters, c10::string_view cost,
                          c10::string_view backend, std::array<bool, 4> grad_mask) {
  return sinkhorn_loss(kCpuKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend), grad_mask);
}

}  // namespace
}  // namespace sinkhorn::ops

TORCH_LIBRARY_IMPL(sinkhorn_ext, CPU, m) {
  m.impl("sinkhorn_cost", &sinkhorn::ops::sinkhorn_cost_cpu);
  m.impl("sinkhorn_loss", &sinkhorn::ops::sinkhorn_loss_cpu);
}
