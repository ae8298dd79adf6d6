// Matrix products from BLAS (through ATen), for the steps whose flops are a dense product:
// distances and the contraction with the clouds, for large d.
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

}  // namespace sinkhorn::cpu
