// Per-request KV block tables over the two cache groups of gpt-oss, with
// prefix caching.
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
// the scheduler decides what to preempt.
//
// Prefix caching. Once a full block's K/V is computed (CacheBlocks, after the
// step), its block in each group is named by the chained hash of the tokens up
// to its end (block_hash.h); freed named blocks stay cached in their pool
// until evicted. A new request looks up the longest usable cached prefix
// (FindCachedPrefix) and starts with those blocks shared, its computed-token
// count set to the hit, so the worker computes only the rest.
//
// The sliding-window rule. The first token computed after a hit of k tokens
// (k = j blocks) attends, in sliding layers, to positions
// [max(0, k - window + 1), k - 1]. So a hit of j blocks is usable only if the
// full group holds blocks 0..j-1 (the full layers read every position) AND the
// sliding group holds the blocks covering that last window,
// lo(j) = max(0, k - window + 1) / block_size .. j-1; sliding blocks below
// lo(j) are not needed and stay -1 in the new table. FindCachedPrefix returns
// the largest such j (0 always qualifies), capped so that at least one token
// is left to compute (the worker must compute the last prompt token to sample).
// Sliding blocks are named like full ones and, when the window leaves them,
// freed into the cache, so a conversation's previous turn usually still has
// its last window cached.
//
// Only full, computed blocks are shared, so no shared block is ever written:
// no copy-on-write is needed. A block that another request is computing
// right now is "pending"; FindCachedPrefix reports when the first block after
// a hit is pending, so the scheduler can let the request wait one step and
// share it (n > 1 choices, simultaneous requests with one system prompt).
//
// Thread-safety: none.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include "router/block_pool.h"
#include "router/request.h"

namespace moeserve::router {

constexpr int kFullGroup = 0;
constexpr int kSlidingGroup = 1;
constexpr int kNumGroups = kNumCacheGroups;

struct KvCacheConfig {
  int32_t block_size = 16;
  std::array<int32_t, kNumGroups> num_blocks = {0, 0};  // 0 blocks: the model has no layer of that kind
  int64_t sliding_window = 128;
  bool enable_prefix_caching = true;
};

using BlockTables = std::array<std::vector<int32_t>, kNumGroups>;

// A usable cached prefix of a request (see the sliding-window rule above).
struct PrefixHit {
  int64_t num_tokens = 0;  // a multiple of block_size
  BlockTables tables;      // the new request's tables for those tokens (sliding: -1 below the window)
  bool next_pending = false;  // the block after the hit is being computed by a request now
};

class KvCacheManager {
 public:
  explicit KvCacheManager(const KvCacheConfig& config);

  // Makes room for `num_new` tokens after `num_computed` computed ones.
  // `watermark` blocks per group must stay free afterwards (admission of new
  // requests uses a positive watermark; running requests use 0). `hashes`
  // are the request's block hashes (to mark blocks being computed as pending);
  // `hit`, for a request without blocks, is its cached prefix to start from
  // (then num_computed must equal hit->num_tokens).
  bool AllocateSlots(int64_t request_id, int64_t num_computed, int64_t num_new, int32_t watermark = 0,
                     const std::vector<BlockHash>* hashes = nullptr, const PrefixHit* hit = nullptr);
  // The most tokens a step may compute for the request after `num_computed`
  // with the sliding blocks free now (those the step releases included),
  // `watermark` kept free: a chunk's sliding layers hold K/V of the whole chunk
  // during the step, so a long chunk needs as many sliding blocks as tokens/16.
  // May be <= 0. Unbounded (INT64_MAX) without a sliding group.
  int64_t SlidingTokenLimit(int64_t request_id, int64_t num_computed, int32_t watermark,
                            const PrefixHit* hit = nullptr) const;
  // Returns every block of the request to the pools (named blocks stay cached;
  // the table's tail goes first, so a prefix outlives its continuations).
  void Free(int64_t request_id);

  // The longest usable cached prefix of a request with these block hashes and
  // `num_tokens` known tokens. Empty when prefix caching is off.
  PrefixHit FindCachedPrefix(const std::vector<BlockHash>& hashes, int64_t num_tokens) const;
  // Names the request's blocks that the first `num_computed` tokens fill.
  void CacheBlocks(int64_t request_id, const std::vector<BlockHash>& hashes, int64_t num_computed);

  const BlockTables& tables(int64_t request_id) const;
  // Leading sliding-table entries that are released (-1): the worker may drop them.
  int64_t sliding_released(int64_t request_id) const;
  bool has(int64_t request_id) const { return tables_.count(request_id) > 0; }
  const BlockPool& pool(int group) const { return pools_[group]; }
  const KvCacheConfig& config() const { return config_; }
  // Blocks a request of `tokens` tokens needs at most, per group.
  std::array<int64_t, kNumGroups> BlocksNeeded(int64_t tokens) const;
  // Fraction of blocks in use (cached free blocks count as free), per group.
  double usage(int group) const;
  int64_t num_pending() const { return static_cast<int64_t>(pending_.size()); }

 private:
  // The first logical block a token at `position` reads in sliding layers.
  int64_t FirstWindowBlock(int64_t position) const;
  void Unpend(const BlockHash& h);

  KvCacheConfig config_;
  std::array<BlockPool, kNumGroups> pools_;
  struct Entry {
    BlockTables tables;
    // Sliding entries [0, scanned) are all -1: each step looks only past them,
    // so a step costs O(new blocks), not O(sequence length).
    int64_t scanned = 0;
    // Blocks [0, named) are named in the pools (or came from a hit); blocks
    // [named, named + pending.size()) are being computed, pending under these hashes.
    int64_t named = 0;
    std::deque<BlockHash> pending;
  };
  std::unordered_map<int64_t, Entry> tables_;
  std::unordered_map<BlockHash, int32_t, BlockHashHasher> pending_;  // hash -> requests computing it
};

}  // namespace moeserve::router
