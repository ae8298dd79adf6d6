// How the CPU kernels split work over threads, and their scratch buffers. Every output
// element is computed by one thread in a fixed order, so results are bitwise repeatable for a
// thread count (DESIGN.md section 4). Row ranges start at block multiples, so that the row
// kernels treat each row alike whatever the count; where results still depend on the count
// (the tile shapes of the BLAS products, the column sums per part of the rows of the scaling
// strategy and of the online backward), they agree across counts to rounding.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <utility>
#include <vector>

#include "cpu/scratch.h"

namespace sinkhorn::cpu {

// Work per chunk, in multiply-adds (an exp counts as about 8): a few microseconds, several
// times what starting a parallel region costs (about a microsecond on two threads). Smaller
// work runs on the calling thread.
constexpr int64_t kChunkWork = int64_t{1} << 15;
constexpr int64_t kExpWork = 8;

// Runs fn(b, r) for every row r < rows of every batch b, in parallel; row_work is the work of
// one row.
template <typename Fn>
void for_each_row(int64_t batch, int64_t rows, int64_t row_work, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kChunkWork / std::max<int64_t>(1, row_work));
  at::parallel_for(0, batch * rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) fn(k / rows, k % rows);
  });
}

// Runs fn(b, c0, c1) for blocks [c0, c1) of kColumnBlock columns of every batch b, in
// parallel; column_work is the work of one column. The block width is fixed, so each column
// is summed in the same order whatever the thread count.
constexpr int64_t kColumnBlock = 128;

template <typename Fn>
void for_each_column_block(int64_t batch, int64_t cols, int64_t column_work, const Fn& fn) {
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
  const int64_t block_work = kColumnBlock * std::max<int64_t>(1, column_work);
  const int64_t grain = std::max<int64_t>(1, kChunkWork / block_work);
  at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c0 = (k % blocks) * kColumnBlock;
      fn(k / blocks, c0, std::min(cols, c0 + kColumnBlock));
    }
  });
}

// Runs fn(b, r0, r1) over ranges [r0, r1) of the rows of every batch b, in parallel. Ranges
// start at multiples of kRowBlock, so each row takes the same code path (cpu/rows.h matvec
// works four or eight rows at a time) whatever the thread count.
constexpr int64_t kRowBlock = 8;

template <typename Fn>
void for_each_row_range(int64_t batch, int64_t rows, int64_t row_work, const Fn& fn) {
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t grain =
      std::max<int64_t>(1, kChunkWork / (kRowBlock * std::max<int64_t>(1, row_work)));
  at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
    while (begin < end) {  // split [begin, end) at batch boundaries
      const int64_t b = begin / blocks;
      const int64_t stop = std::min(end, (b + 1) * blocks);
      fn(b, (begin - b * blocks) * kRowBlock, std::min(rows, (stop - b * blocks) * kRowBlock));
      begin = stop;
    }
  });
}

// The passes that sum over rows split the rows of each batch into parts, each with its own
// sums: one per thread at most (one inside a parallel region), fewer where the work is small
// (row_work per row). Parts are whole kRowBlock blocks, so each row is computed alike.
inline int64_t row_parts(int64_t batch, int64_t rows, int64_t row_work) {
  if (at::in_parallel_region()) return 1;
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t by_work = rows * std::max<int64_t>(1, row_work) / kChunkWork;
  const int64_t by_threads = (at::get_num_threads() + batch - 1) / batch;
  return std::max<int64_t>(1, std::min({blocks, by_work, by_threads}));
}

// The rows [first, second) of part `part` of `parts`.
inline std::pair<int64_t, int64_t> row_part_range(int64_t rows, int64_t parts, int64_t part) {
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  return {blocks * part / parts * kRowBlock,
          std::min(rows, blocks * (part + 1) / parts * kRowBlock)};
}

