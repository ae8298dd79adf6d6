#include "cpu/rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/exp.h"
#include "core/softmin.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define SK_AVX512 __attribute__((target("avx512f")))
#define SK_AVX2 __attribute__((target("avx2,fma")))
#define SK_HAVE_X86_KERNELS 1
// GCC 12 reports its own AVX-512 intrinsics as reading an uninitialised value (GCC bug
// 105593): the warning is silenced for the header alone.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#define SK_CPU_CLONES
#endif

namespace sinkhorn::cpu {
namespace {

// sum_c a_c (e_c) b_c with kLanes independent partial sums, so that the loop is bound by
// throughput rather than by the latency of one accumulator; fixed order, so deterministic.
constexpr int kLanes = 32;

template <typename T, bool WithE>
SK_INLINE T lane_dot(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ e,
                     int n) {
  T partial[kLanes] = {};
  int c0 = 0;
  for (; c0 + kLanes <= n; c0 += kLanes) {
    const T* __restrict__ ac = a + c0;
    const T* __restrict__ bc = b + c0;
    const T* __restrict__ ec = WithE ? e + c0 : nullptr;
#pragma omp simd
    for (int c = 0; c < kLanes; ++c) partial[c] += WithE ? ac[c] * ec[c] * bc[c] : ac[c] * bc[c];
  }
  const T* __restrict__ ac = a + c0;
  const T* __restrict__ bc = b + c0;
  const T* __restrict__ ec = WithE ? e + c0 : nullptr;
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < n - c0; ++c) sum += WithE ? ac[c] * ec[c] * bc[c] : ac[c] * bc[c];
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < kLanes; ++c) sum += partial[c];
  return sum;
}

// sum_k (a_k - b_k)^2 in kLanes partial sums, like lane_dot.
template <typename T>
SK_INLINE T lane_squared_distance(const T* __restrict__ a, const T* __restrict__ b, int d) {
  T partial[kLanes] = {};
  int k0 = 0;
  for (; k0 + kLanes <= d; k0 += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const T diff = a[k0 + k] - b[k0 + k];
      partial[k] += diff * diff;
    }
  }
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int k = k0; k < d; ++k) sum += (a[k] - b[k]) * (a[k] - b[k]);
#pragma omp simd reduction(+ : sum)
  for (int k = 0; k < kLanes; ++k) sum += partial[k];
  return sum;
}

// Four rows share each load of v, and their four sums hide each other's latency. With
// Product, each row is the elementwise product of a row of M and one of P. (Every loop
// indexes row pointers by its counter alone, which stays contiguous to the compiler even
// under -fwrapv, Python's flag that setup.py undoes with -fno-wrapv.)
template <typename T, bool Product>
SK_INLINE void matvec_impl(const T* __restrict__ M, long m_stride, const T* __restrict__ P,
                           long p_stride, int rows, int n, const T* __restrict__ v,
                           T* __restrict__ out) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* __restrict__ m0 = M + r * m_stride;
    const T* __restrict__ m1 = m0 + m_stride;
    const T* __restrict__ m2 = m1 + m_stride;
    const T* __restrict__ m3 = m2 + m_stride;
    const T* __restrict__ p0 = Product ? P + r * p_stride : nullptr;
    const T* __restrict__ p1 = Product ? p0 + p_stride : nullptr;
    const T* __restrict__ p2 = Product ? p1 + p_stride : nullptr;
    const T* __restrict__ p3 = Product ? p2 + p_stride : nullptr;
    T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int c = 0; c < n; ++c) {
      const T vc = v[c];
      if (Product) {
        s0 += m0[c] * p0[c] * vc;
        s1 += m1[c] * p1[c] * vc;
        s2 += m2[c] * p2[c] * vc;
        s3 += m3[c] * p3[c] * vc;
      } else {
        s0 += m0[c] * vc;
        s1 += m1[c] * vc;
        s2 += m2[c] * vc;
        s3 += m3[c] * vc;
      }
    }
    out[r] = s0;
    out[r + 1] = s1;
    out[r + 2] = s2;
    out[r + 3] = s3;
  }
  for (; r < rows; ++r)
    out[r] = lane_dot<T, Product>(M + r * m_stride, v, Product ? P + r * p_stride : nullptr, n);
}

#if SK_HAVE_X86_KERNELS
// The kernels written by hand for AVX-512 (chosen at run time, has_avx512), on the lane
// operations of Avx512<T>.
template <typename T>
struct Avx512;

// a in every lane
SK_AVX512 SK_INLINE __m512 all(float a) { return _mm512_set1_ps(a); }
SK_AVX512 SK_INLINE __m512d all(double a) { return _mm512_set1_pd(a); }

