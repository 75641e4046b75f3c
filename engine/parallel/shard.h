// What one rank of a tensor/expert-parallel group holds of gpt-oss, and the
// cutting of the checkpoint into that shard (DESIGN §4, parallel).
//
// Tensor parallel over N ranks (vLLM's --tensor-parallel-size):
//  - attention: query heads and KV heads split evenly (q, k, v, their biases
//    and the sinks column-parallel; o_proj row-parallel, its bias on rank 0,
//    then an all-reduce of the block's output); the KV cache holds the rank's
//    KV heads only.
//  - experts: each expert's intermediate dimension split into ranges of whole
//    32-wide MXFP4 blocks (gate_up rows 2i, 2i+1 with i in the range; down_proj
//    the same columns), as evenly as the blocks allow; down bias on rank 0;
//    then an all-reduce. SwiGLU is elementwise, so partial sums are exact.
//  - embedding and lm_head split by vocabulary: rank r holds ids
//    [vocab_begin, vocab_end); the embedding is all-reduced (other ranks add
//    zeros), the logits all-gathered.
// Expert parallel (--enable-expert-parallel): attention and vocabulary as
// above; each rank holds whole experts given by a placement table
// (expert -> rank per layer; contiguous by default, or balanced from measured
// selection counts) and adds only its experts' weighted outputs before the
// same all-reduce.
//
// The rank's ModelWeights are cut in place: row ranges are views into the
// checkpoint mapping (their pages never touched by other ranks), column
// ranges and expert subsets are copied and the source pages released, so
// each rank's resident memory is its shard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moeserve {

struct ModelConfig;
struct ModelWeights;

struct ShardPlan {
  int rank = 0;
  int world_size = 1;
  bool expert_parallel = false;
  // The whole model's sizes (ModelWeights::config then holds the rank's).
  int64_t num_heads = 0, num_kv_heads = 0, intermediate_size = 0, vocab_size = 0;
  int64_t head_begin = 0, head_end = 0;       // query heads
  int64_t kv_head_begin = 0, kv_head_end = 0;  // KV heads
  int64_t inter_begin = 0, inter_end = 0;      // each held expert's intermediate range
  int64_t vocab_begin = 0, vocab_end = 0;
  int64_t vocab_stride = 0;  // per-rank slot of the gathered logits (max over ranks)
  // Expert parallel: [layer][expert] -> owning rank. Empty for tensor parallel.
  std::vector<std::vector<int32_t>> expert_rank;
  // [layer][expert] -> index among this rank's experts, or -1.
  std::vector<std::vector<int32_t>> local_expert;

  bool sharded() const { return world_size > 1; }
  // The range rank r holds of a split of `n` units into `world` parts.
  static std::pair<int64_t, int64_t> Split(int64_t n, int world, int r);
};

// The plan for `rank` of `world_size`; errors say which shape does not divide.
// `placement` (expert parallel only): [layer][expert] -> rank; empty: contiguous.
absl::StatusOr<ShardPlan> PlanShard(const ModelConfig& c, int rank, int world_size, bool expert_parallel,
                                    std::vector<std::vector<int32_t>> placement = {});

// Experts [r * E / N, (r + 1) * E / N) on rank r, every layer.
std::vector<std::vector<int32_t>> ContiguousPlacement(int64_t layers, int64_t experts, int world_size);
// Per layer, E / N experts per rank with the selection counts spread evenly:
// experts by descending count, each to the least loaded rank with room
// (ties: lower rank). counts: [layer][expert].
std::vector<std::vector<int32_t>> BalancedPlacement(const std::vector<std::vector<int64_t>>& counts,
                                                     int world_size);
// Selection counts from a worker's /metrics text
// (moeserve_worker_expert_selections_total{layer,expert}), [layer][expert].
absl::StatusOr<std::vector<std::vector<int64_t>>> ParseExpertCounts(const std::string& metrics_text,
                                                                    int64_t layers, int64_t experts);

// Cuts `w` down to the rank's shard (see above) and sets w.config to the
// rank's sizes (heads, KV heads, intermediate size) and w.shard to the plan.
absl::Status ShardWeights(ModelWeights& w, const ShardPlan& plan);

}  // namespace moeserve
