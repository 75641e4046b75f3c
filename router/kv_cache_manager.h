// Per-request KV block tables over the two cache groups of gpt-oss.
//
// Full-attention layers keep every position, so a request's full-group table
// grows with its length. Sliding-window layers only read the last `window`
// positions: the sliding-group table covers the window plus the tokens being
// computed, and blocks that fall wholly out of the window go back to the pool
// (their table entries become -1, which the engine accepts). A long request
// therefore holds a bounded number of sliding blocks.
//
//   positions:      0 ........ p-window+1 .... p .... p+n-1   (n new tokens)
//   full table:     [b0 b1 b2 ............................ bk]
//   sliding table:  [-1 -1  bj ........................... bk]
//
// AllocateSlots returns false, changing nothing, when the blocks do not fit;
// the scheduler decides what to preempt. Thread-safety: none.
#pragma once

#include <array>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "router/block_pool.h"

namespace moeserve::router {

constexpr int kFullGroup = 0;
constexpr int kSlidingGroup = 1;
constexpr int kNumGroups = 2;

struct KvCacheConfig {
  int32_t block_size = 16;
  std::array<int32_t, kNumGroups> num_blocks = {0, 0};  // 0 blocks: the model has no layer of that kind
  int64_t sliding_window = 128;
};

using BlockTables = std::array<std::vector<int32_t>, kNumGroups>;

class KvCacheManager {
 public:
  explicit KvCacheManager(const KvCacheConfig& config);

  // Makes room for `num_new` tokens after `num_computed` computed ones.
  // `watermark` blocks per group must stay free afterwards (admission of new
  // requests uses a positive watermark; running requests use 0).
  bool AllocateSlots(int64_t request_id, int64_t num_computed, int64_t num_new, int32_t watermark = 0);
  // Returns every block of the request to the pools.
  void Free(int64_t request_id);

  const BlockTables& tables(int64_t request_id) const;
  // Leading sliding-table entries that are released (-1): the worker may drop them.
  int64_t sliding_released(int64_t request_id) const;
  bool has(int64_t request_id) const { return tables_.count(request_id) > 0; }
  const BlockPool& pool(int group) const { return pools_[group]; }
  const KvCacheConfig& config() const { return config_; }
  // Blocks a request of `tokens` tokens needs at most, per group.
  std::array<int64_t, kNumGroups> BlocksNeeded(int64_t tokens) const;
  // Fraction of blocks in use, per group.
  double usage(int group) const;

 private:
  KvCacheConfig config_;
  std::array<BlockPool, kNumGroups> pools_;
  struct Entry {
    BlockTables tables;
    // Sliding entries [0, scanned) are all -1: each step looks only past them,
    // so a step costs O(new blocks), not O(sequence length).
    int64_t scanned = 0;
  };
  std::unordered_map<int64_t, Entry> tables_;
};

}  // namespace moeserve::router
