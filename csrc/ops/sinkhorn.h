// The op layer: argument checks, workspace allocation and the params struct, shared by the
// CPU and CUDA registrations, which differ only in the kernels they pass in.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
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
  // Builds SinkhornParams::kept_costs and, where the forward would, kernel_matrix, before the
  // forward (kept_costs_built, kernel_matrix_built); null where the kernels keep no K.
  Kernel<T> build_kernel_matrix;
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
  // Whether the tensorized backend keeps C of a (batch, m, n, d) problem for its forward and,
  // if it has one, its backward (SinkhornParams::kept_costs), and who builds it; null: never.
  KeptCosts (*keeps_costs)(int64_t batch, int64_t m, int64_t n, int64_t d, bool backward);
  // Whether the tensorized forward leaves K = exp(-C / eps) for the backward
  // (SinkhornParams::kernel_matrix).
  bool shares_kernel_matrix;
  // Allocates the arrays that live for one call alone (the kept C, the shared K, the
  // histories); null: at::empty, where the device's allocator keeps them for reuse (CUDA's).
  at::Tensor (*scratch)(at::IntArrayRef sizes, const at::TensorOptions& options);
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

// The ops' inputs: clouds (m, d) and (n, d), or batches of them (B, m, d) and (B, n, d), and
// their weights, (m,) and (n,) or (B, m) and (B, n), uniform where not given. Their outputs:
// the value, () or (B,), and, for each of x, y, x_weights, y_weights that grad_mask names, the
// gradient of the value's sum with respect to it, in its shape (each problem of the batch
// depends on its own inputs alone, so that is the gradient of each value), empty (0,) for the
// others. The gradients are computed in the same call, by the replay of DESIGN.md section 1
// run right after the forward, on its potentials and, where kept, its costs.
using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// sinkhorn_ext::sinkhorn_cost: W_L(x, y).
Outputs sinkhorn_cost(const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
                      const std::optional<at::Tensor>& x_weights,
                      const std::optional<at::Tensor>& y_weights, double eps,
                      int64_t iters, std::string_view cost, std::string_view backend,
                      std::array<bool, 4> grad_mask);

// sinkhorn_ext::sinkhorn_loss: 2 W_L(x, y) - W_L(x, x) - W_L(y, y). W(x, x) is replayed only
// for the gradients of x and its weights, W(y, y) only for those of y.
Outputs sinkhorn_loss(const Kernels& kernels, const at::Tensor& x, const at::Tensor& y,
                      const std::optional<at::Tensor>& x_weights,
                      const std::optional<at::Tensor>& y_weights, double eps,
                      int64_t iters, std::string_view cost, std::string_view backend,
                      std::array<bool, 4> grad_mask);

}  // namespace sinkhorn::ops
