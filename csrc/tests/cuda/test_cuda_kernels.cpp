// The CUDA kernels of csrc/cuda, compiled from their unchanged source by the host compiler
// and run on the CPU by the emulation layer (tests/emulation/cuda_runtime.h), against the CPU
// op: values and gradients to rounding, for both strategies (resident: one launch, C in
// shared memory; tiled: one launch per half-step) and three orders of running the threads
// between barriers.
//
// What this proves: the kernels' arithmetic, indexing (tile tails, padding, batch and row
// offsets) and barrier placement. What it does not: memory coalescing, occupancy, speed,
// races between threads outside barriers (the emulation runs one thread at a time), or the
// device's own numerics (expf, fused multiply-adds). It complements a GPU run of
// python_tests/test_cuda.py; it does not replace it.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/sinkhorn_cpu.h"
#include "cuda/sinkhorn_cuda.h"
#include "tests/harness.h"
#include "tests/problems.h"

namespace {

namespace emulation = sinkhorn::emulation;
using sinkhorn::Cost;
using sinkhorn::SinkhornParams;
using sktest::ForwardResult;
using sktest::Grads;
using sktest::make_problem;
using sktest::max_rel_diff;
using sktest::Problem;

enum class Strategy { kResident, kTiled };

const char* strategy_name(Strategy s) { return s == Strategy::kResident ? "resident" : "tiled"; }

const char* schedule_name(emulation::Schedule s) {
  switch (s) {
    case emulation::Schedule::kForward: return "forward";
    case emulation::Schedule::kReverse: return "reverse";
    case emulation::Schedule::kShuffled: return "shuffled";
  }
  return "?";
}

constexpr emulation::Schedule kSchedules[] = {
    emulation::Schedule::kForward, emulation::Schedule::kReverse, emulation::Schedule::kShuffled};

// Selects the strategy through the shared memory the emulated device offers a block, and the
// order in which the emulation resumes threads; restores the defaults when the test ends.
struct DeviceSetup {
  int saved_shared = emulation::max_shared_memory_per_block_optin();
  DeviceSetup(Strategy strategy, emulation::Schedule schedule, unsigned seed) {
    if (strategy == Strategy::kTiled) emulation::set_max_shared_memory_per_block_optin(0);
    emulation::set_schedule(schedule, seed);
  }
  ~DeviceSetup() {
    emulation::set_max_shared_memory_per_block_optin(saved_shared);
    emulation::set_schedule(emulation::Schedule::kForward);
  }
};

void check_launches(cudaError_t error, const std::string& where) {
  SK_CHECK(error == cudaSuccess) << cudaGetErrorString(error) << ": "
                                 << emulation::last_error_message() << " (" << where << ")";
}

template <typename T>
void check_close(const char* name, const std::vector<T>& got, const std::vector<T>& expected,
                 double floor, double rtol, const std::string& where) {
  const double diff = max_rel_diff(got, expected, floor);
  SK_CHECK(diff <= rtol) << name << ": " << diff << " (" << where << ")";
}

// Calls run(where) under each schedule, with the emulated device set up for the strategy,
// and checks that each call made expected_launches launches (if >= 0).
template <typename Run>
void for_each_schedule(const std::string& problem, Strategy strategy, unsigned seed,
                       int64_t expected_launches, const Run& run) {
  for (auto schedule : kSchedules) {
    const std::string where = problem + ", " + strategy_name(strategy) + ", " +
                              schedule_name(schedule) + " schedule";
    const DeviceSetup setup(strategy, schedule, seed++);
    const int64_t before = emulation::launch_count();
    run(where);
    const int64_t launches = emulation::launch_count() - before;
    if (expected_launches >= 0) {
      SK_CHECK(launches == expected_launches) << launches << " launches (" << where << ")";
    }
  }
}

// Sizes around the tile length (kThreads = 128) and the resident block (256 threads), a
// single point, n = 1 and m = 1, batches, zero weights; both costs, several L and eps.
template <typename T>
std::vector<Problem<T>> problems() {
  std::vector<Problem<T>> ps;
  std::uint64_t seed = 100;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    ps.push_back(make_problem<T>(1, 1, 1, 1, 2, 0.5, cost, seed++));
    ps.push_back(make_problem<T>(2, 7, 5, 3, 3, 0.5, cost, seed++));
    ps.push_back(make_problem<T>(3, 1, 9, 2, 2, 0.2, cost, seed++));
    ps.push_back(make_problem<T>(2, 9, 1, 2, 2, 0.2, cost, seed++));
    ps.push_back(make_problem<T>(1, 130, 37, 2, 3, 0.1, cost, seed++));
    ps.push_back(make_problem<T>(2, 29, 131, 4, 1, 0.05, cost, seed++));
  }
  ps.push_back(make_problem<T>(1, 259, 33, 2, 2, 0.3, Cost::kSqEuclidean, seed++));
  // Zero weights (a log-weight of -inf) on both sides.
  Problem<T> zero = make_problem<T>(2, 6, 8, 2, 3, 0.2, Cost::kSqEuclidean, seed++);
  for (auto* w : {&zero.a, &zero.b}) {
    const T moved = (*w)[1];
    (*w)[1] = T(0);
    (*w)[2] += moved;
  }
  ps.push_back(zero);
  return ps;
}