// Lane operations of one precision. The masked ones leave the lanes outside k as they were
// (src, or c for fma).
template <>
struct Avx512<float> {
  using Vec = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  // The first min(count, kLanes) lanes.
  SK_AVX512 static Mask first(int count) {
    return static_cast<Mask>(count >= kLanes ? 0xFFFFu : (1u << count) - 1);
  }
  SK_AVX512 static Vec zero() { return _mm512_setzero_ps(); }
  SK_AVX512 static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  SK_AVX512 static Vec load(Mask k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
  SK_AVX512 static void store(float* p, Vec a) { _mm512_storeu_ps(p, a); }
  SK_AVX512 static void store(Mask k, float* p, Vec a) { _mm512_mask_storeu_ps(p, k, a); }
  SK_AVX512 static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  SK_AVX512 static Vec add(Mask k, Vec src, Vec b) { return _mm512_mask_add_ps(src, k, src, b); }
  SK_AVX512 static Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  SK_AVX512 static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  SK_AVX512 static Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
  SK_AVX512 static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  SK_AVX512 static Vec fma(Mask k, Vec a, Vec b, Vec c) {
    return _mm512_mask3_fmadd_ps(a, b, c, k);
  }
  // max(a, src) in the lanes of k; where a is NaN, src.
  SK_AVX512 static Vec max(Mask k, Vec a, Vec src) { return _mm512_mask_max_ps(src, k, a, src); }
  SK_AVX512 static Mask less(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  SK_AVX512 static Mask greater(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  SK_AVX512 static Mask equal(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  SK_AVX512 static Vec zero_where(Mask k, Vec a) { return _mm512_mask_mov_ps(a, k, zero()); }
  SK_AVX512 static Vec max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  // Neighbouring groups of width lanes swapped, for the reductions (reduce_add). The masked
  // shuffles with every lane set are the plain ones, which trip GCC bug 105593 here (as
  // _mm512_reduce_* do).
  SK_AVX512 static Vec swap(Vec a, int width) {
    switch (width) {
      case 8: return _mm512_mask_shuffle_f32x4(a, 0xFFFF, a, a, 0x4E);
      case 4: return _mm512_mask_shuffle_f32x4(a, 0xFFFF, a, a, 0xB1);
      case 2: return _mm512_mask_permute_ps(a, 0xFFFF, a, 0x4E);
      default: return _mm512_mask_permute_ps(a, 0xFFFF, a, 0xB1);
    }
  }
  SK_AVX512 static float first_lane(Vec a) { return _mm512_cvtss_f32(a); }
  // fast_exp (core/exp.h) of every lane: its arithmetic with the products and sums fused as
  // the compiler fuses them, and 2^n applied by one vscalef (which rounds once, as fast_exp's
  // two exact factors do) in place of the factors' bits and selects. max and min return their
  // second operand where either is NaN, so a NaN x goes through; x > kMax overflows to inf
  // through xc = kMax; x < kMin gives 0.
  SK_AVX512 static Vec exp(Vec x) {
    using E = ExpConstants<float>;
    const Vec xc = _mm512_min_ps(all(E::kMax), _mm512_max_ps(all(E::kMin), x));
    const Vec n = sub(fma(xc, all(E::kLog2e), all(E::kRound)), all(E::kRound));
    Vec r = _mm512_fnmadd_ps(n, all(E::kLn2Hi), xc);
    r = _mm512_fnmadd_ps(n, all(E::kLn2Lo), r);
    Vec p = all(E::kP[0]);
    for (int k = 1; k < 6; ++k) p = fma(p, r, all(E::kP[k]));
    p = add(fma(mul(p, r), r, r), all(1.0f));
    return zero_where(less(x, all(E::kMin)), _mm512_scalef_ps(p, n));
  }
  // The sums of the 16 lanes of each of a[0..7], in order, into out[0..7].
  SK_AVX512 static void store_sums(const Vec* a, float* out) {
    Vec quarters[4];  // rows 2q, 2q + 1: 8 partial sums each, one 256-bit half per row
    for (int q = 0; q < 4; ++q)
      quarters[q] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * q], a[2 * q + 1], 0x44),
                                  _mm512_shuffle_f32x4(a[2 * q], a[2 * q + 1], 0xEE));
    // Rows 0-3 and 4-7: 4 partial sums each, one 128-bit lane per row.
    const Vec low = _mm512_add_ps(_mm512_shuffle_f32x4(quarters[0], quarters[1], 0x88),
                                  _mm512_shuffle_f32x4(quarters[0], quarters[1], 0xDD));
    const Vec high = _mm512_add_ps(_mm512_shuffle_f32x4(quarters[2], quarters[3], 0x88),
                                   _mm512_shuffle_f32x4(quarters[2], quarters[3], 0xDD));
    // Lane k: rows k and k + 4, 2 partial sums each, then 1.
    Vec pairs = _mm512_add_ps(_mm512_unpacklo_ps(low, high), _mm512_unpackhi_ps(low, high));
    pairs = _mm512_add_ps(pairs, _mm512_permute_ps(pairs, 0x4E));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm256_storeu_ps(out, _mm512_castps512_ps256(_mm512_permutexvar_ps(order, pairs)));
  }
};

template <>
struct Avx512<double> {
  using Vec = __m512d;
  using Mask = __mmask8;
  static constexpr int kLanes = 8;
  SK_AVX512 static Mask first(int count) {
    return static_cast<Mask>(count >= kLanes ? 0xFFu : (1u << count) - 1);
  }
  SK_AVX512 static Vec zero() { return _mm512_setzero_pd(); }
  SK_AVX512 static Vec load(const double* p) { return _mm512_loadu_pd(p); }
  SK_AVX512 static Vec load(Mask k, const double* p) { return _mm512_maskz_loadu_pd(k, p); }
  SK_AVX512 static void store(double* p, Vec a) { _mm512_storeu_pd(p, a); }
  SK_AVX512 static void store(Mask k, double* p, Vec a) { _mm512_mask_storeu_pd(p, k, a); }
  SK_AVX512 static Vec add(Vec a, Vec b) { return _mm512_add_pd(a, b); }
  SK_AVX512 static Vec add(Mask k, Vec src, Vec b) { return _mm512_mask_add_pd(src, k, src, b); }
  SK_AVX512 static Vec sub(Vec a, Vec b) { return _mm512_sub_pd(a, b); }
  SK_AVX512 static Vec mul(Vec a, Vec b) { return _mm512_mul_pd(a, b); }
  SK_AVX512 static Vec div(Vec a, Vec b) { return _mm512_div_pd(a, b); }
  SK_AVX512 static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_pd(a, b, c); }
  SK_AVX512 static Vec fma(Mask k, Vec a, Vec b, Vec c) {
    return _mm512_mask3_fmadd_pd(a, b, c, k);
  }
  SK_AVX512 static Vec max(Mask k, Vec a, Vec src) { return _mm512_mask_max_pd(src, k, a, src); }
  SK_AVX512 static Mask less(Vec a, Vec b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
  SK_AVX512 static Mask greater(Vec a, Vec b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
  SK_AVX512 static Mask equal(Vec a, Vec b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
  SK_AVX512 static Vec zero_where(Mask k, Vec a) { return _mm512_mask_mov_pd(a, k, zero()); }
  SK_AVX512 static Vec max(Vec a, Vec b) { return _mm512_max_pd(a, b); }
  SK_AVX512 static Vec swap(Vec a, int width) {
    switch (width) {
      case 4: return _mm512_mask_shuffle_f64x2(a, 0xFF, a, a, 0x4E);
      case 2: return _mm512_mask_shuffle_f64x2(a, 0xFF, a, a, 0xB1);
      default: return _mm512_mask_permute_pd(a, 0xFF, a, 0x55);
    }
  }
  SK_AVX512 static double first_lane(Vec a) { return _mm512_cvtsd_f64(a); }
  // fast_exp of every lane, as in Avx512<float>.
  SK_AVX512 static Vec exp(Vec x) {
    using E = ExpConstants<double>;
    const Vec xc = _mm512_min_pd(all(E::kMax), _mm512_max_pd(all(E::kMin), x));
    const Vec n = sub(fma(xc, all(E::kLog2e), all(E::kRound)), all(E::kRound));
    Vec r = _mm512_fnmadd_pd(n, all(E::kLn2Hi), xc);
    r = _mm512_fnmadd_pd(n, all(E::kLn2Lo), r);
    const Vec rr = mul(r, r);
    Vec p = all(E::kP[0]);
    for (int k = 1; k < 3; ++k) p = fma(p, rr, all(E::kP[k]));
    p = mul(p, r);
    Vec q = all(E::kQ[0]);
    for (int k = 1; k < 4; ++k) q = fma(q, rr, all(E::kQ[k]));
    const Vec e = fma(all(2.0), div(p, sub(q, p)), all(1.0));
    return zero_where(less(x, all(E::kMin)), _mm512_scalef_pd(e, n));
  }
  SK_AVX512 static void store_sums(const Vec* a, double* out) {
    Vec quarters[4];  // rows 2q, 2q + 1: 4 partial sums each
    for (int q = 0; q < 4; ++q)
      quarters[q] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * q], a[2 * q + 1], 0x44),
                                  _mm512_shuffle_f64x2(a[2 * q], a[2 * q + 1], 0xEE));
    const Vec low = _mm512_add_pd(_mm512_shuffle_f64x2(quarters[0], quarters[1], 0x88),
                                  _mm512_shuffle_f64x2(quarters[0], quarters[1], 0xDD));
    const Vec high = _mm512_add_pd(_mm512_shuffle_f64x2(quarters[2], quarters[3], 0x88),
                                   _mm512_shuffle_f64x2(quarters[2], quarters[3], 0xDD));
    // Lane k: rows k and k + 4.
    const Vec pairs =
        _mm512_add_pd(_mm512_unpacklo_pd(low, high), _mm512_unpackhi_pd(low, high));
    const __m512i order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
    _mm512_storeu_pd(out, _mm512_permutexvar_pd(order, pairs));
  }
};

// The sum and the max of the lanes of a, by halving.
template <typename V>
SK_AVX512 SK_INLINE auto reduce_add(typename V::Vec a) {
  for (int width = V::kLanes / 2; width >= 1; width /= 2) a = V::add(a, V::swap(a, width));
  return V::first_lane(a);
}

template <typename V>
SK_AVX512 SK_INLINE auto reduce_max(typename V::Vec a) {
  for (int width = V::kLanes / 2; width >= 1; width /= 2) a = V::max(a, V::swap(a, width));
  return V::first_lane(a);
}

