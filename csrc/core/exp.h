// exp() the compiler can vectorise: Cody-Waite range reduction and a polynomial (float) or
// Pade (double) approximation from Cephes, with 2^n assembled in the exponent bits. libm's
// exp is a scalar call that blocks vectorisation; this one is branch-free so that a loop of
// it becomes SIMD code. Accuracy is within 2 ulp in both precisions.
//
// Semantics that the Sinkhorn kernels rely on:
//   exp(-inf) == 0 (a zero weight gives a log-weight of -inf),
//   arguments below the underflow threshold give 0 (every caller sums exponentials of
//   max-shifted values, where such terms are below rounding), NaN propagates.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "core/macros.h"

namespace sinkhorn {

template <typename To, typename From>
SK_HOST_DEVICE SK_INLINE To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

SK_HOST_DEVICE SK_INLINE float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kMax = 88.8f;                // above ln(FLT_MAX) = 88.72: the product overflows
  constexpr float kMin = -87.3365447504f;      // ln(FLT_MIN): 2^n stays a normal number
  constexpr float kRound = 12582912.0f;        // 1.5 * 2^23: adding it rounds to an integer
  const float xc = x < kMin ? kMin : (x > kMax ? kMax : x);
  const float t = xc * kLog2e + kRound;
  const float n = t - kRound;
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // t = 1.5 * 2^23 + n exactly, so the difference of the bit patterns is the integer n.
  // 2^n is applied as 2^(n/2) 2^(n - n/2): each factor is a normal float over the whole
  // range, and the product rounds (or overflows) exactly like exp itself.
  const std::int32_t ni = static_cast<std::int32_t>(bit_cast<std::uint32_t>(t) -
                                                    bit_cast<std::uint32_t>(kRound));
  const std::int32_t half = ni >> 1;
  const float y = p * bit_cast<float>(static_cast<std::uint32_t>(half + 127) << 23) *
                  bit_cast<float>(static_cast<std::uint32_t>(ni - half + 127) << 23);
  const float overflowed = x > kMax ? std::numeric_limits<float>::infinity() : y;
  const float result = x < kMin ? 0.0f : overflowed;
  return x != x ? x : result;
#endif
}

SK_HOST_DEVICE SK_INLINE double fast_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  constexpr double kLog2e = 1.4426950408889634073599;
  constexpr double kLn2Hi = 6.93145751953125e-1;
  constexpr double kLn2Lo = 1.42860682030941723212e-6;
  constexpr double kMax = 709.8;                 // above ln(DBL_MAX) = 709.78
  constexpr double kMin = -708.39641853226408;   // ln(DBL_MIN)
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  const double xc = x < kMin ? kMin : (x > kMax ? kMax : x);
  const double t = xc * kLog2e + kRound;
  const double n = t - kRound;
  double r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  // Cephes exp: e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
  const double rr = r * r;
  double p = 1.26177193074810590878e-4;
  p = p * rr + 3.02994407707441961300e-2;
  p = p * rr + 9.99999999999999999910e-1;
  p = p * r;
  double q = 3.00198505138664455042e-6;
  q = q * rr + 2.52448340349684104192e-3;
  q = q * rr + 2.27265548208155028766e-1;
  q = q * rr + 2.00000000000000000009e0;
  const double e = 1.0 + 2.0 * (p / (q - p));
  const std::int64_t ni = static_cast<std::int64_t>(bit_cast<std::uint64_t>(t) -
                                                    bit_cast<std::uint64_t>(kRound));
  const std::int64_t half = ni >> 1;
  const double y = e * bit_cast<double>(static_cast<std::uint64_t>(half + 1023) << 52) *
                   bit_cast<double>(static_cast<std::uint64_t>(ni - half + 1023) << 52);
  const double overflowed = x > kMax ? std::numeric_limits<double>::infinity() : y;
  const double result = x < kMin ? 0.0 : overflowed;
  return x != x ? x : result;
#endif
}

}  // namespace sinkhorn
