// sinkhorn::fast_exp and fast_log (csrc/core/exp.h) against std::exp and std::log, in float
// and double, through two builds of the same loop: the baseline one of this file's flags,
// and a target_clones one (AVX-512 / AVX2+FMA where the machine has them) that vectorises
// them the way the kernels of csrc/cpu/rows.cpp do; and exp through the kernels' own
// exp_affine (csrc/cpu/rows.h), hand-written for AVX-512 where the machine has it. The
// variant for arguments <= 0, fast_exp_nonpositive (and exp_affine_nonpositive), must give
// fast_exp's bits there.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/exp.h"
#include "cpu/rows.h"
#include "tests/harness.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SK_TEST_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), noinline))
#else
#define SK_TEST_CLONES __attribute__((noinline))
#endif

namespace {

template <typename T>
struct Format;
template <>
struct Format<float> {
  using Bits = std::uint32_t;
  static constexpr int kMaxExponent = 127;
  static constexpr const char* kName = "float";
};
template <>
struct Format<double> {
  using Bits = std::uint64_t;
  static constexpr int kMaxExponent = 1023;
  static constexpr const char* kName = "double";
};

template <typename T>
typename Format<T>::Bits to_bits(T v) {
  typename Format<T>::Bits b;
  std::memcpy(&b, &v, sizeof(v));
  return b;
}

template <typename T>
T from_bits(typename Format<T>::Bits b) {
  T v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

// The position of v on the number line, counted in representable values (monotone in v).
template <typename T>
std::int64_t ordered(T v) {
  using Bits = typename Format<T>::Bits;
  const Bits b = to_bits(v);
  const Bits sign = Bits(1) << (8 * sizeof(Bits) - 1);
  const Bits magnitude = b & ~sign;
  return (b & sign) ? -static_cast<std::int64_t>(magnitude) : static_cast<std::int64_t>(magnitude);
}

template <typename T>
std::uint64_t ulp_distance(T a, T b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<std::uint64_t>::max();
  const std::int64_t oa = ordered(a), ob = ordered(b);
  return oa >= ob ? static_cast<std::uint64_t>(oa) - static_cast<std::uint64_t>(ob)
                  : static_cast<std::uint64_t>(ob) - static_cast<std::uint64_t>(oa);
}

// The two builds of `out[k] = fast_exp(in[k])`.
template <typename T>
__attribute__((noinline)) void exp_baseline(const T* in, T* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_exp(in[k]);
}

SK_TEST_CLONES void exp_clones(const float* in, float* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_exp(in[k]);
}
SK_TEST_CLONES void exp_clones(const double* in, double* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_exp(in[k]);
}

// exp_affine at shift 0 and scale 1: out[k] = fast_exp(in[k]).
template <typename T>
void exp_kernel(const T* in, T* out, std::int64_t count) {
  sinkhorn::cpu::exp_affine(in, T(0), T(1), static_cast<int>(count), out);
}

// The same three of `out[k] = fast_exp_nonpositive(in[k])`, each to match its fast_exp.
template <typename T>
__attribute__((noinline)) void exp_nonpositive_baseline(const T* in, T* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_exp_nonpositive(in[k]);
}

SK_TEST_CLONES void exp_nonpositive_clones(const float* in, float* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_exp_nonpositive(in[k]);
}
SK_TEST_CLONES void exp_nonpositive_clones(const double* in, double* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_exp_nonpositive(in[k]);
}

template <typename T>
void exp_nonpositive_kernel(const T* in, T* out, std::int64_t count) {
  sinkhorn::cpu::exp_affine_nonpositive(in, T(0), T(1), static_cast<int>(count), out);
}

// The two builds of `out[k] = fast_log(in[k])`.
template <typename T>
__attribute__((noinline)) void log_baseline(const T* in, T* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_log(in[k]);
}

SK_TEST_CLONES void log_clones(const float* in, float* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_log(in[k]);
}
SK_TEST_CLONES void log_clones(const double* in, double* out, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) out[k] = sinkhorn::fast_log(in[k]);
}

template <typename T>
using Evaluator = void (*)(const T*, T*, std::int64_t);

template <typename T>
struct NamedEvaluator {
  const char* name;
  Evaluator<T> fn;
};

template <typename T>
std::vector<NamedEvaluator<T>> evaluators() {
  return {{"baseline", &exp_baseline<T>},
          {"target_clones", static_cast<Evaluator<T>>(&exp_clones)},
          {"exp_affine", &exp_kernel<T>}};
}

// Pairs (fast_exp_nonpositive, fast_exp) of the same build.
template <typename T>
std::vector<std::pair<NamedEvaluator<T>, Evaluator<T>>> nonpositive_evaluators() {
  return {{{"baseline", &exp_nonpositive_baseline<T>}, &exp_baseline<T>},
          {{"target_clones", static_cast<Evaluator<T>>(&exp_nonpositive_clones)},
           static_cast<Evaluator<T>>(&exp_clones)},
          {{"exp_affine_nonpositive", &exp_nonpositive_kernel<T>}, &exp_kernel<T>}};
}

template <typename T>
std::vector<NamedEvaluator<T>> log_evaluators() {
  return {{"baseline", &log_baseline<T>},
          {"target_clones", static_cast<Evaluator<T>>(&log_clones)}};
}

template <typename T>
T next_up(T v) {
  return std::nextafter(v, std::numeric_limits<T>::infinity());
}
template <typename T>
T next_down(T v) {
  return std::nextafter(v, -std::numeric_limits<T>::infinity());
}

// The range where exp gives a normal number: [lowest_normal_arg, highest_finite_arg].
template <typename T>
T lowest_normal_arg() {
  const T min_normal = std::numeric_limits<T>::min();
  T x = static_cast<T>(std::log(static_cast<long double>(min_normal)));
  while (std::exp(x) < min_normal) x = next_up(x);
  while (std::exp(next_down(x)) >= min_normal) x = next_down(x);
  return x;
}

template <typename T>
T highest_finite_arg() {
  T x = static_cast<T>(std::log(static_cast<long double>(std::numeric_limits<T>::max())));
  while (std::isinf(std::exp(x))) x = next_down(x);
  while (!std::isinf(std::exp(next_up(x)))) x = next_up(x);
  return x;
}

// Below (kMaxExponent + 1/2) ln 2, n = round(x / ln 2) fits the exponent field of a single
// float; above it, up to highest_finite_arg(), fast_exp needs its two-factor 2^n. A margin
// of a few ulps keeps the rounding of x * log2(e) on the safe side.
template <typename T>
T highest_fast_arg() {
  const long double ln2 = 0.693147180559945309417232121458176568L;
  T x = static_cast<T>((Format<T>::kMaxExponent + 0.5L) * ln2);
  for (int k = 0; k < 4; ++k) x = next_down(x);
  return x;
}

// Calls fn(chunk) with all the sample points of [lo, hi], in chunks:
//   - every stride-th representable value (stride chosen for ~2^24 (float) or ~2^23 (double)
//     points on each side of 0), so every binade is covered;
//   - 2^20 evenly spaced points;
//   - runs of consecutive representable values at both ends, around 0, and around each
//     (k + 1/2) ln 2, where the range reduction switches from n = k to n = k + 1.
template <typename T, typename Fn>
void for_each_sample(T lo, T hi, Fn&& fn) {
  using Bits = typename Format<T>::Bits;
  constexpr std::size_t kChunk = std::size_t(1) << 20;
  std::vector<T> chunk;
  chunk.reserve(kChunk);
  auto push = [&](T v) {
    if (!(v >= lo && v <= hi)) return;
    chunk.push_back(v);
    if (chunk.size() == kChunk) {
      fn(chunk);
      chunk.clear();
    }
  };
  const std::uint64_t per_side = sizeof(T) == 4 ? (std::uint64_t(1) << 24) : (std::uint64_t(1) << 23);
  for (T end : {lo, hi}) {
    if (end == T(0)) continue;
    const Bits sign = end < 0 ? Bits(1) << (8 * sizeof(Bits) - 1) : Bits(0);
    const Bits last = to_bits(std::fabs(end));
    const std::uint64_t stride = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(last) / per_side) | 1u;
    for (std::uint64_t b = 0; b <= last; b += stride) push(from_bits<T>(static_cast<Bits>(sign | b)));
    push(end);
  }
  constexpr int kGrid = 1 << 20;
  for (int k = 0; k <= kGrid; ++k) {
    const long double t = static_cast<long double>(k) / kGrid;
    push(static_cast<T>(lo + (static_cast<long double>(hi) - lo) * t));
  }
  auto run = [&](T start, int count, bool upwards) {
    T v = start;
    for (int k = 0; k < count; ++k) {
      push(v);
      v = upwards ? next_up(v) : next_down(v);
    }
  };
  run(lo, 4096, true);
  run(hi, 4096, false);
  run(T(0), 4096, true);
  run(T(0), 4096, false);
  for (T v : {T(0.5), T(1), T(2), T(-0.5), T(-1), T(-2)}) {
    run(v, 2048, true);
    run(v, 2048, false);
  }
  const long double ln2 = 0.693147180559945309417232121458176568L;
  for (int k = -Format<T>::kMaxExponent - 1; k <= Format<T>::kMaxExponent; ++k) {
    const T mid = static_cast<T>((k + 0.5L) * ln2);
    run(mid, 32, true);
    run(mid, 32, false);
  }
  if (!chunk.empty()) fn(chunk);
}