// matvec by hand for AVX-512, where the compiler's code for matvec_impl falls short at the
// paper's sizes: eight rows share each load of v (eight accumulators cover the latency of the
// multiply-adds), the last columns go through masked loads rather than a scalar loop, and the
// eight row sums come out of one transposing reduction instead of eight horizontal ones.
// The rows of matvec in blocks of eight (rows left over: one at a time, alike).
template <typename T, int Rows>
SK_AVX512 SK_INLINE void matvec_rows_avx512(const T* __restrict__ M, long stride, int n,
                                            const T* __restrict__ v, T* __restrict__ out) {
  using V = Avx512<T>;
  constexpr int W = V::kLanes;
  const auto tail = V::first(n % W);
  typename V::Vec acc[8];
  for (int q = 0; q < Rows; ++q) acc[q] = V::zero();
  int c = 0;
  for (; c + W <= n; c += W) {
    const auto vc = V::load(v + c);
    for (int q = 0; q < Rows; ++q)
      acc[q] = V::fma(V::load(M + q * stride + c), vc, acc[q]);
  }
  if (tail != 0) {
    const auto vc = V::load(tail, v + c);
    for (int q = 0; q < Rows; ++q)
      acc[q] = V::fma(V::load(tail, M + q * stride + c), vc, acc[q]);
  }
  for (int q = Rows; q < 8; ++q) acc[q] = V::zero();
  T sums[8];
  V::store_sums(acc, sums);
  for (int q = 0; q < Rows; ++q) out[q] = sums[q];
}

template <typename T>
SK_AVX512 void matvec_avx512(const T* M, long stride, int rows, int n, const T* v, T* out) {
  int r = 0;
  for (; r + 8 <= rows; r += 8) matvec_rows_avx512<T, 8>(M + r * stride, stride, n, v, out + r);
  for (; r < rows; ++r) matvec_rows_avx512<T, 1>(M + r * stride, stride, n, v, out + r);
}

// matvec_transposed by hand for AVX-512: a block of up to kColumnVectors vectors of columns
// stays in registers through all the rows, one multiply-add per element of M, where the
// compiler's code for matvec_transposed_impl loads and stores acc for every four rows (about
// 0.75 of its time at 200 columns). Each column sums its rows in order. The last vector of a
// block is masked to the columns left.
constexpr int kColumnVectors = 8;

template <typename T, int Vectors>
SK_AVX512 SK_INLINE void transposed_block_avx512(
    const T* __restrict__ M, long stride, int rows, typename Avx512<T>::Mask last,
    const T* __restrict__ v, T* __restrict__ acc) {
  using V = Avx512<T>;
  constexpr int W = V::kLanes;
  typename V::Vec sums[Vectors];
  // Unrolled, so that the sums stay in registers (GCC 12 otherwise keeps the array in memory).
#pragma GCC unroll 16
  for (int q = 0; q < Vectors - 1; ++q) sums[q] = V::load(acc + q * W);
  sums[Vectors - 1] = V::load(last, acc + (Vectors - 1) * W);
  for (int r = 0; r < rows; ++r) {
    const T* __restrict__ row = M + r * stride;
    const auto vr = all(v[r]);
#pragma GCC unroll 16
    for (int q = 0; q < Vectors - 1; ++q) sums[q] = V::fma(V::load(row + q * W), vr, sums[q]);
    sums[Vectors - 1] = V::fma(V::load(last, row + (Vectors - 1) * W), vr, sums[Vectors - 1]);
  }
#pragma GCC unroll 16
  for (int q = 0; q < Vectors - 1; ++q) V::store(acc + q * W, sums[q]);
  V::store(last, acc + (Vectors - 1) * W, sums[Vectors - 1]);
}

template <typename T>
SK_AVX512 void matvec_transposed_avx512(const T* M, int rows, long stride, int width,
                                        const T* v, T* acc) {
  using V = Avx512<T>;
  constexpr int W = V::kLanes;
  for (int c0 = 0; c0 < width; c0 += kColumnVectors * W) {
    const int left = width - c0;
    const int vectors = std::min(kColumnVectors, (left + W - 1) / W);
    const auto last = V::first(left - (vectors - 1) * W);  // the columns in the last vector
    const T* block = M + c0;
    T* block_acc = acc + c0;
    switch (vectors) {
      case 1: transposed_block_avx512<T, 1>(block, stride, rows, last, v, block_acc); break;
      case 2: transposed_block_avx512<T, 2>(block, stride, rows, last, v, block_acc); break;
      case 3: transposed_block_avx512<T, 3>(block, stride, rows, last, v, block_acc); break;
      case 4: transposed_block_avx512<T, 4>(block, stride, rows, last, v, block_acc); break;
      case 5: transposed_block_avx512<T, 5>(block, stride, rows, last, v, block_acc); break;
      case 6: transposed_block_avx512<T, 6>(block, stride, rows, last, v, block_acc); break;
      case 7: transposed_block_avx512<T, 7>(block, stride, rows, last, v, block_acc); break;
      default: transposed_block_avx512<T, 8>(block, stride, rows, last, v, block_acc);
    }
  }
}

// exp_affine by hand for AVX-512 (Avx512<T>::exp): the same results as the compiler's code
// for the loop in about 0.55 of its time.
template <typename T>
SK_AVX512 void exp_affine_avx512(const T* v, T shift, T scale, int n, T* out) {
  using V = Avx512<T>;
  for (int c = 0; c < n; c += V::kLanes) {
    const auto in = V::first(n - c);
    V::store(in, out + c, V::exp(V::mul(V::sub(V::load(in, v + c), all(shift)), all(scale))));
  }
}

// softmin_row_sums (core/softmin.h) by hand for AVX-512: the maximum and the sums in
// kLanes partial ones, exp in lanes (Avx512<T>::exp), and the last columns through masked
// loads, where the compiler's code takes them one at a time. In float, about 0.55 of the
// time of the compiler's code for rows of 200 costs, 0.7 for rows of 1000.
template <typename T, bool WithExpectedCost>
SK_AVX512 RowSums<T> softmin_row_sums_avx512(const T* row, const T* h, int n, T eps) {
  using V = Avx512<T>;
  const auto inv_eps = all(T(1) / eps);
  const auto minus_infinity = all(-std::numeric_limits<T>::infinity());
  auto max_t = minus_infinity;
  for (int c = 0; c < n; c += V::kLanes) {
    const auto in = V::first(n - c);
    const auto t = V::mul(V::sub(V::load(in, h + c), V::load(in, row + c)), inv_eps);
    max_t = V::max(in, t, max_t);  // a NaN t is skipped here, and propagates through its exp
  }
  const T shift = reduce_max<V>(max_t);
  auto sum = V::zero(), cost = V::zero();
  for (int c = 0; c < n; c += V::kLanes) {
    const auto in = V::first(n - c);
    const auto M = V::load(in, row + c);
    const auto t = V::mul(V::sub(V::load(in, h + c), M), inv_eps);
    // A term at t = -inf has no mass (its exp(t - shift) is NaN where shift is -inf too).
    const auto mass = static_cast<typename V::Mask>(in & ~V::equal(t, minus_infinity));
    const auto e = V::exp(V::sub(t, all(shift)));
    sum = V::add(mass, sum, e);
    if (WithExpectedCost) cost = V::fma(mass, M, e, cost);
  }
  return {shift, reduce_add<V>(sum), WithExpectedCost ? reduce_add<V>(cost) : T(0)};
}

