// exp() and log() the compiler can vectorise, from Cephes: for exp, Cody-Waite range
// reduction and a polynomial (float) or Pade (double) approximation, with 2^n assembled in
// the exponent bits; for log, the exponent and mantissa taken from the bits and a polynomial
// (float) or rational (double) approximation of log(1 + f). libm's exp and log are scalar
// calls that block vectorisation; these are branch-free so that a loop of them becomes SIMD
// code. Accuracy is within 2 ulp in both precisions.
//
// Semantics that the Sinkhorn kernels rely on:
//   exp(-inf) == 0 (a zero weight gives a log-weight of -inf),
//   arguments below the underflow threshold give 0 (every caller sums exponentials of
//   max-shifted values, where such terms are below rounding), NaN propagates;
//   log(0) == -inf, log(x < 0) is NaN, log(inf) == inf, subnormals are exact inputs.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/macros.h"

namespace sinkhorn {

template <typename To, typename From>
SK_HOST_DEVICE SK_INLINE To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// The constants of fast_exp, which the AVX-512 exp_affine of cpu/rows.cpp shares.
template <typename T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kMax = 88.8f;  // above ln(FLT_MAX) = 88.72: the product overflows
  static constexpr float kMin = -87.3365447504f;  // ln(FLT_MIN): 2^n stays a normal number
  static constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  // e^r = 1 + r + r^2 P(r), P of degree 5 (Cephes expf), highest coefficient first.
  static constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                  4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
};

template <>
struct ExpConstants<double> {
  static constexpr double kLog2e = 1.4426950408889634073599;
  static constexpr double kLn2Hi = 6.93145751953125e-1;
  static constexpr double kLn2Lo = 1.42860682030941723212e-6;
  static constexpr double kMax = 709.8;                 // above ln(DBL_MAX) = 709.78
  static constexpr double kMin = -708.39641853226408;   // ln(DBL_MIN)
  static constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  // Cephes exp: e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)), highest coefficients first.
  static constexpr double kP[3] = {1.26177193074810590878e-4, 3.02994407707441961300e-2,
                                   9.99999999999999999910e-1};
  static constexpr double kQ[4] = {3.00198505138664455042e-6, 2.52448340349684104192e-3,
                                   2.27265548208155028766e-1, 2.00000000000000000009e0};
};

#if !defined(__CUDA_ARCH__)
// exp(xc) = e^r 2^n for xc in [kMin, kMax]: returns e^r, with r = xc - n ln 2 in
// [-ln2/2, ln2/2], and sets n = round(xc / ln 2).
SK_INLINE float exp_reduced(float xc, std::int32_t& n) {
  using E = ExpConstants<float>;
  const float t = xc * E::kLog2e + E::kRound;
  const float nf = t - E::kRound;
  float r = xc - nf * E::kLn2Hi;
  r = r - nf * E::kLn2Lo;
  float p = E::kP[0];
  p = p * r + E::kP[1];
  p = p * r + E::kP[2];
  p = p * r + E::kP[3];
  p = p * r + E::kP[4];
  p = p * r + E::kP[5];
  // t = 1.5 * 2^23 + n exactly, so the difference of the bit patterns is the integer n.
  n = static_cast<std::int32_t>(bit_cast<std::uint32_t>(t) - bit_cast<std::uint32_t>(E::kRound));
  return p * r * r + r + 1.0f;
}

SK_INLINE double exp_reduced(double xc, std::int64_t& n) {
  using E = ExpConstants<double>;
  const double t = xc * E::kLog2e + E::kRound;
  const double nf = t - E::kRound;
  double r = xc - nf * E::kLn2Hi;
  r = r - nf * E::kLn2Lo;
  const double rr = r * r;
  double p = E::kP[0];
  p = p * rr + E::kP[1];
  p = p * rr + E::kP[2];
  p = p * r;
  double q = E::kQ[0];
  q = q * rr + E::kQ[1];
  q = q * rr + E::kQ[2];
  q = q * rr + E::kQ[3];
  n = static_cast<std::int64_t>(bit_cast<std::uint64_t>(t) - bit_cast<std::uint64_t>(E::kRound));
  return 1.0 + 2.0 * (p / (q - p));
}

// 2^n, for n in the exponent range of normal numbers.
SK_INLINE float exp2_normal(std::int32_t n) {
  return bit_cast<float>(static_cast<std::uint32_t>(n + 127) << 23);
}
SK_INLINE double exp2_normal(std::int64_t n) {
  return bit_cast<double>(static_cast<std::uint64_t>(n + 1023) << 52);
}

// The integer type of n in exp_reduced for T.
template <typename T>
using ExpInt = std::conditional_t<sizeof(T) == sizeof(float), std::int32_t, std::int64_t>;

