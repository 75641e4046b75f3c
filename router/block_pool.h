// The KV block pool of one cache group, as the router sees it.
//
// The router owns every block table (DESIGN §3); workers own the memory. A
// BlockPool hands out block ids, counts references (blocks of a cached prefix
// are shared by every request that uses it) and keeps the free blocks in LRU
// order: freed blocks go to the back, allocations take the front.
//
// Prefix caching: a full block whose K/V has been computed can be named by
// its BlockHash (Cache). A named block that is freed stays in the free list
// with its name, so a later request can take it back (Touch) until an
// allocation reaches it at the front of the list and evicts it (its name is
// dropped then). Cached blocks thus cost nothing: they count as free, and are
// reclaimed, oldest first, only when the pool needs them.
// Not enough free blocks is an empty result, not an error: the scheduler then
// preempts and retries.
//
// Thread-safety: none; owned by one scheduler.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "router/block_hash.h"

namespace moeserve::router {

class BlockPool {
 public:
  explicit BlockPool(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  // Blocks with no reference, cached or not.
  int32_t num_free() const { return num_free_; }

  // `n` blocks with reference count 1 from the front of the free list (evicting
  // their cached names), or an empty vector if fewer than n are free.
  std::vector<int32_t> Allocate(int32_t n);
  // Drops one reference of each block; blocks reaching zero go to the back of the free list, in order.
  void Free(const std::vector<int32_t>& blocks);
  // Releases one block (ids < 0 are ignored).
  void Free(int32_t block);
  int32_t ref_count(int32_t block) const { return ref_counts_[block]; }
  // The free list, front first (for tests).
  std::vector<int32_t> FreeList() const;

  // Prefix caching.
  // The block named `hash`, or -1.
  int32_t Lookup(const BlockHash& hash) const;
  // Takes one more reference of a block found by Lookup (out of the free list if it was free).
  void Touch(int32_t block);
  // Names a block whose K/V is complete. A name already held by another block
  // is left there (the two blocks are equal; this one stays unnamed).
  void Cache(int32_t block, const BlockHash& hash);
  bool cached(int32_t block) const { return hash_of_[block].has_value(); }
  int64_t num_cached() const { return static_cast<int64_t>(by_hash_.size()); }
  // Named blocks dropped to make room since the pool was made.
  int64_t num_evictions() const { return num_evictions_; }

 private:
  void Unlink(int32_t b);
  void PushBack(int32_t b);

  std::vector<int32_t> ref_counts_;
  // The free list, doubly linked through block ids so Touch can take a block
  // out of the middle in O(1); -1 ends it.
  std::vector<int32_t> prev_, next_;
  int32_t head_ = -1, tail_ = -1;
  int32_t num_free_ = 0;
  std::vector<std::optional<BlockHash>> hash_of_;
  std::unordered_map<BlockHash, int32_t, BlockHashHasher> by_hash_;
  int64_t num_evictions_ = 0;
};

}  // namespace moeserve::router