// The adjoint terms of kLanes columns (core/softmin.h adjoint_term): returns their terms of
// out_r and writes their contributions to G_rc (w_r a_c e_rc, or at the last level
// w_r e_rc (a_c + 1 - M_rc / eps)) to grad.
template <typename T, bool Terminal>
SK_AVX512 SK_INLINE typename Avx512<T>::Vec adjoint_lanes(
    typename Avx512<T>::Vec M, typename Avx512<T>::Vec h, typename Avx512<T>::Vec adj, T s, T w,
    T inv_eps, typename Avx512<T>::Vec& grad) {
  using V = Avx512<T>;
  const auto e = V::exp(V::mul(V::sub(V::add(all(s), h), M), all(inv_eps)));
  const auto we = V::mul(all(w), e);
  if (Terminal) {
    const auto scaled_cost = V::mul(M, all(inv_eps));
    grad = V::mul(we, V::sub(V::add(adj, all(T(1))), scaled_cost));
    return V::mul(V::sub(scaled_cost, adj), e);
  }
  grad = V::mul(we, adj);
  return V::mul(V::sub(V::zero(), adj), e);
}

// softmin_adjoint_row (core/softmin.h) by hand for AVX-512, like softmin_row_sums_avx512.
template <typename T, bool Terminal>
SK_AVX512 T softmin_adjoint_row_avx512(const T* row, const T* h, const T* adj, T s, T w, int n,
                                       T eps, T* grad_row) {
  using V = Avx512<T>;
  const T inv_eps = T(1) / eps;
  auto out = V::zero();
  for (int c = 0; c < n; c += V::kLanes) {
    const auto in = V::first(n - c);
    typename V::Vec grad;
    const auto term = adjoint_lanes<T, Terminal>(V::load(in, row + c), V::load(in, h + c),
                                                 V::load(in, adj + c), s, w, inv_eps, grad);
    out = V::add(in, out, term);
    V::store(in, grad_row + c, V::add(V::load(in, grad_row + c), grad));
  }
  return reduce_add<V>(out);
}

// adjoint_piece (the online backend's) by hand for AVX-512: softmin_adjoint_row_avx512's terms,
// with gk_c = (contribution to G_rc) k(M_rc) written instead of added to G.
template <typename T, bool Terminal>
SK_AVX512 T adjoint_piece_avx512(const T* row, const T* h, const T* adj, T s, T w, int n, T eps,
                                 Cost cost, T* gk) {
  using V = Avx512<T>;
  const T inv_eps = T(1) / eps;
  auto out = V::zero();
  for (int c = 0; c < n; c += V::kLanes) {
    const auto in = V::first(n - c);
    const auto M = V::load(in, row + c);
    typename V::Vec grad;
    const auto term = adjoint_lanes<T, Terminal>(M, V::load(in, h + c), V::load(in, adj + c), s,
                                                 w, inv_eps, grad);
    out = V::add(in, out, term);
    // k(M) (core/cost.h cost_slope): 2 for the squared distance, 1 / M for the distance (0 at
    // M = 0).
    const auto slope_grad = cost == Cost::kSqEuclidean
                                ? V::mul(grad, all(T(2)))
                                : V::zero_where(static_cast<typename V::Mask>(
                                                    ~V::greater(M, V::zero())),
                                                V::div(grad, M));
    V::store(in, gk + c, slope_grad);
  }
  return reduce_add<V>(out);
}

bool has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}
bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}
#endif

// With Product, each row is the elementwise product of a row of M and one of P.
template <typename T, bool Product>
SK_INLINE void matvec_transposed_impl(const T* __restrict__ M, long stride,
                                      const T* __restrict__ P, long p_stride, int rows,
                                      int width, const T* __restrict__ v, T* __restrict__ acc) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* __restrict__ m0 = M + r * stride;
    const T* __restrict__ m1 = m0 + stride;
    const T* __restrict__ m2 = m1 + stride;
    const T* __restrict__ m3 = m2 + stride;
    const T v0 = v[r], v1 = v[r + 1], v2 = v[r + 2], v3 = v[r + 3];
    if (Product) {
      const T* __restrict__ p0 = P + r * p_stride;
      const T* __restrict__ p1 = p0 + p_stride;
      const T* __restrict__ p2 = p1 + p_stride;
      const T* __restrict__ p3 = p2 + p_stride;
#pragma omp simd
      for (int c = 0; c < width; ++c)
        acc[c] += v0 * (m0[c] * p0[c]) + v1 * (m1[c] * p1[c]) + v2 * (m2[c] * p2[c]) +
                  v3 * (m3[c] * p3[c]);
    } else {
#pragma omp simd
      for (int c = 0; c < width; ++c)
        acc[c] += v0 * m0[c] + v1 * m1[c] + v2 * m2[c] + v3 * m3[c];
    }
  }
  for (; r < rows; ++r) {
    const T* __restrict__ m0 = M + r * stride;
    const T* __restrict__ p0 = Product ? P + r * p_stride : nullptr;
    const T v0 = v[r];
#pragma omp simd
    for (int c = 0; c < width; ++c) acc[c] += v0 * (Product ? m0[c] * p0[c] : m0[c]);
  }
}

// Vectors of Bytes bytes in GCC's vector extensions: the register blocks of
// scaling_gradient_rows, written once for every width (scaling_gradient_rows_dispatch), and
// the AVX2 matvec and matvec_transposed.
template <typename T, int Bytes>
struct Vector {
  typedef T type __attribute__((vector_size(Bytes)));
};

// H = K (rank + t_row t_column (1 - C / eps)) k(C) in the lanes of a vector (core/cost.h
// cost_slope: 2, or 1 / C where C > 0 and 0 elsewhere).
template <typename Vec, typename T>
SK_INLINE void gradient_lanes(const Vec& K, const Vec& rank, const Vec& C, T t_row,
                              const Vec& t_column, T inv_eps, Cost cost, Vec& H) {
  H = K * (rank + t_row * t_column * (T(1) - C * inv_eps));
  H = cost == Cost::kSqEuclidean ? H * T(2) : H * (C > T(0) ? T(1) / C : Vec{});
}

constexpr int kGradientVectors = 2;  // per row of a register block
constexpr int kGradientRows = 4;     // rows of a register block
// Columns of F read per pass of the row blocks over them, in bytes of a row: R of these
// rows stay in cache while every row block reads them.
constexpr int kGradientChunkBytes = 2048;

// The columns of a register block of vectors of Bytes bytes: a divisor of
// gradient_block_columns<T>(), to which F's rows are padded.
template <typename T, int Bytes>
constexpr int gradient_register_columns() {
  return kGradientVectors * Bytes / static_cast<int>(sizeof(T));
}

