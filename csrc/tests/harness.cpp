// The registry and main() of the kernel unit tests; see harness.h.
#include "tests/harness.h"

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace sktest {
namespace {

struct TestCase {
  std::string name;  // "suite.name"
  TestFn fn;
};

std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

struct RunState {
  const char* test = nullptr;
  int64_t checks = 0;
  int64_t failures = 0;
};

RunState& state() {
  static RunState s;
  return s;
}

constexpr int64_t kMaxReportedFailures = 25;

bool is_disabled(const std::string& name) {
  return name.find(".DISABLED_") != std::string::npos;
}

bool matches(const std::string& name, const std::string& pattern) {
  if (!pattern.empty() && pattern.back() == '*')
    return name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0;
  return name == pattern;
}

}  // namespace

Registrar::Registrar(const char* suite, const char* name, TestFn fn) {
  registry().push_back({std::string(suite) + "." + name, fn});
}

void record_check() { ++state().checks; }

void record_failure(const char* file, int line, const std::string& expression,
                    const std::string& message) {
  RunState& s = state();
  ++s.failures;
  if (s.failures <= kMaxReportedFailures) {
    std::printf("  %s:%d: check failed: %s%s%s\n", file, line, expression.c_str(),
                message.empty() ? "" : "\n    ", message.c_str());
  } else if (s.failures == kMaxReportedFailures + 1) {
    std::printf("  (further failures of this test are counted but not printed)\n");
  }
  std::fflush(stdout);
}

void info(const std::string& line) {
  std::printf("  %s\n", line.c_str());
  std::fflush(stdout);
}

}  // namespace sktest

int main(int argc, char** argv) {
  using sktest::registry;
  std::vector<std::string> patterns(argv + 1, argv + argc);
  if (patterns.size() == 1 && patterns[0] == "--list") {
    for (const auto& t : registry()) std::printf("%s\n", t.name.c_str());
    return 0;
  }
  std::vector<const sktest::TestCase*> selected;
  for (const auto& p : patterns) {
    bool any = false;
    for (const auto& t : registry()) any = any || sktest::matches(t.name, p);
    if (!any) {
      std::fprintf(stderr, "no test matches \"%s\" (run with --list to see the tests)\n",
                   p.c_str());
      return 2;
    }
  }
  for (const auto& t : registry()) {
    bool wanted = false;
    if (patterns.empty()) {
      wanted = !sktest::is_disabled(t.name);
    } else {
      for (const auto& p : patterns) {
        // A disabled test runs only when it is named exactly.
        wanted = wanted || (p == t.name) || (sktest::matches(t.name, p) && !sktest::is_disabled(t.name));
      }
    }
    if (wanted) selected.push_back(&t);
  }

  int failed_tests = 0;
  int64_t total_checks = 0;
  for (const sktest::TestCase* t : selected) {
    sktest::RunState& s = sktest::state();
    s = sktest::RunState{t->name.c_str(), 0, 0};
    std::printf("[ RUN  ] %s\n", t->name.c_str());
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    try {
      t->fn();
    } catch (const std::exception& e) {
      sktest::record_failure(__FILE__, __LINE__, "unexpected exception", e.what());
    } catch (...) {
      sktest::record_failure(__FILE__, __LINE__, "unexpected exception", "(not a std::exception)");
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    total_checks += s.checks;
    if (s.checks == 0) {
      sktest::record_failure(__FILE__, __LINE__, "the test made no checks", "");
    }
    if (s.failures == 0) {
      std::printf("[  OK  ] %s (%lld checks, %.1f ms)\n", t->name.c_str(),
                  static_cast<long long>(s.checks), ms);
    } else {
      ++failed_tests;
      std::printf("[ FAIL ] %s (%lld of %lld checks failed, %.1f ms)\n", t->name.c_str(),
                  static_cast<long long>(s.failures), static_cast<long long>(s.checks), ms);
    }
    std::fflush(stdout);
  }
  std::printf("%zu tests, %lld checks, %d failed\n", selected.size(),
              static_cast<long long>(total_checks), failed_tests);
  return failed_tests == 0 ? 0 : 1;
}
