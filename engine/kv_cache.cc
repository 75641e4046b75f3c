#include "engine/kv_cache.h"

namespace moeserve {

KvCache::KvCache(const ModelConfig& config, const KvCacheOptions& options) : options_(options) {
  row_bytes_ = static_cast<size_t>(config.kv_dim()) * (options.f32 ? 4 : 2);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const int g = config.is_sliding(l) ? kSlidingGroup : kFullGroup;
    layer_group_.push_back(g);
    layer_index_.push_back(group_layers_[g]++);
  }
  for (int g = 0; g < kNumCacheGroups; ++g) {
    if (group_layers_[g] == 0) options_.num_blocks[g] = 0;
    storage_[g].resize(static_cast<size_t>(group_layers_[g]) * options_.num_blocks[g] * 2 * options.block_size *
                       row_bytes_);
  }
}

size_t KvCache::BytesPerBlock(const ModelConfig& config, int group, int block_size, bool f32) {
  int64_t layers = 0;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    layers += (config.is_sliding(l) ? kSlidingGroup : kFullGroup) == group;
  }
  return static_cast<size_t>(layers) * 2 * block_size * config.kv_dim() * (f32 ? 4 : 2);
}

}  // namespace moeserve