// scaling_gradient_rows for Rows rows and the gradient_register_columns columns from c0 (those
// below n written): the rank-R sums in Rows x kGradientVectors registers, over k in order,
// then the rows of H. The K and C of the next block are fetched meanwhile (they come from
// memory at large sizes; the sums take R multiply-adds per element).
template <typename T, int Bytes, int Rows>
SK_INLINE void scaling_gradient_block(T* __restrict__ K, long k_stride, const T* __restrict__ A,
                                      int R, const T* __restrict__ F, long f_stride,
                                      const T* __restrict__ C, long c_stride,
                                      const T* __restrict__ t_row,
                                      const T* __restrict__ t_column, T inv_eps, int n, int c0,
                                      Cost cost) {
  using Vec = typename Vector<T, Bytes>::type;
  constexpr int W = Bytes / static_cast<int>(sizeof(T));
  constexpr int kColumns = gradient_register_columns<T, Bytes>();
  if (c0 + 2 * kColumns <= n) {
#pragma GCC unroll 4
    for (int q = 0; q < Rows; ++q) {
#pragma GCC unroll 4
      for (int v = 0; v < kGradientVectors; ++v) {
        __builtin_prefetch(K + q * k_stride + c0 + kColumns + v * W);
        __builtin_prefetch(C + q * c_stride + c0 + kColumns + v * W);
      }
    }
  }
  Vec acc[Rows][kGradientVectors];
#pragma GCC unroll 4
  for (int q = 0; q < Rows; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < kGradientVectors; ++v) acc[q][v] = Vec{};
  for (int k = 0; k < R; ++k) {
    Vec f[kGradientVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kGradientVectors; ++v)
      std::memcpy(&f[v], F + k * f_stride + c0 + v * W, sizeof(Vec));
#pragma GCC unroll 4
    for (int q = 0; q < Rows; ++q) {
      const T a = A[q * R + k];
#pragma GCC unroll 4
      for (int v = 0; v < kGradientVectors; ++v) acc[q][v] += a * f[v];
    }
  }
  if (c0 + kColumns <= n) {  // the rows of H straight from the registers
    Vec t_col[kGradientVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kGradientVectors; ++v)
      std::memcpy(&t_col[v], t_column + c0 + v * W, sizeof(Vec));
#pragma GCC unroll 4
    for (int q = 0; q < Rows; ++q) {
#pragma GCC unroll 4
      for (int v = 0; v < kGradientVectors; ++v) {
        T* K_at = K + q * k_stride + c0 + v * W;
        Vec k, c;
        std::memcpy(&k, K_at, sizeof(Vec));
        std::memcpy(&c, C + q * c_stride + c0 + v * W, sizeof(Vec));
        Vec h;
        gradient_lanes(k, acc[q][v], c, t_row[q], t_col[v], inv_eps, cost, h);
        std::memcpy(K_at, &h, sizeof(Vec));
      }
    }
    return;
  }
  // The last block of a row, cut short at n: through copies padded with zeros.
  const int width = n - c0;
  T t_col[kColumns] = {};
  std::memcpy(t_col, t_column + c0, sizeof(T) * width);
  for (int q = 0; q < Rows; ++q) {
    T k[kColumns] = {}, c[kColumns] = {}, h[kColumns];
    std::memcpy(k, K + q * k_stride + c0, sizeof(T) * width);
    std::memcpy(c, C + q * c_stride + c0, sizeof(T) * width);
    for (int v = 0; v < kGradientVectors; ++v) {
      Vec kv, cv, tv, hv;
      std::memcpy(&kv, k + v * W, sizeof(Vec));
      std::memcpy(&cv, c + v * W, sizeof(Vec));
      std::memcpy(&tv, t_col + v * W, sizeof(Vec));
      gradient_lanes(kv, acc[q][v], cv, t_row[q], tv, inv_eps, cost, hv);
      std::memcpy(h + v * W, &hv, sizeof(Vec));
    }
    std::memcpy(K + q * k_stride + c0, h, sizeof(T) * width);
  }
}

// Register blocks of vectors of Bytes bytes: kGradientRows x kGradientVectors accumulators,
// with the vectors of F beside them, fit the machine's registers (8 zmm of 32 on AVX-512,
// 8 ymm of 16 on AVX2). Blocks too wide for the registers spill their sums to the stack on
// every multiply-add.
template <typename T, int Bytes>
SK_INLINE void scaling_gradient_rows_impl(T* K, long k_stride, const T* A, int R, const T* F,
                                          long f_stride, const T* C, long c_stride,
                                          const T* t_row, const T* t_column, T inv_eps, int rows,
                                          int n, Cost cost) {
  constexpr int kColumns = gradient_register_columns<T, Bytes>();
  static_assert(gradient_block_columns<T>() % kColumns == 0,
                "F's padding must hold whole register blocks");
  constexpr int kChunk = kGradientChunkBytes / static_cast<int>(sizeof(T));
  for (int chunk = 0; chunk < n; chunk += kChunk) {
    const int chunk_end = std::min(n, chunk + kChunk);
    for (int r = 0; r < rows; r += kGradientRows) {
      T* K_rows = K + r * k_stride;
      const T* A_rows = A + static_cast<long>(r) * R;
      const T* C_rows = C + r * c_stride;
      for (int c0 = chunk; c0 < chunk_end; c0 += kColumns) {
        switch (std::min(kGradientRows, rows - r)) {
          case 1:
            scaling_gradient_block<T, Bytes, 1>(K_rows, k_stride, A_rows, R, F, f_stride, C_rows,
                                                c_stride, t_row + r, t_column, inv_eps, n, c0,
                                                cost);
            break;
          case 2:
            scaling_gradient_block<T, Bytes, 2>(K_rows, k_stride, A_rows, R, F, f_stride, C_rows,
                                                c_stride, t_row + r, t_column, inv_eps, n, c0,
                                                cost);
            break;
          case 3:
            scaling_gradient_block<T, Bytes, 3>(K_rows, k_stride, A_rows, R, F, f_stride, C_rows,
                                                c_stride, t_row + r, t_column, inv_eps, n, c0,
                                                cost);
            break;
          default:
            scaling_gradient_block<T, Bytes, kGradientRows>(K_rows, k_stride, A_rows, R, F,
                                                            f_stride, C_rows, c_stride,
                                                            t_row + r, t_column, inv_eps, n, c0,
                                                            cost);
        }
      }
    }
  }
}

#if SK_HAVE_X86_KERNELS
template <typename T>
SK_AVX512 void scaling_gradient_rows_avx512(T* K, long k_stride, const T* A, int R, const T* F,
                                            long f_stride, const T* C, long c_stride,
                                            const T* t_row, const T* t_column, T inv_eps,
                                            int rows, int n, Cost cost) {
  scaling_gradient_rows_impl<T, 64>(K, k_stride, A, R, F, f_stride, C, c_stride, t_row, t_column,
                                    inv_eps, rows, n, cost);
}
template <typename T>
SK_AVX2 void scaling_gradient_rows_avx2(T* K, long k_stride, const T* A, int R, const T* F,
                                        long f_stride, const T* C, long c_stride, const T* t_row,
                                        const T* t_column, T inv_eps, int rows, int n,
                                        Cost cost) {
  scaling_gradient_rows_impl<T, 32>(K, k_stride, A, R, F, f_stride, C, c_stride, t_row, t_column,
                                    inv_eps, rows, n, cost);
}

// matvec and matvec_transposed in vectors of Bytes bytes (GCC's vector extensions), for the
// machines where AVX2 is the widest (matvec_avx2, matvec_transposed_avx2), laid out as the
// AVX-512 kernels: eight rows share each load of v in matvec, where the compiler's code for
// matvec_impl keeps four sums, too few to cover the latency of their multiply-adds; a block
// of columns stays in registers through all the rows in matvec_transposed, where the
// compiler's code loads and stores acc for every four rows. The columns past the last whole
// vector go in one more vector, masked to them (AVX2's masked loads, so Bytes is 32), as on
// AVX-512: in matvec_transposed one at a time, each chain of multiply-adds waiting on the
// last, they took about a tenth of its time at 204 columns.
template <typename T, int Bytes>
SK_INLINE T sum_of_lanes(const typename Vector<T, Bytes>::type& a) {
  if constexpr (Bytes == 2 * sizeof(T)) {
    return a[0] + a[1];
  } else {
    using Half = typename Vector<T, Bytes / 2>::type;
    Half low, high;
    std::memcpy(&low, &a, sizeof(Half));
    std::memcpy(&high, reinterpret_cast<const char*>(&a) + sizeof(Half), sizeof(Half));
    return sum_of_lanes<T, Bytes / 2>(low + high);
  }
}

