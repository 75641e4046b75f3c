#include "router/kv_cache_manager.h"

#include <algorithm>

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

bool KvCacheManager::AllocateSlots(int64_t request_id, int64_t num_computed, int64_t num_new, int32_t watermark) {
  MOE_CHECK(num_computed >= 0 && num_new >= 0);
  Entry& e = tables_[request_id];
  BlockTables& t = e.tables;
  const int64_t bs = config_.block_size;
  const int64_t end = num_computed + num_new;                 // one past the last position written
  const int64_t last_block = end == 0 ? -1 : (end - 1) / bs;  // highest logical block needed
  // The first position the new tokens attend to in sliding layers.
  const int64_t first_needed = std::max<int64_t>(0, num_computed - config_.sliding_window + 1);
  const int64_t first_block = first_needed / bs;

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
  if (want[kFullGroup] + watermark > pools_[kFullGroup].num_free() && config_.num_blocks[kFullGroup] > 0) {
    if (t[kFullGroup].empty() && t[kSlidingGroup].empty()) tables_.erase(request_id);
    return false;
  }
  if (config_.num_blocks[kSlidingGroup] > 0 &&
      want[kSlidingGroup] + watermark > pools_[kSlidingGroup].num_free() + released) {
    if (t[kFullGroup].empty() && t[kSlidingGroup].empty()) tables_.erase(request_id);
    return false;
  }
  // Release sliding blocks that fell out of the window.
  if (config_.num_blocks[kSlidingGroup] > 0) {
    for (int64_t b = e.scanned; b < release_end; ++b) {
      pools_[kSlidingGroup].Free(t[kSlidingGroup][b]);
      t[kSlidingGroup][b] = -1;
    }
    e.scanned = std::max(e.scanned, release_end);
  }
  for (int g = 0; g < kNumGroups; ++g) {
    if (config_.num_blocks[g] == 0 || want[g] == 0) {
      for (int64_t b = static_cast<int64_t>(t[g].size()); b <= last_block && config_.num_blocks[g] > 0; ++b) {
        t[g].push_back(-1);  // sliding blocks wholly behind the window are never allocated
      }
      continue;
    }
    std::vector<int32_t> fresh = pools_[g].Allocate(static_cast<int32_t>(want[g]));
    MOE_CHECK(static_cast<int64_t>(fresh.size()) == want[g]);
    size_t k = 0;
    for (int64_t b = static_cast<int64_t>(t[g].size()); b <= last_block; ++b) {
      t[g].push_back(g == kFullGroup || b >= first_block ? fresh[k++] : -1);
    }
  }
  return true;
}

void KvCacheManager::Free(int64_t request_id) {
  auto it = tables_.find(request_id);
  if (it == tables_.end()) return;
  for (int g = 0; g < kNumGroups; ++g) pools_[g].Free(it->second.tables[g]);
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
