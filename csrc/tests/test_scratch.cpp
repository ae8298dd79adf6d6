// The cache of large scratch blocks (csrc/cpu/scratch.h): a block freed is handed out again
// for a request it fits, small blocks and those over the limit are not kept, the oldest go
// first, threads may share one cache, and the child of a fork starts a cache of its own.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu/scratch.h"
#include "tests/harness.h"

namespace {

using sinkhorn::cpu::kPooledMin;
using sinkhorn::cpu::ScratchBlock;
using sinkhorn::cpu::ScratchCache;

constexpr std::size_t kMiB = std::size_t{1} << 20;

bool aligned(const ScratchBlock& block) {
  return reinterpret_cast<std::uintptr_t>(block.data) % 64 == 0;
}

}  // namespace

SK_TEST(scratch, freed_block_is_reused_for_a_request_it_fits) {
  ScratchCache cache(16 * kMiB);
  const ScratchBlock first = cache.acquire(2 * kMiB);
  SK_CHECK(first.bytes == 2 * kMiB && aligned(first));
  std::memset(first.data, 1, first.bytes);  // the memory is usable
  cache.release(first);
  SK_CHECK(cache.cached_bytes() == 2 * kMiB);
  const ScratchBlock again = cache.acquire(kMiB + 1);  // smaller, but more than half
  SK_CHECK(again.data == first.data && again.bytes == first.bytes);
  SK_CHECK(cache.cached_bytes() == 0);
  cache.release(again);
}

SK_TEST(scratch, block_more_than_twice_the_request_is_not_handed_out) {
  ScratchCache cache(16 * kMiB);
  const ScratchBlock large = cache.acquire(4 * kMiB);
  cache.release(large);
  const ScratchBlock small = cache.acquire(kMiB);
  SK_CHECK(small.data != large.data && small.bytes == kMiB);
  SK_CHECK(cache.cached_bytes() == 4 * kMiB);
  cache.release(small);
}

SK_TEST(scratch, smallest_fitting_block_is_chosen) {
  ScratchCache cache(16 * kMiB);
  const ScratchBlock a = cache.acquire(3 * kMiB), b = cache.acquire(2 * kMiB);
  cache.release(a);
  cache.release(b);
  const ScratchBlock got = cache.acquire(3 * kMiB / 2);
  SK_CHECK(got.data == b.data);
  cache.release(got);
}

SK_TEST(scratch, small_blocks_are_not_kept) {
  ScratchCache cache(16 * kMiB);
  const ScratchBlock small = cache.acquire(kPooledMin - 1);
  SK_CHECK(small.bytes == kPooledMin - 1 && aligned(small));
  cache.release(small);
  SK_CHECK(cache.cached_bytes() == 0);
}

SK_TEST(scratch, cache_keeps_at_most_its_limit_dropping_the_oldest) {
  ScratchCache cache(5 * kMiB);
  const ScratchBlock over = cache.acquire(6 * kMiB);
  cache.release(over);  // larger than the whole cache
  SK_CHECK(cache.cached_bytes() == 0);
  const ScratchBlock a = cache.acquire(2 * kMiB), b = cache.acquire(2 * kMiB),
                     c = cache.acquire(2 * kMiB);
  cache.release(a);
  cache.release(b);
  cache.release(c);  // 6 MiB > 5: a goes
  SK_CHECK(cache.cached_bytes() == 4 * kMiB);
  const ScratchBlock first = cache.acquire(2 * kMiB), second = cache.acquire(2 * kMiB);
  SK_CHECK((first.data == b.data && second.data == c.data) ||
           (first.data == c.data && second.data == b.data));
  cache.release(first);
  cache.release(second);
}

SK_TEST(scratch, threads_sharing_a_cache_never_hold_the_same_block) {
  ScratchCache cache(64 * kMiB);
  constexpr int kThreads = 4, kRounds = 200;
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        const ScratchBlock block = cache.acquire(kPooledMin * (1 + round % 3));
        auto* bytes = static_cast<unsigned char*>(block.data);
        std::memset(bytes, t + 1, block.bytes);
        for (std::size_t k = 0; k < block.bytes; k += 4096) failures[t] += bytes[k] != t + 1;
        cache.release(block);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) SK_CHECK(failures[t] == 0) << "thread " << t;
}

SK_TEST(scratch, child_of_fork_starts_an_empty_cache) {
  using sinkhorn::cpu::acquire_scratch;
  using sinkhorn::cpu::release_scratch;
  const ScratchBlock parent = acquire_scratch(2 * kMiB);
  release_scratch(parent);  // kept by the parent's cache
  const pid_t child = fork();
  if (child == 0) {
    // The parent's lock may have been held by another of its threads: the child's cache is
    // a new one, which does not hold the parent's block.
    const ScratchBlock block = acquire_scratch(2 * kMiB);
    _exit(block.data == parent.data ? 1 : 0);
  }
  int status = 0;
  SK_CHECK(child > 0 && waitpid(child, &status, 0) == child);
  SK_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}
