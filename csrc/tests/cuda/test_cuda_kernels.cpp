// The CUDA kernels of csrc/cuda, compiled from their unchanged source by the host compiler
// and run on the CPU by the emulation layer (tests/emulation/cuda_runtime.h), against the CPU
// op: values and gradients to rounding, for the three strategies (resident: one launch, C in
// shared memory; tiled: one launch per half-step; online: one launch per half-step, no m x n
// array) and three orders of running the threads between barriers.
//
// What this proves: the kernels' arithmetic, indexing (tile tails, padding, batch and row
// offsets) and barrier placement. What it does not: memory coalescing, occupancy, speed,
// races between threads outside barriers (the emulation runs one thread at a time), or the
// device's own numerics (expf, fused multiply-adds). It complements a GPU run of
// python_tests/test_cuda.py; it does not replace it.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
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

enum class Strategy { kResident, kTiled, kOnline };

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::kResident: return "resident";
    case Strategy::kTiled: return "tiled";
    case Strategy::kOnline: return "online";
  }
  return "?";
}

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

// Selects the tensorized strategy through the shared memory the emulated device offers a
// block (the online backend is selected by the params), and the order in which the emulation
// resumes threads; restores the defaults when the test ends.
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

// The online backend's grid: m != n, the tails of the row blocks (128) and of the column
// tiles (16 points), d around and well above a chunk of coordinates (8), both costs, L = 1
// and 3, batches, zero weights on both sides.
template <typename T>
std::vector<Problem<T>> online_problems() {
  std::vector<Problem<T>> ps;
  std::uint64_t seed = 300;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    ps.push_back(make_problem<T>(1, 1, 1, 1, 1, 0.5, cost, seed++));
    ps.push_back(make_problem<T>(2, 7, 5, 2, 3, 0.5, cost, seed++));
    ps.push_back(make_problem<T>(1, 130, 37, 3, 1, 0.1, cost, seed++));
    ps.push_back(make_problem<T>(2, 29, 131, 5, 3, 0.05, cost, seed++));
    ps.push_back(make_problem<T>(1, 17, 16, 8, 3, 0.3, cost, seed++));
    ps.push_back(make_problem<T>(2, 9, 33, 9, 1, 0.3, cost, seed++));
    ps.push_back(make_problem<T>(2, 20, 17, 70, 3, 2.0, cost, seed++));
  }
  for (int64_t d : {2, 70}) {
    Problem<T> zero = make_problem<T>(2, 18, 21, d, 3, 0.2 * d, Cost::kSqEuclidean, seed++);
    for (auto [w, count] : {std::make_pair(&zero.a, zero.m), std::make_pair(&zero.b, zero.n)}) {
      for (int64_t b = 0; b < zero.B; ++b) {
        T* weights = w->data() + b * count;
        for (int64_t k = 1; k + 1 < count; k += 5) {
          weights[k + 1] += weights[k];
          weights[k] = T(0);
        }
      }
    }
    ps.push_back(zero);
  }
  return ps;
}

template <typename T>
std::vector<Problem<T>> problems_for(Strategy s) {
  return s == Strategy::kOnline ? online_problems<T>() : problems<T>();
}

// The params a strategy runs with: the online backend gets no m x n workspace, so that a
// kernel that touched one would fail.
template <typename T>
SinkhornParams<T> params_for(Strategy s, SinkhornParams<T> sp) {
  if (s == Strategy::kOnline) {
    sp.online = true;
    sp.cost_matrix = sp.cost_matrix_t = sp.grad_matrix = sp.grad_matrix_t = nullptr;
  }
  return sp;
}

// Launches of one forward: 1 for the resident kernel; for the tiled path 2 cost matrices,
// 2 half-steps per iteration and the final sum; online the same without the cost matrices.
int64_t forward_launches(Strategy s, int64_t L) {
  switch (s) {
    case Strategy::kResident: return 1;
    case Strategy::kTiled: return 2 * L + 3;
    case Strategy::kOnline: return 2 * L + 1;
  }
  return -1;
}

// Launches of one backward: 1 for the resident kernel; online, the potentials of level L, the
// terminal softmin and its scaling, the first pass over x, 2 passes per level and the
// potentials of each level below L; the tiled path is not counted.
int64_t backward_launches(Strategy s, int64_t L) {
  switch (s) {
    case Strategy::kResident: return 1;
    case Strategy::kTiled: return -1;
    case Strategy::kOnline: return 4 * L + 3;
  }
  return -1;
}

// The CPU op of the same backend (the online one for the online strategy).
template <typename T>
void cpu_forward(Strategy s, SinkhornParams<T> sp) {
  sp.online = s == Strategy::kOnline;
  sinkhorn::cpu::sinkhorn_forward(sp);
}
template <typename T>
void cpu_backward(Strategy s, SinkhornParams<T> sp) {
  sp.online = s == Strategy::kOnline;
  sinkhorn::cpu::sinkhorn_backward(sp);
}

