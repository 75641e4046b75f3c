// The physical paged KV cache: one pool per cache group.
//
// gpt-oss alternates sliding-window and full-attention layers, so the cache
// has two groups. Each group is a pool of fixed-size blocks shared by all of
// its layers: block b of the full group holds, for every full-attention layer,
// K and V of `block_size` consecutive positions of one sequence. Which block
// holds which positions is decided by the caller (the router's block manager)
// through per-sequence block tables; this class only owns the memory.
//
//   storage of one group:
//   [layer_in_group][block][K|V][slot 0..block_size)[kv_head][head_dim]
//
// Thread-safety: rows of distinct (layer, block, slot) may be written
// concurrently; the pool itself is not resized after construction.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/config.h"

namespace moeserve {

enum CacheGroup : int { kFullGroup = 0, kSlidingGroup = 1 };
constexpr int kNumCacheGroups = 2;

struct KvCacheOptions {
  int block_size = 16;
  int64_t num_blocks[kNumCacheGroups] = {256, 64};
  bool f32 = false;  // default bf16
};

class KvCache {
 public:
  KvCache(const ModelConfig& config, const KvCacheOptions& options);

  const KvCacheOptions& options() const { return options_; }
  int block_size() const { return options_.block_size; }
  int64_t num_blocks(int group) const { return options_.num_blocks[group]; }
  int group_of_layer(int64_t layer) const { return layer_group_[layer]; }
  int num_layers_in_group(int group) const { return group_layers_[group]; }
  bool f32() const { return options_.f32; }

  // The K (or V) row of one position: [kv_heads * head_dim] elements of bf16 or f32.
  void* Row(int64_t layer, bool value, int64_t block, int slot) {
    const int g = layer_group_[layer];
    const size_t idx = ((static_cast<size_t>(layer_index_[layer]) * options_.num_blocks[g] + block) * 2 +
                        (value ? 1 : 0)) * options_.block_size + slot;
    return storage_[g].data() + idx * row_bytes_;
  }

  // Bytes one block of `group` takes (all layers of the group, K and V).
  static size_t BytesPerBlock(const ModelConfig& config, int group, int block_size, bool f32);
  size_t total_bytes() const { return storage_[0].size() + storage_[1].size(); }

 private:
  KvCacheOptions options_;
  size_t row_bytes_;
  std::vector<int> layer_group_, layer_index_;
  int group_layers_[kNumCacheGroups] = {0, 0};
  std::vector<uint8_t> storage_[kNumCacheGroups];
};

}  // namespace moeserve
