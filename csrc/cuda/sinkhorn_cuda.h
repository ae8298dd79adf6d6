// The CUDA kernels' entry points: plain pointers in a SinkhornParams and a stream, no torch
// headers (nvcc compiles them on machines whose torch has no CUDA). Each returns the first
// CUDA error it met; csrc/ops/cuda turns it into a torch error.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace sinkhorn::cuda {

// W_L and the history (DESIGN.md section 1), as sinkhorn::cpu::sinkhorn_forward.
template <typename T>
cudaError_t sinkhorn_forward(const SinkhornParams<T>& p, cudaStream_t stream);

// The gradients from the replayed history, as sinkhorn::cpu::sinkhorn_backward. grad_matrix
// and grad_matrix_t must be zero on entry (the online backend, p.online, has neither, nor C
// and C^T).
template <typename T>
cudaError_t sinkhorn_backward(const SinkhornParams<T>& p, cudaStream_t stream);

}  // namespace sinkhorn::cuda
