// The op layer: argument checks, workspace allocation and the params struct, shared by the
// CPU and CUDA registrations, which differ only in the kernels they pass in.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "core/params.h"

namespace sinkhorn::ops {

template <typename T>
using Kernel = void (*)(const SinkhornParams<T>&);

template <typename T>
struct KernelPair {
  Kernel<T> forward;
  Kernel<T> backward;
  Kernel<T> build_costs;  // builds SinkhornParams::kept_costs; null where none are kept
};

// The kernels of one device, for each dtype.
struct Kernels {
  KernelPair<float> float32;
  KernelPair<double> float64;
  // The CUDA kernels take their workspace from the op (the caching allocator); the CPU
  // kernels allocate their own.
  bool needs_workspace;
  // Whether independent problems (the three terms of the loss) may run on separate host
  // threads at once.
  bool concurrent_problems;
  // Whether the kernels implement backend="online" (SinkhornParams::online).
  bool online_backend;
  // Whether the tensorized backend keeps C of a (batch, m, n, d) problem for the forward and
  // the backward (SinkhornParams::kept_costs, KernelPair::build_costs); null: never.
  bool (*keeps_costs)(int64_t batch, int64_t m, int64_t n, int64_t d);
  const char* device_name;

  template <typename T>
  constexpr const KernelPair<T>& of() const {
    if constexpr (std::is_same_v<T, float>) {
      return float32;
    } else {
      return float64;
    }
  }
};

// sinkhorn_ext::sinkhorn_cost: returns (W_L (B,), u_history (B, L, m), v_history (B, L, n),
// kept_costs): kept_costs is C (B, m, n) where the kernels keep it for the backward
// (Kernels::keeps_costs), and empty (0,) elsewhere.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost(
    const Kernels& kernels, const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_weights,
    const at::Tensor& y_weights, double eps, int64_t iters, std::string_view cost,
    std::string_view backend);

// sinkhorn_ext::sinkhorn_cost_backward: returns (grad_x, grad_y, grad_x_weights, grad_y_weights).
// kept_costs is the forward's; empty, C is built again.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cost_backward(
    const Kernels& kernels, const at::Tensor& grad_cost, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& u_history,
    const at::Tensor& v_history, const at::Tensor& kept_costs, double eps, std::string_view cost,
    std::string_view backend);

// sinkhorn_ext::sinkhorn_loss: 2 W_L(x, y) - W_L(x, x) - W_L(y, y) (B,), the histories of the
// three problems, in that order, and their kept costs: (loss, u_xy, v_xy, u_xx, v_xx, u_yy,
// v_yy, kept_costs). kept_costs holds C(x, y), C(x, x), C(y, y) one after the other, flat
// (B (m n + m^2 + n^2),), where the kernels keep all three, and is empty (0,) elsewhere.
using LossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor, at::Tensor>;
LossOutputs sinkhorn_loss(const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
                          const at::Tensor& x_weights, const at::Tensor& y_weights, double eps,
                          int64_t iters, std::string_view cost, std::string_view backend);

// sinkhorn_ext::sinkhorn_loss_backward: returns (grad_x, grad_y, grad_x_weights, grad_y_weights).
// kept_costs is the forward's (empty: the costs are built again). output_mask says which are
// wanted: W(x, x) is replayed only for x's, W(y, y) only for y's.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_loss_backward(
    const Kernels& kernels, const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& u_xy,
    const at::Tensor& v_xy, const at::Tensor& u_xx, const at::Tensor& v_xx,
    const at::Tensor& u_yy, const at::Tensor& v_yy, const at::Tensor& kept_costs,
    std::array<bool, 4> output_mask, double eps, std::string_view cost, std::string_view backend);

}  // namespace sinkhorn::ops
