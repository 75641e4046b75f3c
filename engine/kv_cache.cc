#include "engine/kv_cache.h"

#include "absl/strings/str_cat.h"

namespace moeserve {

KvCache::KvCache(const ModelConfig& config, const KvCacheOptions& options) : options_(options) {
  row_bytes_ = static_cast<size_t>(config.kv_dim()) * KvDtypeBytes(options.dtype);
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

bool ParseKvDtype(const std::string& s, KvDtype* out) {
  if (s == "bf16") *out = KvDtype::kBf16;
  else if (s == "f32") *out = KvDtype::kF32;
  else if (s == "fp8" || s == "fp8_e4m3") *out = KvDtype::kFp8;
  else return false;
  return true;
}

size_t KvCache::BytesPerBlock(const ModelConfig& config, int group, int block_size, KvDtype dtype) {
  int64_t layers = 0;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    layers += (config.is_sliding(l) ? kSlidingGroup : kFullGroup) == group;
  }
  return static_cast<size_t>(layers) * 2 * block_size * config.kv_dim() * KvDtypeBytes(dtype);
}

int KvCache::LayersInGroup(const ModelConfig& config, int group) {
  int n = 0;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    n += (config.is_sliding(l) ? kSlidingGroup : kFullGroup) == group;
  }
  return n;
}

absl::StatusOr<std::array<int64_t, kNumCacheGroups>> PlanKvBlocks(const ModelConfig& c, int64_t budget_bytes,
                                                                   int block_size, KvDtype dtype, int64_t max_num_seqs) {
  if (block_size < 1 || max_num_seqs < 1) return absl::InvalidArgumentError("block size and sequences must be >= 1");
  const int64_t full_b = static_cast<int64_t>(KvCache::BytesPerBlock(c, kFullGroup, block_size, dtype));
  const int64_t slide_b = static_cast<int64_t>(KvCache::BytesPerBlock(c, kSlidingGroup, block_size, dtype));
  // What max_num_seqs running sequences can hold at once, or an eighth of the
  // budget if that is more: the spare blocks keep the last windows of cached
  // prefixes, which a prefix-cache hit needs (router/kv_cache_manager.h), from
  // being evicted by every long prefill chunk.
  const int64_t need = max_num_seqs * ((c.sliding_window + block_size - 1) / block_size + 2);
  const int64_t slide_blocks = slide_b ? std::max(need, budget_bytes / 8 / slide_b) : 0;
  const int64_t left = budget_bytes - slide_blocks * slide_b;
  if (left <= 0 || (full_b && left / full_b < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the KV cache budget (", budget_bytes, " bytes) is too small: the sliding-window pool alone needs ",
        slide_blocks * slide_b, " bytes for ", max_num_seqs, " sequences, and one full-attention block ", full_b));
  }
  return std::array<int64_t, kNumCacheGroups>{full_b ? left / full_b : 0, slide_blocks};
}

absl::StatusOr<int64_t> GpuKvBudget(int64_t total, int64_t free, double utilization, int64_t weight_bytes,
                                    int64_t workspace_bytes) {
  if (!(utilization > 0.0 && utilization <= 1.0)) {
    return absl::InvalidArgumentError("--gpu-memory-utilization must be in (0, 1]");
  }
  const int64_t others = total - free;  // held by other processes (or the driver) before we start
  const int64_t ours = static_cast<int64_t>(static_cast<double>(total) * utilization) - others;
  const int64_t budget = ours - weight_bytes - workspace_bytes;
  if (budget <= 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the model does not fit: ", utilization, " of ", total >> 20, " MiB is ",
        static_cast<int64_t>(total * utilization) >> 20, " MiB, of which other processes hold ", others >> 20,
        " MiB, the weights need ", weight_bytes >> 20, " MiB and the workspace ", workspace_bytes >> 20,
        " MiB; nothing is left for the KV cache"));
  }
  return budget;
}

int64_t ExpertBytes(const ModelConfig& c) {
  const int64_t h = c.hidden_size, i = c.intermediate_size;
  const int64_t gate_up = 2 * i * h / 2 + 2 * i * h / 32 + 2 * i * 4;
  const int64_t down = h * i / 2 + h * i / 32 + h * 4;
  return gate_up + down;
}

int64_t ExpertLayerBytes(const ModelConfig& c) { return c.num_local_experts * ExpertBytes(c); }

int64_t KvMinBytes(const ModelConfig& c, int64_t max_model_len, int block_size, KvDtype dtype, int64_t max_num_seqs) {
  const int64_t full_b = static_cast<int64_t>(KvCache::BytesPerBlock(c, kFullGroup, block_size, dtype));
  const int64_t slide_b = static_cast<int64_t>(KvCache::BytesPerBlock(c, kSlidingGroup, block_size, dtype));
  const int64_t need = slide_b ? max_num_seqs * ((c.sliding_window + block_size - 1) / block_size + 2) : 0;
  const int64_t full = (max_model_len + block_size - 1) / block_size * full_b;
  // PlanKvBlocks gives the sliding pool at least an eighth of the budget: then
  // 7/8 of it must hold the full-attention blocks.
  return std::max(full + need * slide_b, (full + full_b) * 8 / 7 + 1);
}

absl::StatusOr<HybridPlan> PlanHybrid(const ModelConfig& c, int64_t budget, int64_t other_bytes, int64_t kv_min_bytes,
                                      int n_cpu_moe, int64_t cache_bytes) {
  const int layers = static_cast<int>(c.num_hidden_layers);
  const int64_t per_layer = ExpertLayerBytes(c);
  auto need = [&](int n) { return other_bytes + (layers - n) * per_layer + kv_min_bytes; };
  HybridPlan p;
  if (n_cpu_moe < 0) {
    int n = 0;
    while (n < layers && need(n) > budget) ++n;
    p.n_cpu_moe = n;
  } else {
    p.n_cpu_moe = std::min(n_cpu_moe, layers);
  }
  if (need(p.n_cpu_moe) > budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the model does not fit the device even with ", p.n_cpu_moe, " of ", layers,
        " layers' experts on the host: dense weights and workspace ", other_bytes >> 20, " MiB, device experts ",
        ((layers - p.n_cpu_moe) * per_layer) >> 20, " MiB, KV for --max-model-len ", kv_min_bytes >> 20,
        " MiB; the budget is ", budget >> 20, " MiB"));
  }
  p.device_weight_bytes = other_bytes + (layers - p.n_cpu_moe) * per_layer;
  p.host_expert_bytes = p.n_cpu_moe * per_layer;
  const int64_t left = budget - need(p.n_cpu_moe);
  const int64_t expert = ExpertBytes(c);
  int64_t cache = std::min(left, p.host_expert_bytes);
  if (cache_bytes >= 0) cache = std::min(cache, cache_bytes);
  p.cache_slots = expert > 0 ? cache / expert : 0;
  p.cache_bytes = p.cache_slots * expert;
  p.kv_bytes = budget - other_bytes - (layers - p.n_cpu_moe) * per_layer - p.cache_bytes;
  return p;
}

}  // namespace moeserve
