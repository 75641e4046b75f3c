#include "router/kv_cache_manager.h"

#include <algorithm>
#include <limits>

#include "base/status.h"

namespace moeserve::router {

KvCacheManager::KvCacheManager(const KvCacheConfig& config)
    : config_(config), pools_{BlockPool(config.num_blocks[0]), BlockPool(config.num_blocks[1])} {}

std::array<int64_t, kNumGroups> KvCacheManager::BlocksNeeded(int64_t tokens) const {
  const int64_t bs = config_.block_size;
  std::array<int64_t, kNumGroups> n{};
  if (config_.num_blocks[kFullGroup] > 0) n[kFullGroup] = (tokens + bs - 1) / bs;
  // The window plus one partial block on each side.
  if (config_.num_blocks[kSlidingGroup] > 0) {
    n[kSlidingGroup] = std::min<int64_t>((tokens + bs - 1) / bs, (config_.sliding_window + bs - 1) / bs + 1);
  }
  return n;
}

int64_t KvCacheManager::FirstWindowBlock(int64_t position) const {
  return std::max<int64_t>(0, position - config_.sliding_window + 1) / config_.block_size;
}

PrefixHit KvCacheManager::FindCachedPrefix(const std::vector<BlockHash>& hashes, int64_t num_tokens) const {
  PrefixHit hit;
  if (!config_.enable_prefix_caching || num_tokens <= 0) return hit;
  const int64_t bs = config_.block_size;
  const bool has_full = config_.num_blocks[kFullGroup] > 0, has_sliding = config_.num_blocks[kSlidingGroup] > 0;
  // At least one token is left to compute.
  const int64_t max_blocks = std::min<int64_t>(static_cast<int64_t>(hashes.size()), (num_tokens - 1) / bs);
  // Full group: the leading run of cached blocks.
  std::vector<int32_t> full, sliding;
  int64_t j = max_blocks;
  if (has_full) {
    for (int64_t b = 0; b < max_blocks; ++b) {
      const int32_t id = pools_[kFullGroup].Lookup(hashes[b]);
      if (id < 0) break;
      full.push_back(id);
    }
    j = static_cast<int64_t>(full.size());
  }
  if (has_sliding) {
    // run[b]: cached sliding blocks in a row ending at b. The largest j whose
    // window lo(j)..j-1 is all cached wins.
    sliding.assign(j, -1);
    std::vector<int64_t> run(j, 0);
    for (int64_t b = 0; b < j; ++b) {
      sliding[b] = pools_[kSlidingGroup].Lookup(hashes[b]);
      run[b] = sliding[b] < 0 ? 0 : (b > 0 ? run[b - 1] : 0) + 1;
    }
    while (j > 0 && run[j - 1] < j - FirstWindowBlock(j * bs)) --j;
  }
  if (j == 0) {
    hit.next_pending = !hashes.empty() && max_blocks > 0 && pending_.count(hashes[0]) > 0;
    return hit;
  }
  hit.num_tokens = j * bs;
  if (has_full) hit.tables[kFullGroup].assign(full.begin(), full.begin() + j);
  if (has_sliding) {
    const int64_t lo = FirstWindowBlock(j * bs);
    hit.tables[kSlidingGroup].assign(j, -1);
    for (int64_t b = lo; b < j; ++b) hit.tables[kSlidingGroup][b] = sliding[b];
  }
  hit.next_pending = j < max_blocks && pending_.count(hashes[j]) > 0;
  return hit;
}

int64_t KvCacheManager::SlidingTokenLimit(int64_t request_id, int64_t num_computed, int32_t watermark,
                                          const PrefixHit* hit) const {
  if (config_.num_blocks[kSlidingGroup] == 0) return std::numeric_limits<int64_t>::max();
  static const std::vector<int32_t> kNone;
  auto it = tables_.find(request_id);
  const bool use_hit = hit && hit->num_tokens > 0;
  const std::vector<int32_t>& t =
      use_hit ? hit->tables[kSlidingGroup] : (it == tables_.end() ? kNone : it->second.tables[kSlidingGroup]);
  const int64_t scanned = use_hit || it == tables_.end() ? 0 : it->second.scanned;
  const int64_t first_block = FirstWindowBlock(num_computed);
  int64_t avail = pools_[kSlidingGroup].num_free() - watermark;
  for (int64_t b = scanned; b < std::min<int64_t>(first_block, t.size()); ++b) avail += t[b] >= 0;
  if (use_hit) {
    for (int32_t b : t) avail -= b >= 0 && pools_[kSlidingGroup].ref_count(b) == 0;
  }
  // New blocks start at max(table size, first_block); `avail` of them fit.
  const int64_t start = std::max<int64_t>(static_cast<int64_t>(t.size()), first_block);
  return (start + avail) * config_.block_size - num_computed;
}

bool KvCacheManager::AllocateSlots(int64_t request_id, int64_t num_computed, int64_t num_new, int32_t watermark,
                                   const std::vector<BlockHash>* hashes, const PrefixHit* hit) {
  MOE_CHECK(num_computed >= 0 && num_new >= 0);
  const bool fresh_entry = !tables_.count(request_id);
  Entry& e = tables_[request_id];
  auto drop_if_new = [&] {
    if (fresh_entry) tables_.erase(request_id);
    return false;
  };
  // Blocks of the hit that are free now leave the free list when taken.
  std::array<int64_t, kNumGroups> taken_free{};
  if (hit && hit->num_tokens > 0) {
    MOE_CHECK(fresh_entry && num_computed == hit->num_tokens);
    for (int g = 0; g < kNumGroups; ++g) {
      for (int32_t b : hit->tables[g]) taken_free[g] += b >= 0 && pools_[g].ref_count(b) == 0;
    }
  }
  const BlockTables& t = hit && hit->num_tokens > 0 ? hit->tables : e.tables;
  const int64_t bs = config_.block_size;
  const int64_t end = num_computed + num_new;                 // one past the last position written
  const int64_t last_block = end == 0 ? -1 : (end - 1) / bs;  // highest logical block needed
  // The first block the new tokens attend to in sliding layers.
  const int64_t first_block = FirstWindowBlock(num_computed);

  std::array<int64_t, kNumGroups> want{};
  for (int g = 0; g < kNumGroups; ++g) {
    if (config_.num_blocks[g] == 0) continue;
    for (int64_t b = static_cast<int64_t>(t[g].size()); b <= last_block; ++b) {
      if (g == kFullGroup || b >= first_block) ++want[g];
    }
  }
  // Sliding blocks released by this step can be reused by it.
  int64_t released = 0;
  const int64_t release_end = std::min<int64_t>(first_block, t[kSlidingGroup].size());
  if (config_.num_blocks[kSlidingGroup] > 0) {
    for (int64_t b = e.scanned; b < release_end; ++b) released += t[kSlidingGroup][b] >= 0;
  }
  if (config_.num_blocks[kFullGroup] > 0 &&
      want[kFullGroup] + watermark + taken_free[kFullGroup] > pools_[kFullGroup].num_free()) {
    return drop_if_new();
  }
  if (config_.num_blocks[kSlidingGroup] > 0 &&
      want[kSlidingGroup] + watermark + taken_free[kSlidingGroup] > pools_[kSlidingGroup].num_free() + released) {
    return drop_if_new();
  }
  if (hit && hit->num_tokens > 0) {
    e.tables = hit->tables;
    for (int g = 0; g < kNumGroups; ++g) {
      for (int32_t b : e.tables[g]) {
        if (b >= 0) pools_[g].Touch(b);
      }
    }
    e.named = hit->num_tokens / bs;
    e.scanned = std::min<int64_t>(first_block, e.tables[kSlidingGroup].size());  // entries below are -1
  }
  BlockTables& tt = e.tables;
  // Release sliding blocks that fell out of the window.
  if (config_.num_blocks[kSlidingGroup] > 0) {
    for (int64_t b = e.scanned; b < release_end; ++b) {
      pools_[kSlidingGroup].Free(tt[kSlidingGroup][b]);
      tt[kSlidingGroup][b] = -1;
    }
    e.scanned = std::max(e.scanned, release_end);
  }
  for (int g = 0; g < kNumGroups; ++g) {
    if (config_.num_blocks[g] == 0 || want[g] == 0) {
      for (int64_t b = static_cast<int64_t>(tt[g].size()); b <= last_block && config_.num_blocks[g] > 0; ++b) {
        tt[g].push_back(-1);  // sliding blocks wholly behind the window are never allocated
      }
      continue;
    }
    std::vector<int32_t> fresh = pools_[g].Allocate(static_cast<int32_t>(want[g]));
    MOE_CHECK(static_cast<int64_t>(fresh.size()) == want[g]);
    size_t k = 0;
    for (int64_t b = static_cast<int64_t>(tt[g].size()); b <= last_block; ++b) {
      tt[g].push_back(g == kFullGroup || b >= first_block ? fresh[k++] : -1);
    }
  }
  // Full blocks of known tokens that this request is about to compute are pending.
  if (config_.enable_prefix_caching && hashes) {
    const int64_t upto = std::min<int64_t>(static_cast<int64_t>(hashes->size()), last_block + 1);
    for (int64_t b = e.named + static_cast<int64_t>(e.pending.size()); b < upto; ++b) {
      e.pending.push_back((*hashes)[b]);
      ++pending_[(*hashes)[b]];
    }
  }
  return true;
}

void KvCacheManager::Unpend(const BlockHash& h) {
  auto it = pending_.find(h);
  MOE_CHECK(it != pending_.end());
  if (--it->second == 0) pending_.erase(it);
}

void KvCacheManager::CacheBlocks(int64_t request_id, const std::vector<BlockHash>& hashes, int64_t num_computed) {
  if (!config_.enable_prefix_caching) return;
  auto it = tables_.find(request_id);
  if (it == tables_.end()) return;
  Entry& e = it->second;
  const int64_t full = std::min<int64_t>(num_computed / config_.block_size, static_cast<int64_t>(hashes.size()));
  for (int64_t b = e.named; b < full; ++b) {
    for (int g = 0; g < kNumGroups; ++g) {
      if (b < static_cast<int64_t>(e.tables[g].size()) && e.tables[g][b] >= 0) pools_[g].Cache(e.tables[g][b], hashes[b]);
    }
    if (!e.pending.empty()) {
      Unpend(e.pending.front());
      e.pending.pop_front();
    }
  }
  e.named = std::max(e.named, full);
}

void KvCacheManager::Free(int64_t request_id) {
  auto it = tables_.find(request_id);
  if (it == tables_.end()) return;
  for (const BlockHash& h : it->second.pending) Unpend(h);
  for (int g = 0; g < kNumGroups; ++g) {
    std::vector<int32_t>& t = it->second.tables[g];
    std::reverse(t.begin(), t.end());
    pools_[g].Free(t);
  }
  tables_.erase(it);
}

const BlockTables& KvCacheManager::tables(int64_t request_id) const {
  static const BlockTables kEmpty;
  auto it = tables_.find(request_id);
  return it == tables_.end() ? kEmpty : it->second.tables;
}

int64_t KvCacheManager::sliding_released(int64_t request_id) const {
  auto it = tables_.find(request_id);
  if (it == tables_.end()) return 0;
  const std::vector<int32_t>& s = it->second.tables[kSlidingGroup];
  int64_t n = it->second.scanned;
  while (n < static_cast<int64_t>(s.size()) && s[n] < 0) ++n;
  return n;
}

double KvCacheManager::usage(int group) const {
  const int32_t n = pools_[group].num_blocks();
  return n == 0 ? 0.0 : 1.0 - static_cast<double>(pools_[group].num_free()) / n;
}

}  // namespace moeserve::router