// Launches of one forward: 1 for the resident kernel; for the tiled path 2 cost matrices,
// 2 half-steps per iteration and the final sum.
int64_t forward_launches(Strategy s, int64_t L) { return s == Strategy::kResident ? 1 : 2 * L + 3; }

template <typename T>
void check_forward(Strategy strategy, double rtol) {
  for (const auto& p : problems<T>()) {
    const ForwardResult<T> cpu = sktest::run_forward(p, sinkhorn::cpu::sinkhorn_forward<T>);
    for_each_schedule(p.describe(), strategy, 1, forward_launches(strategy, p.L),
                      [&](const std::string& where) {
      const ForwardResult<T> got = sktest::run_forward(p, [&](const SinkhornParams<T>& sp) {
        check_launches(sinkhorn::cuda::sinkhorn_forward(sp, cudaStream_t{}), where);
      });
      check_close("W", got.W, cpu.W, 0.0, rtol, where);
      // Potentials relative to at least 1: they are offsets of the order of the cost.
      check_close("u_history", got.u, cpu.u, 1.0, rtol, where);
      check_close("v_history", got.v, cpu.v, 1.0, rtol, where);
    });
  }
}

// The backward is run on the CPU forward's history, so that it is compared on its own.
template <typename T>
void check_backward(Strategy strategy, double rtol) {
  for (const auto& p : problems<T>()) {
    const ForwardResult<T> fw = sktest::run_forward(p, sinkhorn::cpu::sinkhorn_forward<T>);
    std::vector<T> grad_cost(static_cast<std::size_t>(p.B));
    for (int64_t b = 0; b < p.B; ++b) grad_cost[b] = static_cast<T>(0.5 + 0.75 * b);
    const Grads<T> cpu =
        sktest::run_backward(p, fw, grad_cost, sinkhorn::cpu::sinkhorn_backward<T>);
    for_each_schedule(p.describe(), strategy, 7, strategy == Strategy::kResident ? 1 : -1,
                      [&](const std::string& where) {
      const Grads<T> got =
          sktest::run_backward(p, fw, grad_cost, [&](const SinkhornParams<T>& sp) {
            check_launches(sinkhorn::cuda::sinkhorn_backward(sp, cudaStream_t{}), where);
          });
      check_close("grad x", got.x, cpu.x, 0.0, rtol, where);
      check_close("grad y", got.y, cpu.y, 0.0, rtol, where);
      // Weight gradients relative to at least 1: they are of the order of the cost (and with
      // m = 1, dW/dalpha is 0 up to rounding).
      check_close("grad x_weights", got.a, cpu.a, 1.0, rtol, where);
      check_close("grad y_weights", got.b, cpu.b, 1.0, rtol, where);
    });
  }
}

}  // namespace

// Tolerances relative to the CPU op: the two differ only in the order of the additions and
// in the online (one-pass) against the two-pass log-sum-exp.
constexpr double kDoubleRtol = 1e-11, kFloatForwardRtol = 2e-5, kFloatBackwardRtol = 1e-4;

SK_TEST(cuda_forward, resident_double_matches_cpu) {
  check_forward<double>(Strategy::kResident, kDoubleRtol);
}
SK_TEST(cuda_forward, resident_float_matches_cpu) {
  check_forward<float>(Strategy::kResident, kFloatForwardRtol);
}
SK_TEST(cuda_forward, tiled_double_matches_cpu) {
  check_forward<double>(Strategy::kTiled, kDoubleRtol);
}
SK_TEST(cuda_forward, tiled_float_matches_cpu) {
  check_forward<float>(Strategy::kTiled, kFloatForwardRtol);
}
SK_TEST(cuda_backward, resident_double_matches_cpu) {
  check_backward<double>(Strategy::kResident, kDoubleRtol);
}
SK_TEST(cuda_backward, resident_float_matches_cpu) {
  check_backward<float>(Strategy::kResident, kFloatBackwardRtol);
}
SK_TEST(cuda_backward, tiled_double_matches_cpu) {
  check_backward<double>(Strategy::kTiled, kDoubleRtol);
}
SK_TEST(cuda_backward, tiled_float_matches_cpu) {
  check_backward<float>(Strategy::kTiled, kFloatBackwardRtol);
}
