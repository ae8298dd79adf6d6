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

constexpr Kernels kCudaKernels{{forward<float>, backward<float>, nullptr},
                               {forward<double>, backward<double>, nullptr},
                               /*needs_workspace=*/true,
                               /*concurrent_problems=*/false,
                               /*online_backend=*/true,
                               /*keeps_costs=*/nullptr,
                               "CUDA"};

std::string_view view(c10::string_view s) { return {s.data(), s.size()}; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, double eps, int64_t iters, c10::string_view cost,
    c10::string_view backend) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return sinkhorn_cost(kCudaKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost_backward_cuda(
    const at::Tensor& grad_cost, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& u_history,
    const at::Tensor& v_history, const at::Tensor& kept_costs, double eps, c10::string_view cost,
    c10::string_view backend) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return sinkhorn_cost_backward(kCudaKernels, grad_cost, x, y, x_weights, y_weights, u_history,
                                v_history, kept_costs, eps, view(cost), view(backend));
}

LossOutputs sinkhorn_loss_cuda(const at::Tensor& x, const at::Tensor& y,
                               const at::Tensor& x_weights, const at::Tensor& y_weights,
                               double eps, int64_t iters, c10::string_view cost,
    c10::string_view backend) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return sinkhorn_loss(kCudaKernels, x, y, x_weights, y_weights, eps, iters, view(cost),
                       view(backend));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& u_xy,
    const at::Tensor& v_xy, const at::Tensor& u_xx, const at::Tensor& v_xx,
    const at::Tensor& u_yy, const at::Tensor& v_yy, const at::Tensor& kept_costs,
    std::array<bool, 4> output_mask, double eps, c10::string_view cost, c10::string_view backend) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return sinkhorn_loss_backward(kCudaKernels, grad_loss, x, y, x_weights, y_weights, u_xy, v_xy,
                                u_xx, v_xx, u_yy, v_yy, kept_costs, output_mask, eps, view(cost),
                                view(backend));
}

}  // namespace
}  // namespace sinkhorn::ops

TORCH_LIBRARY_IMPL(sinkhorn_ext, CUDA, m) {
  m.impl("sinkhorn_cost", &sinkhorn::ops::sinkhorn_cost_cuda);
  m.impl("sinkhorn_cost_backward", &sinkhorn::ops::sinkhorn_cost_backward_cuda);
  m.impl("sinkhorn_loss", &sinkhorn::ops::sinkhorn_loss_cuda);
  m.impl("sinkhorn_loss_backward", &sinkhorn::ops::sinkhorn_loss_backward_cuda);
}
