#include "cpu/rows.h"

#include <cmath>

#include "core/exp.h"
#include "core/softmin.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SK_CPU_CLONES
#endif

namespace sinkhorn::cpu {
namespace {

// sum_c a_c b_c (e_c) with kLanes independent partial sums, so that the loop is bound by
// throughput rather than by the latency of one accumulator; fixed order, so deterministic.
constexpr int kLanes = 32;

template <typename T, bool WithE>
SK_INLINE T lane_dot(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ e,
                     int n) {
  T partial[kLanes] = {};
  int c0 = 0;
  for (; c0 + kLanes <= n; c0 += kLanes) {
#pragma omp simd
    for (int c = 0; c < kLanes; ++c)
      partial[c] += WithE ? a[c0 + c] * b[c0 + c] * e[c0 + c] : a[c0 + c] * b[c0 + c];
  }
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int c = c0; c < n; ++c) sum += WithE ? a[c] * b[c] * e[c] : a[c] * b[c];
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < kLanes; ++c) sum += partial[c];
  return sum;
}

// Four rows share each load of v, and their four sums hide each other's latency.
template <typename T>
SK_INLINE void matvec_impl(const T* __restrict__ M, int rows, int n, const T* __restrict__ v,
                           T* __restrict__ out) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* __restrict__ m0 = M + static_cast<long>(r) * n;
    const T* __restrict__ m1 = m0 + n;
    const T* __restrict__ m2 = m1 + n;
    const T* __restrict__ m3 = m2 + n;
    T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int c = 0; c < n; ++c) {
      const T vc = v[c];
      s0 += m0[c] * vc;
      s1 += m1[c] * vc;
      s2 += m2[c] * vc;
      s3 += m3[c] * vc;
    }
    out[r] = s0;
    out[r + 1] = s1;
    out[r + 2] = s2;
    out[r + 3] = s3;
  }
  for (; r < rows; ++r) out[r] = lane_dot<T, false>(M + static_cast<long>(r) * n, v, nullptr, n);
}

// The squared distances accumulate over k in order, as squared_distance does.
template <typename T>
SK_INLINE void cost_row_impl(const T* __restrict__ a, const T* __restrict__ bt, int d, int n,
                             Cost cost, T* __restrict__ out) {
#pragma omp simd
  for (int c = 0; c < n; ++c) out[c] = T(0);
  for (int k = 0; k < d; ++k) {
    const T ak = a[k];
    const T* __restrict__ bk = bt + static_cast<long>(k) * n;
#pragma omp simd
    for (int c = 0; c < n; ++c) {
      const T diff = ak - bk[c];
      out[c] += diff * diff;
    }
  }
  if (cost == Cost::kEuclidean) {
#pragma omp simd
    for (int c = 0; c < n; ++c) out[c] = std::sqrt(out[c]);
  }
}

}  // namespace

#define SK_DEFINE_ROWS(T)                                                                    \
  SK_CPU_CLONES void cost_row(const T* __restrict__ a, const T* __restrict__ bt, int d, int n, \
                              Cost cost, T* __restrict__ out) {                              \
    cost_row_impl(a, bt, d, n, cost, out);                                                   \
  }                                                                                          \
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
  }                                                                                          \
  SK_CPU_CLONES void exp_affine(const T* __restrict__ v, T shift, T scale, int n,            \
                                T* __restrict__ out) {                                       \
    _Pragma("omp simd") for (int c = 0; c < n; ++c) out[c] = fast_exp((v[c] - shift) * scale); \
  }                                                                                          \
  SK_CPU_CLONES void matvec(const T* M, int rows, int n, const T* v, T* out) {              \
    matvec_impl(M, rows, n, v, out);                                                         \
  }                                                                                          \
  SK_CPU_CLONES T dot(const T* __restrict__ a, const T* __restrict__ b, int n) {             \
    return lane_dot<T, false>(a, b, nullptr, n);                               \
  }                                                                                          \
  SK_CPU_CLONES T dot3(const T* __restrict__ a, const T* __restrict__ b,                     \
                       const T* __restrict__ e, int n) {                                     \
    return lane_dot<T, true>(a, b, e, n);                        \
  }                                                                                          \
  SK_CPU_CLONES void add_scaled(T alpha, const T* __restrict__ v, int n, T* __restrict__ acc) { \
    _Pragma("omp simd") for (int c = 0; c < n; ++c) acc[c] += alpha * v[c];                  \
  }                                                                                          \
  SK_CPU_CLONES void add_scaled_product(T alpha, const T* __restrict__ a,                    \
                                        const T* __restrict__ b, int n, T* __restrict__ acc) { \
    _Pragma("omp simd") for (int c = 0; c < n; ++c) acc[c] += alpha * a[c] * b[c];          \
  }

SK_DEFINE_ROWS(float)
SK_DEFINE_ROWS(double)

#undef SK_DEFINE_ROWS

}  // namespace sinkhorn::cpu