struct SweepResult {
  std::uint64_t max_ulp = 0;
  long double worst_arg = 0;
  long double worst_got = 0, worst_expected = 0;
  std::int64_t points = 0;
};

template <typename T>
SweepResult sweep(Evaluator<T> eval, T lo, T hi) {
  SweepResult r;
  std::vector<T> out;
  for_each_sample<T>(lo, hi, [&](const std::vector<T>& in) {
    out.resize(in.size());
    eval(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
    for (std::size_t k = 0; k < in.size(); ++k) {
      const T expected = std::exp(in[k]);
      const std::uint64_t u = ulp_distance(out[k], expected);
      if (u > r.max_ulp || (r.points == 0 && k == 0)) {
        r.max_ulp = std::max(u, r.max_ulp);
        r.worst_arg = in[k];
        r.worst_got = out[k];
        r.worst_expected = expected;
      }
    }
    r.points += static_cast<std::int64_t>(in.size());
  });
  return r;
}

template <typename T>
void check_accuracy_sweep() {
  const T lo = lowest_normal_arg<T>(), hi = highest_fast_arg<T>();
  sktest::info(std::string(Format<T>::kName) + " sweep over [" + sktest::fmt(lo) + ", " +
               sktest::fmt(hi) + "] (exp normal from " + sktest::fmt(lo) + " to " +
               sktest::fmt(highest_finite_arg<T>()) + ")");
  for (const auto& e : evaluators<T>()) {
    const SweepResult r = sweep<T>(e.fn, lo, hi);
    sktest::info(std::string(e.name) + ": " + std::to_string(r.points) + " points, max " +
                 std::to_string(r.max_ulp) + " ulp at x = " + sktest::fmt(r.worst_arg));
    SK_CHECK(r.points > 1000000) << e.name << ": only " << r.points << " points";
    SK_CHECK(r.max_ulp <= 2) << e.name << " (" << Format<T>::kName << "): " << r.max_ulp
                             << " ulp at x = " << r.worst_arg << ": fast_exp = " << r.worst_got
                             << ", std::exp = " << r.worst_expected;
  }
}

// Evaluates fast_exp on the given values through both builds, with the values spread over
// a longer array among ordinary arguments so that they share vector registers with them.
template <typename T>
std::vector<std::vector<T>> evaluate_mixed(const std::vector<T>& values) {
  std::vector<std::vector<T>> results;
  for (const auto& e : evaluators<T>()) {
    std::vector<T> in;
    for (T v : values) {
      for (int k = 0; k < 5; ++k) in.push_back(T(0.25) * k - T(0.5));
      in.push_back(v);
    }
    std::vector<T> out(in.size());
    e.fn(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
    std::vector<T> picked;
    for (std::size_t k = 0; k < values.size(); ++k) {
      for (int j = 0; j < 5; ++j) {
        const T x = in[6 * k + j];
        SK_CHECK(ulp_distance(out[6 * k + j], std::exp(x)) <= 2)
            << e.name << ": filler argument " << x << " gave " << out[6 * k + j];
      }
      picked.push_back(out[6 * k + 5]);
    }
    results.push_back(picked);
  }
  return results;
}

template <typename T>
void check_special_values() {
  constexpr T inf = std::numeric_limits<T>::infinity();
  const T lo = lowest_normal_arg<T>(), hi = highest_finite_arg<T>();
  const auto names = evaluators<T>();

  // exp(-inf) == +0: a zero weight gives a log-weight of -inf.
  {
    const auto got = evaluate_mixed<T>({-inf});
    for (std::size_t e = 0; e < got.size(); ++e)
      SK_CHECK(got[e][0] == T(0) && !std::signbit(got[e][0]))
          << names[e].name << ": fast_exp(-inf) = " << got[e][0];
  }
  // NaN propagates (both signs).
  {
    const T qnan = std::numeric_limits<T>::quiet_NaN();
    const auto got = evaluate_mixed<T>({qnan, -qnan});
    for (std::size_t e = 0; e < got.size(); ++e)
      for (T v : got[e]) SK_CHECK(std::isnan(v)) << names[e].name << ": fast_exp(NaN) = " << v;
  }
  // Arguments past the overflow threshold give +inf.
  {
    const std::vector<T> big = {next_up(hi), hi + T(1), T(1000), T(1e30),
                                std::numeric_limits<T>::max(), inf};
    const auto got = evaluate_mixed<T>(big);
    for (std::size_t e = 0; e < got.size(); ++e)
      for (std::size_t k = 0; k < big.size(); ++k)
        SK_CHECK(got[e][k] == inf) << names[e].name << ": fast_exp(" << big[k] << ") = " << got[e][k];
  }
  // Arguments below the underflow threshold (where exp is no longer a normal number) give
  // exactly +0, not a subnormal. fast_exp's threshold may sit a few ulps off ln(min normal)
  // (in float it is one ulp below it); there the result must be 0 or accurate.
  {
    const std::vector<T> small = {lo - T(0.5), lo - T(1), lo - T(50), T(-1000), T(-1e30),
                                  std::numeric_limits<T>::lowest(), -inf};
    const auto got = evaluate_mixed<T>(small);
    for (std::size_t e = 0; e < got.size(); ++e)
      for (std::size_t k = 0; k < small.size(); ++k)
        SK_CHECK(got[e][k] == T(0) && !std::signbit(got[e][k]))
            << names[e].name << ": fast_exp(" << small[k] << ") = " << got[e][k];
    std::vector<T> edge;
    for (T v = next_down(lo); edge.size() < 64; v = next_down(v)) edge.push_back(v);
    const auto got_edge = evaluate_mixed<T>(edge);
    for (std::size_t e = 0; e < got_edge.size(); ++e) {
      for (std::size_t k = 0; k < edge.size(); ++k) {
        const T r = got_edge[e][k];
        SK_CHECK(r == T(0) || ulp_distance(r, std::exp(edge[k])) <= 2)
            << names[e].name << ": fast_exp(" << edge[k] << ") = " << r << ", std::exp = "
            << std::exp(edge[k]);
        // Past the threshold, 0 for good: 0 at edge[k] means 0 at every smaller argument.
        if (k > 0 && got_edge[e][k - 1] == T(0)) SK_CHECK(r == T(0)) << names[e].name << ": fast_exp(" << edge[k] << ") = " << r;
      }
      SK_CHECK(got_edge[e].back() == T(0))
          << names[e].name << ": fast_exp is not 0 even 64 ulps below ln(min normal): fast_exp("
          << edge.back() << ") = " << got_edge[e].back();
    }
  }
  // The ends of the accurate range, and exact values.
  {
    const std::vector<T> exact = {T(0), -T(0), lo, highest_fast_arg<T>(), T(1), T(-1),
                                  std::numeric_limits<T>::denorm_min(), -std::numeric_limits<T>::denorm_min()};
    const auto got = evaluate_mixed<T>(exact);
    for (std::size_t e = 0; e < got.size(); ++e) {
      SK_CHECK(got[e][0] == T(1)) << names[e].name << ": fast_exp(0) = " << got[e][0];
      SK_CHECK(got[e][1] == T(1)) << names[e].name << ": fast_exp(-0) = " << got[e][1];
      for (std::size_t k = 2; k < exact.size(); ++k)
        SK_CHECK(ulp_distance(got[e][k], std::exp(exact[k])) <= 2)
            << names[e].name << ": fast_exp(" << exact[k] << ") = " << got[e][k]
            << ", std::exp = " << std::exp(exact[k]);
    }
  }
}

// Every argument of [highest_fast_arg, highest_finite_arg], the top of the range where 2^n
// needs the two-factor scaling of exp.h, gives a finite exp within 2 ulp.
template <typename T>
void check_top_of_range() {
  const T lo = next_up(highest_fast_arg<T>()), hi = highest_finite_arg<T>();
  for (const auto& e : evaluators<T>()) {
    const SweepResult r = sweep<T>(e.fn, lo, hi);
    SK_CHECK(r.max_ulp <= 2) << e.name << " (" << Format<T>::kName << ") on [" << lo << ", "
                             << hi << "]: " << r.max_ulp << " ulp at x = " << r.worst_arg
                             << ": fast_exp = " << r.worst_got << ", std::exp = "
                             << r.worst_expected;
  }
}

// fast_exp_nonpositive gives fast_exp's bits, in each build, for every argument <= 0 sampled
// as the accuracy sweep samples (every binade down to the lowest float, the underflow
// threshold, each switch of n), and for -0, -inf and NaN.
template <typename T>
void check_nonpositive_matches_fast_exp() {
  constexpr T inf = std::numeric_limits<T>::infinity();
  std::vector<T> specials = {T(0), -T(0), -inf, std::numeric_limits<T>::quiet_NaN(),
                             -std::numeric_limits<T>::quiet_NaN()};
  T v = lowest_normal_arg<T>();  // the underflow threshold, and 256 values below it
  for (int k = 0; k < 256; ++k, v = next_down(v)) specials.push_back(v);
  for (const auto& [nonpositive, reference] : nonpositive_evaluators<T>()) {
    std::int64_t points = 0;
    auto compare = [&](const std::vector<T>& in) {
      std::vector<T> got(in.size()), expected(in.size());
      nonpositive.fn(in.data(), got.data(), static_cast<std::int64_t>(in.size()));
      reference(in.data(), expected.data(), static_cast<std::int64_t>(in.size()));
      for (std::size_t k = 0; k < in.size(); ++k)
        SK_CHECK(to_bits(got[k]) == to_bits(expected[k]) ||
                 (std::isnan(got[k]) && std::isnan(expected[k])))
            << nonpositive.name << " (" << Format<T>::kName << "): fast_exp_nonpositive("
            << in[k] << ") = " << got[k] << ", fast_exp = " << expected[k];
      points += static_cast<std::int64_t>(in.size());
    };
    for_each_sample<T>(std::numeric_limits<T>::lowest(), T(0), compare);
    compare(specials);
    SK_CHECK(points > 1000000) << nonpositive.name << ": only " << points << " points";
  }
}

// fast_log over the positive finite numbers, subnormals included: every stride-th
// representable value (about 2^24 of them), and runs of consecutive values around 1 (where
// log is near 0), sqrt(1/2) (where the mantissa's range reduction switches) and the smallest
// normal number (where subnormals are rescaled).
template <typename T>
void check_log_accuracy() {
  using Bits = typename Format<T>::Bits;
  std::vector<T> in;
  const Bits last = to_bits(std::numeric_limits<T>::max());
  const Bits stride = std::max<Bits>(1, last >> 24) | 1u;
  for (Bits b = 1; b <= last - stride; b += stride) in.push_back(from_bits<T>(b));
  in.push_back(std::numeric_limits<T>::max());
  for (T center : {T(1), T(0.70710678118654752440L), std::numeric_limits<T>::min()}) {
    T up = center, down = center;
    for (int k = 0; k < 4096; ++k, up = next_up(up), down = next_down(down)) {
      in.push_back(up);
      in.push_back(down);
    }
  }
  std::vector<T> out(in.size());
  for (const auto& e : log_evaluators<T>()) {
    e.fn(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
    std::uint64_t max_ulp = 0;
    T worst = T(1);
    for (std::size_t k = 0; k < in.size(); ++k) {
      const std::uint64_t u = ulp_distance(out[k], std::log(in[k]));
      if (u > max_ulp) max_ulp = u, worst = in[k];
    }
    sktest::info(std::string(Format<T>::kName) + " log " + e.name + ": " +
                 std::to_string(in.size()) + " points, max " + std::to_string(max_ulp) +
                 " ulp at x = " + sktest::fmt(worst));
    SK_CHECK(max_ulp <= 2) << e.name << " (" << Format<T>::kName << "): fast_log(" << worst
                           << ") is " << max_ulp << " ulp from std::log";
  }
}

// log(+-0) = -inf (an empty row sum), log(x < 0) and log(NaN) are NaN, log(inf) = inf,
// log(1) = 0 exactly; among ordinary arguments, so that they share vector registers.
template <typename T>
void check_log_special_values() {
  constexpr T inf = std::numeric_limits<T>::infinity();
  const std::vector<T> values = {T(0), -T(0), T(-1), -inf, -std::numeric_limits<T>::denorm_min(),
                                 std::numeric_limits<T>::quiet_NaN(), inf, T(1)};
  std::vector<T> in;
  for (T v : values) {
    for (int k = 1; k <= 5; ++k) in.push_back(T(0.3) * k);
    in.push_back(v);
  }
  std::vector<T> out(in.size());
  for (const auto& e : log_evaluators<T>()) {
    e.fn(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
    for (std::size_t k = 0; k < in.size(); ++k) {
      if (k % 6 != 5) {
        SK_CHECK(ulp_distance(out[k], std::log(in[k])) <= 2)
            << e.name << ": filler argument " << in[k] << " gave " << out[k];
      }
    }
    const auto got = [&](std::size_t v) { return out[6 * v + 5]; };
    SK_CHECK(got(0) == -inf && got(1) == -inf)
        << e.name << ": fast_log(+-0) = " << got(0) << ", " << got(1);
    for (std::size_t v = 2; v <= 5; ++v)
      SK_CHECK(std::isnan(got(v))) << e.name << ": fast_log(" << values[v] << ") = " << got(v);
    SK_CHECK(got(6) == inf) << e.name << ": fast_log(inf) = " << got(6);
    SK_CHECK(got(7) == T(0) && !std::signbit(got(7))) << e.name << ": fast_log(1) = " << got(7);
  }
}

}  // namespace

SK_TEST(log, float_accuracy_sweep) { check_log_accuracy<float>(); }
SK_TEST(log, double_accuracy_sweep) { check_log_accuracy<double>(); }
SK_TEST(log, float_special_values) { check_log_special_values<float>(); }
SK_TEST(log, double_special_values) { check_log_special_values<double>(); }

SK_TEST(exp, float_accuracy_sweep) { check_accuracy_sweep<float>(); }
SK_TEST(exp, double_accuracy_sweep) { check_accuracy_sweep<double>(); }
SK_TEST(exp, float_special_values) { check_special_values<float>(); }
SK_TEST(exp, double_special_values) { check_special_values<double>(); }
SK_TEST(exp, float_nonpositive_matches_fast_exp) { check_nonpositive_matches_fast_exp<float>(); }
SK_TEST(exp, double_nonpositive_matches_fast_exp) { check_nonpositive_matches_fast_exp<double>(); }
SK_TEST(exp, top_of_range) {
  check_top_of_range<float>();
  check_top_of_range<double>();
}
