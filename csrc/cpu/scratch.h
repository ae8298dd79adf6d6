// Scratch memory of the CPU kernels, kept between calls where it is large. A fresh block of
// that size comes from the operating system as zeroed pages, a fault on the first touch of
// each 4 KB page (1.6 to 1.9 us each on the VM of BENCHMARKS.md); freed by every call and
// allocated again by the next, as malloc does with large blocks, that cost a loss with its
// gradient 100 to 250 faults a call at m = n = 512, 600 to 900 at 1000. Blocks of kPooledMin
// bytes or more go back to a cache instead, from which the next call of the same sizes takes
// them.
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

namespace sinkhorn::cpu {

// Smaller blocks come from malloc and go back to it, which keeps them in its own free lists
// (below its threshold for mapping blocks of their own, 128 KB at first).
constexpr std::size_t kPooledMin = std::size_t{1} << 16;  // 64 KB
// The process's cache: it holds the scratch of a loss with its gradient up to m = n = 2048
// in float64 (whose terms run one after another at that size, each with one m x n array).
constexpr std::size_t kCachedMax = std::size_t{64} << 20;

// At least the bytes asked for, aligned to 64 bytes; bytes is what the block holds.
struct ScratchBlock {
  void* data;
  std::size_t bytes;
};

// Free blocks, at most max_bytes of them: past that, those freed longest ago go. Thread-safe.
class ScratchCache {
 public:
  explicit ScratchCache(std::size_t max_bytes) : max_bytes_(max_bytes) {}
  ~ScratchCache();
  ScratchCache(const ScratchCache&) = delete;
  ScratchCache& operator=(const ScratchCache&) = delete;

  // The smallest free block that holds bytes, unless it is more than twice as large; else a
  // new one.
  ScratchBlock acquire(std::size_t bytes);
  void release(ScratchBlock block);
  std::size_t cached_bytes() const;

 private:
  const std::size_t max_bytes_;
  mutable std::mutex mutex_;
  std::vector<ScratchBlock> free_;  // oldest first
  std::size_t free_bytes_ = 0;
};

// From and to the process's cache, of kCachedMax bytes.
ScratchBlock acquire_scratch(std::size_t bytes);
void release_scratch(ScratchBlock block);

}  // namespace sinkhorn::cpu
