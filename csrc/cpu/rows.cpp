#include "cpu/rows.h"

#include "core/softmin.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SK_CPU_CLONES
#endif

namespace sinkhorn::cpu {

#define SK_DEFINE_ROWS(T)                                                                    \
  SK_CPU_CLONES T softmin_row(const T* row, const T* h, int n, T eps) {                     \
    return sinkhorn::softmin_row<T, false>(row, h, n, eps, nullptr);                         \
  }                                                                                          \
  SK_CPU_CLONES T softmin_row_with_expected_cost(const T* row, const T* h, int n, T eps,     \
                                                 T* expected_cost) {                         \
    return sinkhorn::softmin_row<T, true>(row, h, n, eps, expected_cost);                    \
  }                                                                                          \
  SK_CPU_CLONES T softmin_adjoint_row(const T* row, const T* h, const T* adj, T s, T w,      \
                                      int n, T eps, bool terminal, T* grad_row) {            \
    return terminal                                                                          \
               ? sinkhorn::softmin_adjoint_row<T, true>(row, h, adj, s, w, n, eps, grad_row) \
               : sinkhorn::softmin_adjoint_row<T, false>(row, h, adj, s, w, n, eps,          \
                                                         grad_row);                          \
  }

SK_DEFINE_ROWS(float)
SK_DEFINE_ROWS(double)

#undef SK_DEFINE_ROWS

}  // namespace sinkhorn::cpu
