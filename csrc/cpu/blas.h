// Matrix products from BLAS (through ATen), for the steps whose flops are a dense product:
// distances for large d, the contraction with the clouds, the rank-2L sum of the backward.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <type_traits>

namespace sinkhorn::cpu {

// A (rows, cols) row-major matrix view of plain memory, rows row_stride apart; no copy.
template <typename T>
at::Tensor matrix(const T* data, int64_t rows, int64_t cols, int64_t row_stride = -1) {
  constexpr auto dtype = std::is_same_v<T, float> ? at::kFloat : at::kDouble;
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {row_stride < 0 ? cols : row_stride, 1},
                       at::TensorOptions().dtype(dtype));
}

// out (rows, cols) = A (rows, inner) B (inner, cols).
template <typename T>
void matmul(const T* A, const T* B, int64_t rows, int64_t inner, int64_t cols, T* out) {
  at::Tensor result = matrix(out, rows, cols);
  at::mm_out(result, matrix(A, rows, inner), matrix(B, inner, cols));
}

}  // namespace sinkhorn::cpu
