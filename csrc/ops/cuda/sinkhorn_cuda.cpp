// CUDA registration of the ops (built only into a CUDA build of the extension): the kernels
// of csrc/cuda run on the current stream of the inputs' device.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/sinkhorn_cuda.h"
#include "ops/sinkhorn.h"

namespace sinkhorn::ops {
namespace {

void check_cuda(cudaError_t error, const char* what) {
  TORCH_CHECK(error == cudaSuccess, "sinkhorn_ext: the CUDA ", what, " failed: ",
              cudaGetErrorString(error));
}

template <typename T>
void forward(const SinkhornParams<T>& p) {
  check_cuda(cuda::sinkhorn_forward(p, c10::cuda::getCurrentCUDAStream()), "forward");
}

template <typename T>
void backward(const SinkhornParams<T>& p) {
  check_cuda(cuda::sinkhorn_backward(p, c10::cuda::getCurrentCUDAStream()), "backward");
}

constexpr Kernels kCudaKernels{{forward<float>, backward<float>, nullptr, nullptr},
                               {forward<double>, backward<double>, nullptr, nullptr},
                               /*needs_workspace=*/true,
                               /*concurrent_problems=*/false,
                               /*online_backend=*/true,
                               /*keeps_costs=*/nullptr,
                               /*shares_kernel_matrix=*/false,
                               /*scratch=*/nullptr,
                               "CUDA"};

std::string_view view(c10::string_view s) { return {s.data(), s.size()}; }

Outputs sinkhorn_cost_cuda(const at::Tensor& x, const at::Tensor& y,
                           const std::optional<at::Tensor>& x_weights,
                           const std::optional<at::Tensor>& y_weights,
                           double eps, int64_t iters, c10::string_view cost,
                           c10::string_view backend, std::array<bool, 4> grad_mask) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return sinkhorn_cost(kCudaKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend), grad_mask);
}

Outputs sinkhorn_loss_cuda(const at::Tensor& x, const at::Tensor& y,
                           const std::optional<at::Tensor>& x_weights,
                           const std::optional<at::Tensor>& y_weights,
                           double eps, int64_t iters, c10::string_view cost,
                           c10::string_view backend, std::array<bool, 4> grad_mask) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return sinkhorn_loss(kCudaKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend), grad_mask);
}

}  // namespace
}  // namespace sinkhorn::ops

TORCH_LIBRARY_IMPL(sinkhorn_ext, CUDA, m) {
  m.impl("sinkhorn_cost", &sinkhorn::ops::sinkhorn_cost_cuda);
  m.impl("sinkhorn_loss", &sinkhorn::ops::sinkhorn_loss_cuda);
}