template <typename T>
SK_INLINE T fast_exp_impl(T x) {
  using E = ExpConstants<T>;
  const T xc = x < E::kMin ? E::kMin : (x > E::kMax ? E::kMax : x);
  ExpInt<T> n;
  const T e = exp_reduced(xc, n);
  // 2^n is applied as 2^(n/2) 2^(n - n/2): each factor is a normal number over the whole
  // range, and the product rounds (or overflows) exactly like exp itself.
  const ExpInt<T> half = n >> 1;
  const T y = e * exp2_normal(half) * exp2_normal(n - half);
  const T overflowed = x > E::kMax ? std::numeric_limits<T>::infinity() : y;
  const T result = x < E::kMin ? T(0) : overflowed;
  return x != x ? x : result;
}
#endif

SK_HOST_DEVICE SK_INLINE float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  return fast_exp_impl(x);
#endif
}

SK_HOST_DEVICE SK_INLINE double fast_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return fast_exp_impl(x);
#endif
}

// fast_exp(x) for x <= 0 (and -inf, NaN): the same bits, in about two thirds of its
// instructions, since with no large argument to clamp n >= log2(min normal) and 2^n is one
// normal factor. The log-sum-exps of max-shifted values, and K = exp(-C / eps), take exps of
// arguments <= 0 only, and spend most of their time in them.
template <typename T>
SK_HOST_DEVICE SK_INLINE T fast_exp_nonpositive(T x) {
#if defined(__CUDA_ARCH__)
  return fast_exp(x);
#else
  using E = ExpConstants<T>;
  const T xc = x < E::kMin ? E::kMin : x;
  ExpInt<T> n;
  const T y = exp_reduced(xc, n) * exp2_normal(n);
  return x < E::kMin ? T(0) : y;  // NaN propagates through y
#endif
}

SK_HOST_DEVICE SK_INLINE float fast_log(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  constexpr float kMinNormal = 1.17549435e-38f;
  constexpr float kSqrtHalf = 0.707106781186547524f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // A subnormal is scaled by 2^23 into the normal range first.
  const bool subnormal = x < kMinNormal;
  const std::uint32_t bits = bit_cast<std::uint32_t>(subnormal ? x * 8388608.0f : x);
  // x = mant 2^e with mant in [1/2, 1); then x = (1 + f) 2^e, f in [sqrt(1/2) - 1, sqrt(2) - 1).
  std::int32_t e = static_cast<std::int32_t>((bits >> 23) & 0xffu) - 126 - (subnormal ? 23 : 0);
  const float mant = bit_cast<float>((bits & 0x007fffffu) | 0x3f000000u);
  const bool low = mant < kSqrtHalf;
  e = low ? e - 1 : e;
  const float f = low ? mant + mant - 1.0f : mant - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float fe = static_cast<float>(e);
  y = y + fe * kLn2Lo;
  y = y - 0.5f * z;
  const float result = (f + y) + fe * kLn2Hi;
  const float special = x == std::numeric_limits<float>::infinity() ? x : result;
  const float signed_result = x == 0.0f ? -std::numeric_limits<float>::infinity() : special;
  return x < 0.0f || x != x ? std::numeric_limits<float>::quiet_NaN() : signed_result;
#endif
}

SK_HOST_DEVICE SK_INLINE double fast_log(double x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  constexpr double kMinNormal = 2.2250738585072014e-308;
  constexpr double kSqrtHalf = 0.70710678118654752440;
  constexpr double kLn2Hi = 0.693359375;
  constexpr double kLn2Lo = -2.121944400546905827679e-4;
  const bool subnormal = x < kMinNormal;
  const std::uint64_t bits = bit_cast<std::uint64_t>(subnormal ? x * 4503599627370496.0 : x);
  std::int64_t e = static_cast<std::int64_t>((bits >> 52) & 0x7ffu) - 1022 - (subnormal ? 52 : 0);
  const double mant = bit_cast<double>((bits & 0x000fffffffffffffull) | 0x3fe0000000000000ull);
  const bool low = mant < kSqrtHalf;
  e = low ? e - 1 : e;
  const double f = low ? mant + mant - 1.0 : mant - 1.0;
  const double z = f * f;
  // Cephes log: log(1 + f) = f - f^2 / 2 + f^3 P(f) / Q(f).
  double p = 1.01875663804580931796e-4;
  p = p * f + 4.97494994976747001425e-1;
  p = p * f + 4.70579119878881725854e0;
  p = p * f + 1.44989225341610930846e1;
  p = p * f + 1.79368678507819816313e1;
  p = p * f + 7.70838733755885391666e0;
  double q = f + 1.12873587189167450590e1;
  q = q * f + 4.52279145837532221105e1;
  q = q * f + 8.29875266912776603211e1;
  q = q * f + 7.11544750618563894466e1;
  q = q * f + 2.31251620126765340583e1;
  const double fe = static_cast<double>(e);
  double y = f * (z * p / q);
  y = y + fe * kLn2Lo;
  y = y - 0.5 * z;
  const double result = (f + y) + fe * kLn2Hi;
  const double special = x == std::numeric_limits<double>::infinity() ? x : result;
  const double signed_result = x == 0.0 ? -std::numeric_limits<double>::infinity() : special;
  return x < 0.0 || x != x ? std::numeric_limits<double>::quiet_NaN() : signed_result;
#endif
}

}  // namespace sinkhorn
