#include "router/block_pool.h"

#include "base/status.h"

namespace moeserve::router {

BlockPool::BlockPool(int32_t num_blocks)
    : ref_counts_(num_blocks, 0), prev_(num_blocks, -1), next_(num_blocks, -1), hash_of_(num_blocks) {
  for (int32_t i = 0; i < num_blocks; ++i) PushBack(i);
}

void BlockPool::PushBack(int32_t b) {
  prev_[b] = tail_;
  next_[b] = -1;
  if (tail_ >= 0) next_[tail_] = b;
  else head_ = b;
  tail_ = b;
  ++num_free_;
}

void BlockPool::Unlink(int32_t b) {
  if (prev_[b] >= 0) next_[prev_[b]] = next_[b];
  else head_ = next_[b];
  if (next_[b] >= 0) prev_[next_[b]] = prev_[b];
  else tail_ = prev_[b];
  prev_[b] = next_[b] = -1;
  --num_free_;
}

std::vector<int32_t> BlockPool::Allocate(int32_t n) {
  if (n < 0 || n > num_free_) return {};
  std::vector<int32_t> out;
  out.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t b = head_;
    Unlink(b);
    MOE_CHECK(ref_counts_[b] == 0);
    if (hash_of_[b]) {  // evict its cached name
      by_hash_.erase(*hash_of_[b]);
      hash_of_[b].reset();
      ++num_evictions_;
    }
    ref_counts_[b] = 1;
    out.push_back(b);
  }
  return out;
}

void BlockPool::Free(int32_t block) {
  if (block < 0) return;
  MOE_CHECK(block < num_blocks() && ref_counts_[block] > 0);
  if (--ref_counts_[block] == 0) PushBack(block);
}

void BlockPool::Free(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) Free(b);
}

std::vector<int32_t> BlockPool::FreeList() const {
  std::vector<int32_t> out;
  for (int32_t b = head_; b >= 0; b = next_[b]) out.push_back(b);
  return out;
}

int32_t BlockPool::Lookup(const BlockHash& hash) const {
  auto it = by_hash_.find(hash);
  return it == by_hash_.end() ? -1 : it->second;
}

void BlockPool::Touch(int32_t block) {
  MOE_CHECK(block >= 0 && block < num_blocks() && hash_of_[block].has_value());
  if (ref_counts_[block]++ == 0) Unlink(block);
}

void BlockPool::Cache(int32_t block, const BlockHash& hash) {
  MOE_CHECK(block >= 0 && block < num_blocks() && ref_counts_[block] > 0);
  if (hash_of_[block]) return;  // named already (a shared prefix block)
  if (!by_hash_.emplace(hash, block).second) return;
  hash_of_[block] = hash;
}

}  // namespace moeserve::router