// AVX2's masked loads and stores of the first count lanes (the columns past the last whole
// vector), zeros in the others.
SK_AVX2 SK_INLINE __m256i first_lanes(float, int count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
SK_AVX2 SK_INLINE __m256i first_lanes(double, int count) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
}
SK_AVX2 SK_INLINE __m256 masked_load(const float* p, __m256i lanes) {
  return _mm256_maskload_ps(p, lanes);
}
SK_AVX2 SK_INLINE __m256d masked_load(const double* p, __m256i lanes) {
  return _mm256_maskload_pd(p, lanes);
}
SK_AVX2 SK_INLINE void masked_store(float* p, __m256i lanes, __m256 a) {
  _mm256_maskstore_ps(p, lanes, a);
}
SK_AVX2 SK_INLINE void masked_store(double* p, __m256i lanes, __m256d a) {
  _mm256_maskstore_pd(p, lanes, a);
}

template <typename T, int Bytes, int Rows>
SK_AVX2 SK_INLINE void matvec_rows_vectors(const T* __restrict__ M, long stride, int n,
                                           const T* __restrict__ v, T* __restrict__ out) {
  static_assert(Bytes == 32, "the masked last columns are AVX2's");
  using Vec = typename Vector<T, Bytes>::type;
  constexpr int W = Bytes / static_cast<int>(sizeof(T));
  Vec acc[Rows];
#pragma GCC unroll 8
  for (int q = 0; q < Rows; ++q) acc[q] = Vec{};
  int c = 0;
  for (; c + W <= n; c += W) {
    Vec vc;
    std::memcpy(&vc, v + c, sizeof(Vec));
#pragma GCC unroll 8
    for (int q = 0; q < Rows; ++q) {
      Vec row;
      std::memcpy(&row, M + q * stride + c, sizeof(Vec));
      acc[q] += row * vc;
    }
  }
  if (c < n) {
    const __m256i lanes = first_lanes(T(), n - c);
    const Vec vc = masked_load(v + c, lanes);
#pragma GCC unroll 8
    for (int q = 0; q < Rows; ++q)
      acc[q] += Vec(masked_load(M + q * stride + c, lanes)) * vc;
  }
#pragma GCC unroll 8
  for (int q = 0; q < Rows; ++q) out[q] = sum_of_lanes<T, Bytes>(acc[q]);
}

template <typename T, int Bytes>
SK_AVX2 SK_INLINE void matvec_vectors(const T* M, long stride, int rows, int n, const T* v,
                                      T* out) {
  int r = 0;
  for (; r + 8 <= rows; r += 8)
    matvec_rows_vectors<T, Bytes, 8>(M + r * stride, stride, n, v, out + r);
  for (; r < rows; ++r) matvec_rows_vectors<T, Bytes, 1>(M + r * stride, stride, n, v, out + r);
}

