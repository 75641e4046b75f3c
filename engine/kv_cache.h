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

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/kv_dtype.h"
#include "engine/kv_layout.h"

namespace moeserve {

enum CacheGroup : int { kFullGroup = 0, kSlidingGroup = 1 };
constexpr int kNumCacheGroups = 2;

struct KvCacheOptions {
  int block_size = 16;
  int64_t num_blocks[kNumCacheGroups] = {256, 64};
  KvDtype dtype = KvDtype::kBf16;
};

class KvCache {
 public:
  KvCache(const ModelConfig& config, const KvCacheOptions& options);

  const KvCacheOptions& options() const { return options_; }
  int block_size() const { return options_.block_size; }
  int64_t num_blocks(int group) const { return options_.num_blocks[group]; }
  int group_of_layer(int64_t layer) const { return layer_group_[layer]; }
  int num_layers_in_group(int group) const { return group_layers_[group]; }
  KvDtype dtype() const { return options_.dtype; }

  // The K (or V) row of one position: [kv_heads * head_dim] elements of the KV dtype.
  void* Row(int64_t layer, bool value, int64_t block, int slot) {
    const int g = layer_group_[layer];
    const int64_t rb = static_cast<int64_t>(row_bytes_);
    return storage_[g].data() + layer_index_[layer] * KvLayerBytes(options_.num_blocks[g], options_.block_size, rb) +
           KvRowOffset(block * options_.block_size + slot, value ? 1 : 0, options_.block_size, rb);
  }
  // The first byte of a group's pool (tests compare addresses with it).
  const uint8_t* pool_base(int group) const { return storage_[group].data(); }

  // Layers of the model that use `group`'s pool.
  static int LayersInGroup(const ModelConfig& config, int group);
  // Bytes one block of `group` takes (all layers of the group, K and V).
  static size_t BytesPerBlock(const ModelConfig& config, int group, int block_size, KvDtype dtype);
  size_t total_bytes() const { return storage_[0].size() + storage_[1].size(); }

 private:
  KvCacheOptions options_;
  size_t row_bytes_;
  std::vector<int> layer_group_, layer_index_;
  int group_layers_[kNumCacheGroups] = {0, 0};
  std::vector<uint8_t> storage_[kNumCacheGroups];
};

// KV blocks per cache group for a memory budget: the sliding pool gets the
// window plus two blocks for each of max_num_seqs sequences (a sequence never
// holds more) or an eighth of the budget if that is more (room for the cached
// windows prefix caching needs), the full-attention pool the rest. InvalidArgument, naming what
// is missing, if not even one full-attention block is left.
absl::StatusOr<std::array<int64_t, kNumCacheGroups>> PlanKvBlocks(const ModelConfig& config, int64_t budget_bytes,
                                                                   int block_size, KvDtype dtype, int64_t max_num_seqs);

// The KV budget on a GPU, as vLLM's --gpu-memory-utilization: this process may
// use `utilization` of the device's memory; weights and the activation
// workspace come first, and memory other processes hold is not ours.
//   total: device memory; free: what is free before loading; weights and
//   workspace: what this process will allocate besides the KV pools.
// ResourceExhausted, with the numbers, if nothing is left.
absl::StatusOr<int64_t> GpuKvBudget(int64_t total, int64_t free, double utilization, int64_t weight_bytes,
                                    int64_t workspace_bytes);

// Device memory of a model whose experts may partly stay on the host
// (--n-cpu-moe): which layers' experts live in host memory and run on the CPU,
// and how many of those experts the device caches.
struct HybridPlan {
  int n_cpu_moe = 0;                // the first n layers' experts stay on the host
  int64_t device_weight_bytes = 0;  // weights on the device (all but those experts)
  int64_t host_expert_bytes = 0;    // expert weights left on the host
  int64_t kv_bytes = 0;             // for the KV pools
  int64_t cache_slots = 0;          // host experts the device cache holds
  int64_t cache_bytes = 0;
};
// MXFP4 expert bytes of one layer (blocks, scales, biases of gate_up and down),
// and of one expert.
int64_t ExpertLayerBytes(const ModelConfig& c);
int64_t ExpertBytes(const ModelConfig& c);
// `budget`: the device bytes this worker may use (after other processes);
// `other_bytes`: everything but the experts and the KV pools (dense weights,
// workspace); `kv_min_bytes`: KV pools for one --max-model-len sequence.
// n_cpu_moe >= 0 is taken as given (an error if it still does not fit);
// -1 (auto) picks the smallest n that fits. What is left holds the expert
// cache (at most all host experts; `cache_bytes` >= 0 caps it), the rest the KV.
absl::StatusOr<HybridPlan> PlanHybrid(const ModelConfig& c, int64_t budget, int64_t other_bytes, int64_t kv_min_bytes,
                                      int n_cpu_moe, int64_t cache_bytes = -1);
// KV bytes for one sequence of max_model_len tokens plus the sliding pool of
// max_num_seqs (at least 8/7 of the full-attention bytes: PlanKvBlocks gives
// the sliding pool an eighth of any budget).
int64_t KvMinBytes(const ModelConfig& c, int64_t max_model_len, int block_size, KvDtype dtype, int64_t max_num_seqs);

}  // namespace moeserve