// Runs fn(b, part) for the parts (row_part_range) of the rows of every batch b, in parallel.
template <typename Fn>
void for_each_row_part(int64_t batch, int64_t rows, int64_t parts, int64_t row_work,
                       const Fn& fn) {
  const int64_t part_work = std::max<int64_t>(1, rows * row_work / parts);
  const int64_t grain = std::max<int64_t>(1, kChunkWork / part_work);
  at::parallel_for(0, batch * parts, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) fn(k / parts, k % parts);
  });
}

// Waits until done() holds: spinning, then yielding the core (where threads outnumber cores,
// the one awaited may need it).
template <typename Done>
void spin_until(const Done& done) {
  for (int spins = 0; !done(); ++spins)
    if (spins >= 4096) std::this_thread::yield();
}

// A barrier for count threads of one parallel region, reusable.
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t count) : count_(count) {}

  void wait() {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);  // before the others may arrive again
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    spin_until([&] { return generation_.load(std::memory_order_acquire) != generation; });
  }

 private:
  const int64_t count_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

// For step = 0..steps-1: parallel(step, slot) for every slot < slots, then, once all have
// finished, finish(step, slot) for every slot, in one parallel region whose threads, one per
// slot, meet at a barrier after each parallel phase (finish may read what every slot wrote
// in it, and must leave alone what the next step's parallel phase reads of other slots):
// where a step takes microseconds, starting a region per step would cost about as much as
// the step. Returns false, having run nothing, where the region would have fewer threads
// than slots (inside another region, or with fewer threads); the caller then runs a region
// per step.
template <typename Parallel, typename Finish>
bool run_steps_in_one_region(int64_t steps, int64_t slots, const Parallel& parallel,
                             const Finish& finish) {
  if (slots < 2 || slots > at::get_num_threads() || at::in_parallel_region()) return false;
  std::atomic<int64_t> joined{0}, claimed{0};
  std::atomic<bool> ran{false};
  SpinBarrier barrier(slots);
  at::parallel_for(0, slots, 1, [&](int64_t begin, int64_t end) {
    joined.fetch_add(1);
    claimed.fetch_add(end - begin);
    // Once every slot is claimed every thread has joined: one slot each, or none goes on.
    spin_until([&] { return claimed.load() == slots; });
    if (joined.load() != slots) return;
    for (int64_t step = 0; step < steps; ++step) {
      parallel(step, begin);
      barrier.wait();
      finish(step, begin);
    }
    if (begin == 0) ran.store(true);
  });
  return ran.load();
}

// Runs fn(b, r0, r1) over tiles of at most kTileRows rows of every batch b, in parallel: the
// unit of the passes that compute costs on the fly (cpu/cost_matrix.h cost_tile).
constexpr int64_t kTileRows = 32;

template <typename Fn>
void for_each_tile(int64_t batch, int64_t rows, int64_t row_work, const Fn& fn) {
  for_each_row_range(batch, rows, row_work, [&](int64_t b, int64_t r0, int64_t r1) {
    for (int64_t t0 = r0; t0 < r1; t0 += kTileRows) fn(b, t0, std::min(r1, t0 + kTileRows));
  });
}

// A tile of kTileRows x cols elements per thread, for the costs that a tiled pass computes
// (cpu/cost_matrix.h cost_tile). Valid until the thread's next call.
template <typename T>
T* tile_scratch(int64_t cols) {
  thread_local std::vector<T> scratch;
  scratch.resize(static_cast<std::size_t>(kTileRows * cols));
  return scratch.data();
}

// Uninitialised scratch (std::vector would spend a pass zeroing it), from cpu/scratch.h.
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t size)
      : block_(acquire_scratch(static_cast<std::size_t>(std::max<int64_t>(size, 1)) *
                               sizeof(T))) {}
  ~Buffer() { release_scratch(block_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* get() const { return static_cast<T*>(block_.data); }

 private:
  ScratchBlock block_;
};

}  // namespace sinkhorn::cpu