template <typename T, int Bytes, int Vectors>
SK_AVX2 SK_INLINE void transposed_block_vectors(const T* __restrict__ M, long stride, int rows,
                                                const T* __restrict__ v, T* __restrict__ acc) {
  using Vec = typename Vector<T, Bytes>::type;
  constexpr int W = Bytes / static_cast<int>(sizeof(T));
  Vec sums[Vectors];
#pragma GCC unroll 8
  for (int q = 0; q < Vectors; ++q) std::memcpy(&sums[q], acc + q * W, sizeof(Vec));
  for (int r = 0; r < rows; ++r) {
    const T* __restrict__ row = M + r * stride;
    const T vr = v[r];
#pragma GCC unroll 8
    for (int q = 0; q < Vectors; ++q) {
      Vec m;
      std::memcpy(&m, row + q * W, sizeof(Vec));
      sums[q] += m * vr;
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < Vectors; ++q) std::memcpy(acc + q * W, &sums[q], sizeof(Vec));
}

template <typename T, int Bytes>
SK_AVX2 SK_INLINE void matvec_transposed_vectors(const T* M, int rows, long stride, int width,
                                                 const T* v, T* acc) {
  static_assert(Bytes == 32, "the masked last columns are AVX2's");
  constexpr int W = Bytes / static_cast<int>(sizeof(T));
  const int whole = width / W;  // vectors
  for (int q0 = 0; q0 < whole; q0 += kColumnVectors) {
    const T* block = M + q0 * W;
    T* block_acc = acc + q0 * W;
    switch (std::min(kColumnVectors, whole - q0)) {
      case 1: transposed_block_vectors<T, Bytes, 1>(block, stride, rows, v, block_acc); break;
      case 2: transposed_block_vectors<T, Bytes, 2>(block, stride, rows, v, block_acc); break;
      case 3: transposed_block_vectors<T, Bytes, 3>(block, stride, rows, v, block_acc); break;
      case 4: transposed_block_vectors<T, Bytes, 4>(block, stride, rows, v, block_acc); break;
      case 5: transposed_block_vectors<T, Bytes, 5>(block, stride, rows, v, block_acc); break;
      case 6: transposed_block_vectors<T, Bytes, 6>(block, stride, rows, v, block_acc); break;
      case 7: transposed_block_vectors<T, Bytes, 7>(block, stride, rows, v, block_acc); break;
      default: transposed_block_vectors<T, Bytes, 8>(block, stride, rows, v, block_acc);
    }
  }
  if (whole * W < width) {  // one chain through the rows for all the columns left
    using Vec = typename Vector<T, Bytes>::type;
    const __m256i lanes = first_lanes(T(), width - whole * W);
    T* tail = acc + whole * W;
    Vec sum = masked_load(tail, lanes);
    for (int r = 0; r < rows; ++r)
      sum += Vec(masked_load(M + r * stride + whole * W, lanes)) * v[r];
    masked_store(tail, lanes, sum);
  }
}

template <typename T>
SK_AVX2 void matvec_avx2(const T* M, long stride, int rows, int n, const T* v, T* out) {
  matvec_vectors<T, 32>(M, stride, rows, n, v, out);
}
template <typename T>
SK_AVX2 void matvec_transposed_avx2(const T* M, int rows, long stride, int width, const T* v,
                                    T* acc) {
  matvec_transposed_vectors<T, 32>(M, rows, stride, width, v, acc);
}
#endif

// The squared distances accumulate over k in order, as squared_distance does.
template <typename T>
SK_INLINE void cost_row_impl(const T* __restrict__ a, const T* __restrict__ bt, long stride, int d,
                             int n, Cost cost, T* __restrict__ out) {
#pragma omp simd
  for (int c = 0; c < n; ++c) out[c] = T(0);
  for (int k = 0; k < d; ++k) {
    const T ak = a[k];
    const T* __restrict__ bk = bt + k * stride;
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

template <typename T, bool Terminal>
SK_INLINE T adjoint_piece_impl(const T* __restrict__ row, const T* __restrict__ h,
                               const T* __restrict__ adj, T s, T w, int n, T eps, Cost cost,
                               T* __restrict__ gk) {
  const T inv_eps = T(1) / eps;
  T out = T(0);
  if (cost == Cost::kSqEuclidean) {
#pragma omp simd reduction(+ : out)
    for (int c = 0; c < n; ++c) {
      T grad = T(0);
      out += adjoint_term<T, Terminal>(row[c], h[c], adj[c], s, w, inv_eps, grad);
      gk[c] = grad * T(2);
    }
  } else {
#pragma omp simd reduction(+ : out)
    for (int c = 0; c < n; ++c) {
      T grad = T(0);
      out += adjoint_term<T, Terminal>(row[c], h[c], adj[c], s, w, inv_eps, grad);
      gk[c] = row[c] > T(0) ? grad / row[c] : T(0);
    }
  }
  return out;
}

template <typename T>
SK_INLINE void accumulate_piece_impl(const T* __restrict__ gk, int n, const T* __restrict__ bt,
                                     long stride, const T* __restrict__ a, int d,
                                     T* __restrict__ row_acc, T* __restrict__ col_acc,
                                     long col_stride) {
  T total = T(0);
#pragma omp simd reduction(+ : total)
  for (int c = 0; c < n; ++c) {
    total += gk[c];
    col_acc[c] += gk[c];
  }
  row_acc[0] += total;
  for (int k = 0; k < d; ++k) {
    const T* __restrict__ bk = bt + k * stride;
    T* __restrict__ ck = col_acc + (k + 1) * col_stride;
    const T ak = a[k];
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < n; ++c) {
      sum += gk[c] * bk[c];
      ck[c] += gk[c] * ak;
    }
    row_acc[k + 1] += sum;
  }
}

}  // namespace

#define SK_DEFINE_ROWS(T)                                                                    \
  SK_CPU_CLONES void cost_row(const T* a, const T* bt, long stride, int d, int n, Cost cost,  \
                              T* out) {                                                      \
    cost_row_impl(a, bt, stride, d, n, cost, out);                                           \
  }                                                                                          \
  SK_CPU_CLONES void squared_distances_from_dots(T* __restrict__ row, T norm_a,            \
                                                 const T* __restrict__ norms_b, int n) {     \
    _Pragma("omp simd") for (int c = 0; c < n; ++c) row[c] = norm_a + norms_b[c] - 2 * row[c]; \
  }                                                                                          \
  SK_CPU_CLONES RowSums<T> softmin_sums_portable(const T* row, const T* h, int n, T eps,      \
                                                 bool with_expected_cost) {                  \
    return with_expected_cost ? softmin_row_sums<T, true>(row, h, n, eps)                     \
                              : softmin_row_sums<T, false>(row, h, n, eps);                   \
  }                                                                                          \
  SK_CPU_CLONES T adjoint_piece_portable(const T* row, const T* h, const T* adj, T s, T w,    \
                                         int n, T eps, bool terminal, Cost cost, T* gk) {    \
    return terminal ? adjoint_piece_impl<T, true>(row, h, adj, s, w, n, eps, cost, gk)        \
                    : adjoint_piece_impl<T, false>(row, h, adj, s, w, n, eps, cost, gk);      \
  }                                                                                          \
  SK_CPU_CLONES void accumulate_piece(const T* gk, int n, const T* bt, long stride, const T* a, \
                                      int d, T* row_acc, T* col_acc, long col_stride) {       \
    accumulate_piece_impl(gk, n, bt, stride, a, d, row_acc, col_acc, col_stride);             \
  }                                                                                          \
  SK_CPU_CLONES T softmin_adjoint_row_portable(const T* row, const T* h, const T* adj, T s,  \
                                               T w, int n, T eps, bool terminal,             \
                                               T* grad_row) {                                \
    return terminal                                                                          \
               ? sinkhorn::softmin_adjoint_row<T, true>(row, h, adj, s, w, n, eps, grad_row) \
               : sinkhorn::softmin_adjoint_row<T, false>(row, h, adj, s, w, n, eps,          \
                                                         grad_row);                          \
  }                                                                                          \
  SK_CPU_CLONES void exp_affine_portable(const T* __restrict__ v, T shift, T scale, int n,   \
                                T* __restrict__ out) {                                       \
    _Pragma("omp simd") for (int c = 0; c < n; ++c) out[c] = fast_exp((v[c] - shift) * scale); \
  }                                                                                          \
  SK_CPU_CLONES void exp_affine_nonpositive_portable(const T* __restrict__ v, T shift, T scale, \
                                                     int n, T* __restrict__ out) {           \
    _Pragma("omp simd") for (int c = 0; c < n; ++c) out[c] =                                 \
        fast_exp_nonpositive((v[c] - shift) * scale);                                        \
  }                                                                                          \
  SK_CPU_CLONES void scaled_softmins(const T* __restrict__ sums, T shift, T eps, int n,     \
                                     T* __restrict__ out) {                                  \
    _Pragma("omp simd") for (int c = 0; c < n; ++c) out[c] = scaled_softmin(sums[c], shift, eps); \
  }                                                                                          \
  SK_CPU_CLONES void matvec_portable(const T* M, long stride, int rows, int n, const T* v,   \
                                     T* out) {                                               \
    matvec_impl<T, false>(M, stride, nullptr, 0, rows, n, v, out);                           \
  }                                                                                          \
  SK_CPU_CLONES void matvec_product(const T* A, long a_stride, const T* B, long b_stride,    \
                                    int rows, int n, const T* v, T* out) {                   \
    matvec_impl<T, true>(A, a_stride, B, b_stride, rows, n, v, out);                         \
  }                                                                                          \
  SK_CPU_CLONES void matvec_transposed_portable(const T* M, int rows, long stride, int width, \
                                                const T* v, T* acc) {                        \
    matvec_transposed_impl<T, false>(M, stride, nullptr, 0, rows, width, v, acc);            \
  }                                                                                          \
  SK_CPU_CLONES void matvec_product_transposed(const T* A, long a_stride, const T* B,        \
                                               long b_stride, int rows, int width,           \
                                               const T* v, T* acc) {                         \
    matvec_transposed_impl<T, true>(A, a_stride, B, b_stride, rows, width, v, acc);          \
  }                                                                                          \
  SK_CPU_CLONES T squared_distance_by_lanes(const T* a, const T* b, int d) {                 \
    return lane_squared_distance(a, b, d);                                                   \
  }                                                                                          \
  SK_CPU_CLONES T max_of(const T* __restrict__ a, int n) {                                  \
    T out = -std::numeric_limits<T>::infinity();                                             \
    _Pragma("omp simd reduction(max : out)") for (int c = 0; c < n; ++c) out =               \
        a[c] > out ? a[c] : out;                                                             \
    return out;                                                                              \
  }                                                                                          \
  SK_CPU_CLONES T dot(const T* __restrict__ a, const T* __restrict__ b, int n) {             \
    return lane_dot<T, false>(a, b, nullptr, n);                                             \
  }

SK_DEFINE_ROWS(float)
SK_DEFINE_ROWS(double)

#undef SK_DEFINE_ROWS

// One kernel for a machine, chosen once (results stay repeatable).
template <typename T>
RowSums<T> softmin_sums_dispatch(const T* row, const T* h, int n, T eps, bool with_expected_cost) {
#if SK_HAVE_X86_KERNELS
  if (has_avx512())
    return with_expected_cost ? softmin_row_sums_avx512<T, true>(row, h, n, eps)
                              : softmin_row_sums_avx512<T, false>(row, h, n, eps);
#endif
  return softmin_sums_portable(row, h, n, eps, with_expected_cost);
}

RowSums<float> softmin_sums(const float* row, const float* h, int n, float eps,
                            bool with_expected_cost) {
  return softmin_sums_dispatch(row, h, n, eps, with_expected_cost);
}
RowSums<double> softmin_sums(const double* row, const double* h, int n, double eps,
                             bool with_expected_cost) {
  return softmin_sums_dispatch(row, h, n, eps, with_expected_cost);
}
float softmin_row(const float* row, const float* h, int n, float eps) {
  return softmin_sums_dispatch(row, h, n, eps, false).softmin(eps);
}
double softmin_row(const double* row, const double* h, int n, double eps) {
  return softmin_sums_dispatch(row, h, n, eps, false).softmin(eps);
}

template <typename T>
T softmin_row_with_expected_cost_dispatch(const T* row, const T* h, int n, T eps,
                                          T* expected_cost) {
  const RowSums<T> sums = softmin_sums_dispatch(row, h, n, eps, true);
  *expected_cost = sums.expected_cost();
  return sums.softmin(eps);
}

float softmin_row_with_expected_cost(const float* row, const float* h, int n, float eps,
                                     float* expected_cost) {
  return softmin_row_with_expected_cost_dispatch(row, h, n, eps, expected_cost);
}
double softmin_row_with_expected_cost(const double* row, const double* h, int n, double eps,
                                      double* expected_cost) {
  return softmin_row_with_expected_cost_dispatch(row, h, n, eps, expected_cost);
}

template <typename T>
T softmin_adjoint_row_dispatch(const T* row, const T* h, const T* adj, T s, T w, int n, T eps,
                               bool terminal, T* grad_row) {
#if SK_HAVE_X86_KERNELS
  if (has_avx512())
    return terminal ? softmin_adjoint_row_avx512<T, true>(row, h, adj, s, w, n, eps, grad_row)
                    : softmin_adjoint_row_avx512<T, false>(row, h, adj, s, w, n, eps, grad_row);
#endif
  return softmin_adjoint_row_portable(row, h, adj, s, w, n, eps, terminal, grad_row);
}

float softmin_adjoint_row(const float* row, const float* h, const float* adj, float s, float w,
                          int n, float eps, bool terminal, float* grad_row) {
  return softmin_adjoint_row_dispatch(row, h, adj, s, w, n, eps, terminal, grad_row);
}
double softmin_adjoint_row(const double* row, const double* h, const double* adj, double s,
                           double w, int n, double eps, bool terminal, double* grad_row) {
  return softmin_adjoint_row_dispatch(row, h, adj, s, w, n, eps, terminal, grad_row);
}

template <typename T>
T adjoint_piece_dispatch(const T* row, const T* h, const T* adj, T s, T w, int n, T eps,
                         bool terminal, Cost cost, T* gk) {
#if SK_HAVE_X86_KERNELS
  if (has_avx512())
    return terminal ? adjoint_piece_avx512<T, true>(row, h, adj, s, w, n, eps, cost, gk)
                    : adjoint_piece_avx512<T, false>(row, h, adj, s, w, n, eps, cost, gk);
#endif
  return adjoint_piece_portable(row, h, adj, s, w, n, eps, terminal, cost, gk);
}

float adjoint_piece(const float* row, const float* h, const float* adj, float s, float w, int n,
                    float eps, bool terminal, Cost cost, float* gk) {
  return adjoint_piece_dispatch(row, h, adj, s, w, n, eps, terminal, cost, gk);
}
double adjoint_piece(const double* row, const double* h, const double* adj, double s, double w,
                     int n, double eps, bool terminal, Cost cost, double* gk) {
  return adjoint_piece_dispatch(row, h, adj, s, w, n, eps, terminal, cost, gk);
}

template <typename T>
void matvec_dispatch(const T* M, long stride, int rows, int n, const T* v, T* out) {
#if SK_HAVE_X86_KERNELS
  if (has_avx512()) return matvec_avx512(M, stride, rows, n, v, out);
  if (has_avx2()) return matvec_avx2(M, stride, rows, n, v, out);
#endif
  matvec_portable(M, stride, rows, n, v, out);
}

void matvec(const float* M, long stride, int rows, int n, const float* v, float* out) {
  matvec_dispatch(M, stride, rows, n, v, out);
}
void matvec(const double* M, long stride, int rows, int n, const double* v, double* out) {
  matvec_dispatch(M, stride, rows, n, v, out);
}

template <typename T>
void matvec_transposed_dispatch(const T* M, int rows, long stride, int width, const T* v,
                                T* acc) {
#if SK_HAVE_X86_KERNELS
  if (has_avx512()) return matvec_transposed_avx512(M, rows, stride, width, v, acc);
  if (has_avx2()) return matvec_transposed_avx2(M, rows, stride, width, v, acc);
#endif
  matvec_transposed_portable(M, rows, stride, width, v, acc);
}

void matvec_transposed(const float* M, int rows, long stride, int width, const float* v,
                       float* acc) {
  matvec_transposed_dispatch(M, rows, stride, width, v, acc);
}
void matvec_transposed(const double* M, int rows, long stride, int width, const double* v,
                       double* acc) {
  matvec_transposed_dispatch(M, rows, stride, width, v, acc);
}

// By the widest vectors whose register blocks fit the machine's registers.
template <typename T>
void scaling_gradient_rows_dispatch(T* K, long k_stride, const T* A, int R, const T* F,
                                    long f_stride, const T* C, long c_stride, const T* t_row,
                                    const T* t_column, T inv_eps, int rows, int n, Cost cost) {
#if SK_HAVE_X86_KERNELS
  if (has_avx512())
    return scaling_gradient_rows_avx512(K, k_stride, A, R, F, f_stride, C, c_stride, t_row,
                                        t_column, inv_eps, rows, n, cost);
  if (has_avx2())
    return scaling_gradient_rows_avx2(K, k_stride, A, R, F, f_stride, C, c_stride, t_row,
                                      t_column, inv_eps, rows, n, cost);
#endif
  scaling_gradient_rows_impl<T, 16>(K, k_stride, A, R, F, f_stride, C, c_stride, t_row, t_column,
                                    inv_eps, rows, n, cost);
}

void scaling_gradient_rows(float* K, long k_stride, const float* A, int R, const float* F,
                           long f_stride, const float* C, long c_stride, const float* t_row,
                           const float* t_column, float inv_eps, int rows, int n, Cost cost) {
  scaling_gradient_rows_dispatch(K, k_stride, A, R, F, f_stride, C, c_stride, t_row, t_column,
                                 inv_eps, rows, n, cost);
}
void scaling_gradient_rows(double* K, long k_stride, const double* A, int R, const double* F,
                           long f_stride, const double* C, long c_stride, const double* t_row,
                           const double* t_column, double inv_eps, int rows, int n, Cost cost) {
  scaling_gradient_rows_dispatch(K, k_stride, A, R, F, f_stride, C, c_stride, t_row, t_column,
                                 inv_eps, rows, n, cost);
}

// With Nonpositive, every argument is <= 0 (exp_affine_nonpositive). The AVX-512 kernel's exp
// costs the same for every argument.
template <bool Nonpositive, typename T>
void exp_affine_dispatch(const T* v, T shift, T scale, int n, T* out) {
#if SK_HAVE_X86_KERNELS
  if (has_avx512()) return exp_affine_avx512(v, shift, scale, n, out);
#endif
  if (Nonpositive) return exp_affine_nonpositive_portable(v, shift, scale, n, out);
  exp_affine_portable(v, shift, scale, n, out);
}

void exp_affine(const float* v, float shift, float scale, int n, float* out) {
  exp_affine_dispatch<false>(v, shift, scale, n, out);
}
void exp_affine(const double* v, double shift, double scale, int n, double* out) {
  exp_affine_dispatch<false>(v, shift, scale, n, out);
}
void exp_affine_nonpositive(const float* v, float shift, float scale, int n, float* out) {
  exp_affine_dispatch<true>(v, shift, scale, n, out);
}
void exp_affine_nonpositive(const double* v, double shift, double scale, int n, double* out) {
  exp_affine_dispatch<true>(v, shift, scale, n, out);
}

}  // namespace sinkhorn::cpu
