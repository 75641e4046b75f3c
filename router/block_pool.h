// The KV block pool of one cache group, as the router sees it.
//
// The router owns every block table (DESIGN §3); workers own the memory. A
// BlockPool hands out block ids, counts references (so shared prefixes can be
// added later) and keeps a FIFO free list: freed blocks go to the back, new
// allocations come from the front, so recently freed blocks are reused last.
// Not enough free blocks is an empty result, not an error: the scheduler then
// preempts and retries.
//
// Thread-safety: none; owned by one scheduler.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

namespace moeserve::router {

class BlockPool {
 public:
  explicit BlockPool(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }

  // `n` fresh blocks with reference count 1, or an empty vector if fewer than n are free.
  std::vector<int32_t> Allocate(int32_t n);
  // Drops one reference of each block; blocks reaching zero return to the free list, in order.
  void Free(const std::vector<int32_t>& blocks);
  // Releases one block (ids < 0 are ignored).
  void Free(int32_t block);
  int32_t ref_count(int32_t block) const { return ref_counts_[block]; }
  // The free list, front first (for tests).
  std::vector<int32_t> FreeList() const { return {free_.begin(), free_.end()}; }

 private:
  std::vector<int32_t> ref_counts_;
  std::deque<int32_t> free_;
};

}  // namespace moeserve::router