template <typename T>
void check_forward(Strategy strategy, double rtol) {
  for (const auto& p : problems_for<T>(strategy)) {
    const ForwardResult<T> cpu =
        sktest::run_forward(p, [&](const SinkhornParams<T>& sp) { cpu_forward(strategy, sp); });
    for_each_schedule(p.describe(), strategy, 1, forward_launches(strategy, p.L),
                      [&](const std::string& where) {
      const ForwardResult<T> got = sktest::run_forward(p, [&](const SinkhornParams<T>& sp) {
        check_launches(sinkhorn::cuda::sinkhorn_forward(params_for(strategy, sp), cudaStream_t{}),
                       where);
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
  for (const auto& p : problems_for<T>(strategy)) {
    const ForwardResult<T> fw =
        sktest::run_forward(p, [&](const SinkhornParams<T>& sp) { cpu_forward(strategy, sp); });
    std::vector<T> grad_cost(static_cast<std::size_t>(p.B));
    for (int64_t b = 0; b < p.B; ++b) grad_cost[b] = static_cast<T>(0.5 + 0.75 * b);
    const Grads<T> cpu = sktest::run_backward(
        p, fw, grad_cost, [&](const SinkhornParams<T>& sp) { cpu_backward(strategy, sp); });
    for_each_schedule(p.describe(), strategy, 7, backward_launches(strategy, p.L),
                      [&](const std::string& where) {
      const Grads<T> got =
          sktest::run_backward(p, fw, grad_cost, [&](const SinkhornParams<T>& sp) {
            check_launches(
                sinkhorn::cuda::sinkhorn_backward(params_for(strategy, sp), cudaStream_t{}),
                where);
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

// The backward where the op does not want grad_y (null), and for a self-term W(x, x)
// (x_is_y: y is x, grad_x gets the gradient through both arguments, grad_y is null), against
// the CPU op's full gradients of the same problem: grad_x, and grad_x + grad_y for a
// self-term. grad_y must be left as it was (NaN).
template <typename T>
void check_backward_without_grad_y(Strategy strategy, double rtol) {
  std::uint64_t seed = 400;
  for (Cost cost : {Cost::kSqEuclidean, Cost::kEuclidean}) {
    for (int64_t d : {3, 70}) {
      const Problem<T> xy = make_problem<T>(2, 23, 19, d, 3, d > 8 ? 2.0 : 0.2, cost, seed++);
      Problem<T> xx = xy;
      xx.n = xx.m, xx.y = xx.x, xx.b = xx.a;
      for (const bool self_term : {false, true}) {
        const Problem<T>& p = self_term ? xx : xy;
        const ForwardResult<T> fw = sktest::run_forward(
            p, [&](const SinkhornParams<T>& sp) { cpu_forward(strategy, sp); });
        const std::vector<T> grad_cost = {T(0.5), T(-1.25)};
        const Grads<T> cpu = sktest::run_backward(
            p, fw, grad_cost,
            [&](const SinkhornParams<T>& sp) { cpu_backward(strategy, sp); });
        std::vector<T> expected_x = cpu.x;
        if (self_term) {
          for (std::size_t k = 0; k < expected_x.size(); ++k) expected_x[k] += cpu.y[k];
        }
        const std::string problem =
            p.describe() + (self_term ? ", self-term" : ", without grad_y");
        for_each_schedule(problem, strategy, 11, -1, [&](const std::string& where) {
          const Grads<T> got =
              sktest::run_backward(p, fw, grad_cost, [&](const SinkhornParams<T>& sp) {
                SinkhornParams<T> q = params_for(strategy, sp);
                q.x_is_y = self_term;
                q.grad_y = nullptr;
                check_launches(sinkhorn::cuda::sinkhorn_backward(q, cudaStream_t{}), where);
              });
          check_close("grad x", got.x, expected_x, 0.0, rtol, where);
          check_close("grad x_weights", got.a, cpu.a, 1.0, rtol, where);
          check_close("grad y_weights", got.b, cpu.b, 1.0, rtol, where);
          SK_CHECK(std::all_of(got.y.begin(), got.y.end(), [](T v) { return std::isnan(v); }))
              << "grad_y was written (" << where << ")";
        });
      }
    }
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
SK_TEST(cuda_online, forward_double_matches_cpu_online) {
  check_forward<double>(Strategy::kOnline, kDoubleRtol);
}
SK_TEST(cuda_online, forward_float_matches_cpu_online) {
  check_forward<float>(Strategy::kOnline, kFloatForwardRtol);
}
SK_TEST(cuda_online, backward_double_matches_cpu_online) {
  check_backward<double>(Strategy::kOnline, kDoubleRtol);
}
SK_TEST(cuda_online, backward_float_matches_cpu_online) {
  check_backward<float>(Strategy::kOnline, kFloatBackwardRtol);
}
SK_TEST(cuda_backward, without_grad_y_and_of_self_terms_matches_cpu) {
  for (Strategy s : {Strategy::kResident, Strategy::kTiled}) {
    check_backward_without_grad_y<double>(s, kDoubleRtol);
    check_backward_without_grad_y<float>(s, kFloatBackwardRtol);
  }
}
SK_TEST(cuda_online, backward_without_grad_y_and_of_self_terms_matches_cpu_online) {
  check_backward_without_grad_y<double>(Strategy::kOnline, kDoubleRtol);
  check_backward_without_grad_y<float>(Strategy::kOnline, kFloatBackwardRtol);
}
