#include "cpu/scratch.h"

#include <pthread.h>

#include <new>

namespace sinkhorn::cpu {
namespace {

constexpr std::align_val_t kAlignment{64};

void free_block(const ScratchBlock& block) { ::operator delete(block.data, kAlignment); }

}  // namespace

ScratchCache::~ScratchCache() {
  for (const ScratchBlock& block : free_) free_block(block);
}

ScratchBlock ScratchCache::acquire(std::size_t bytes) {
  if (bytes >= kPooledMin) {
    const std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->bytes >= bytes && it->bytes / 2 <= bytes &&
          (best == free_.end() || it->bytes < best->bytes))
        best = it;
    }
    if (best != free_.end()) {
      const ScratchBlock block = *best;
      free_.erase(best);
      free_bytes_ -= block.bytes;
      return block;
    }
  }
  return {::operator new(bytes, kAlignment), bytes};
}

void ScratchCache::release(ScratchBlock block) {
  if (block.bytes < kPooledMin || block.bytes > max_bytes_) return free_block(block);
  const std::lock_guard<std::mutex> lock(mutex_);
  free_.push_back(block);
  free_bytes_ += block.bytes;
  while (free_bytes_ > max_bytes_) {  // the oldest go
    free_bytes_ -= free_.front().bytes;
    free_block(free_.front());
    free_.erase(free_.begin());
  }
}

std::size_t ScratchCache::cached_bytes() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return free_bytes_;
}

namespace {

// Never destroyed: a block may come back while the process exits. The child of a fork starts
// a cache of its own: a thread of the parent may have held the lock at the fork, and no
// thread of the child would release it (the blocks left in the old one are the parent's).
ScratchCache* process_cache_instance = nullptr;

ScratchCache& process_cache() {
  static const bool created = [] {
    process_cache_instance = new ScratchCache(kCachedMax);
    pthread_atfork(nullptr, nullptr,
                   [] { process_cache_instance = new ScratchCache(kCachedMax); });
    return true;
  }();
  (void)created;
  return *process_cache_instance;
}

}  // namespace

ScratchBlock acquire_scratch(std::size_t bytes) { return process_cache().acquire(bytes); }
void release_scratch(ScratchBlock block) { process_cache().release(block); }

}  // namespace sinkhorn::cpu
