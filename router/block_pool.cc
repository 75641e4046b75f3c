#include "router/block_pool.h"

#include "base/status.h"

namespace moeserve::router {

BlockPool::BlockPool(int32_t num_blocks) : ref_counts_(num_blocks, 0) {
  for (int32_t i = 0; i < num_blocks; ++i) free_.push_back(i);
}

std::vector<int32_t> BlockPool::Allocate(int32_t n) {
  if (n < 0 || n > num_free()) return {};
  std::vector<int32_t> out;
  out.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t b = free_.front();
    free_.pop_front();
    MOE_CHECK(ref_counts_[b] == 0);
    ref_counts_[b] = 1;
    out.push_back(b);
  }
  return out;
}

void BlockPool::Free(int32_t block) {
  if (block < 0) return;
  MOE_CHECK(block < num_blocks() && ref_counts_[block] > 0);
  if (--ref_counts_[block] == 0) free_.push_back(block);
}

void BlockPool::Free(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) Free(b);
}

}  // namespace moeserve::router
