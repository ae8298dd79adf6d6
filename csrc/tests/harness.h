// A tiny self-contained test harness for the kernel unit tests (gtest is not available
// offline). Usage:
//
//   SK_TEST(softmin, float_rows) {                  // registers the test "softmin.float_rows"
//     SK_CHECK(x == 1) << "x = " << x;              // records a failure, continues
//     SK_CHECK_CLOSE(got, expected, tol) << "n = " << n;  // |got - expected| <= tol
//   }
//
// The binary (harness.cpp has main) runs every registered test, or only those named on the
// command line ("suite.name", or "suite.*"), prints "[ RUN  ]" / "[  OK  ]" / "[ FAIL ]"
// lines and the file:line, expression and message of every failed check, and exits with 1
// if any check failed (2 for a bad command line). `--list` prints the test names.
// CMakeLists.txt scans the sources for SK_TEST(suite, name) and registers one ctest test per
// test case; tests whose name starts with DISABLED_ are skipped unless named explicitly.
#pragma once

#include <cmath>
#include <cstdint>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

namespace sktest {

using TestFn = void (*)();

struct Registrar {
  Registrar(const char* suite, const char* name, TestFn fn);
};

// Called by the check macros.
void record_check();
void record_failure(const char* file, int line, const std::string& expression,
                    const std::string& message);
// Prints an indented informational line under the running test (observed errors, etc.).
void info(const std::string& line);

// A failed check reports itself when the temporary dies, at the end of the full expression,
// so that a message can be streamed into it.
class Check {
 public:
  Check(bool ok, const char* file, int line, const char* expression, std::string detail = {})
      : ok_(ok), file_(file), line_(line), expression_(expression), detail_(std::move(detail)) {
    record_check();
    if (!ok_) stream_ << std::setprecision(17);
  }
  Check(const Check&) = delete;
  Check& operator=(const Check&) = delete;
  ~Check() {
    if (!ok_) record_failure(file_, line_, expression_ + detail_, stream_.str());
  }
  template <typename V>
  Check& operator<<(const V& v) {
    if (!ok_) stream_ << v;
    return *this;
  }

 private:
  bool ok_;
  const char* file_;
  int line_;
  std::string expression_;
  std::string detail_;
  std::ostringstream stream_;
};

template <typename A, typename B>
std::string describe_close(const A& got, const B& expected, long double tol) {
  std::ostringstream s;
  s << std::setprecision(17) << "got " << static_cast<long double>(got) << ", expected "
    << static_cast<long double>(expected) << ", |diff| = "
    << std::fabs(static_cast<long double>(got) - static_cast<long double>(expected))
    << " > tol " << tol;
  return s.str();
}

// |got - expected| <= tol, with NaN never close and equal infinities close.
template <typename A, typename B>
bool is_close(const A& got, const B& expected, long double tol) {
  const long double g = static_cast<long double>(got), e = static_cast<long double>(expected);
  if (std::isnan(g) || std::isnan(e)) return false;
  if (std::isinf(g) || std::isinf(e)) return g == e;
  return std::fabs(g - e) <= tol;
}

template <typename A, typename B>
Check close_check(const A& got, const B& expected, long double tol, const char* file, int line,
                  const char* expression) {
  const bool ok = is_close(got, expected, tol);
  return Check(ok, file, line, expression, ok ? std::string() : ": " + describe_close(got, expected, tol));
}

template <typename T>
std::string fmt(const T& v) {
  std::ostringstream s;
  s << std::setprecision(17) << v;
  return s.str();
}

}  // namespace sktest

#define SK_TEST(suite, name)                                                   \
  static void sk_test_##suite##_##name();                                     \
  static const ::sktest::Registrar sk_test_registrar_##suite##_##name(        \
      #suite, #name, &sk_test_##suite##_##name);                              \
  static void sk_test_##suite##_##name()

#define SK_CHECK(cond) ::sktest::Check(static_cast<bool>(cond), __FILE__, __LINE__, #cond)

#define SK_CHECK_CLOSE(got, expected, tol) \
  ::sktest::close_check((got), (expected), (tol), __FILE__, __LINE__, #got " ~= " #expected)
