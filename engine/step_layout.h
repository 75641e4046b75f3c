// A step's batch flattened into per-row arrays, as a device backend consumes
// them: token ids and positions per row, every sequence's block tables in one
// array with each row's offset into it, the KV slot each row writes per cache
// group, and which rows return logits (ForwardOutput's order).
//
// Pure host logic, tested on the CPU (tests/test_step_layout.cc) against the
// CPU backend's own indexing, so the CUDA backend starts from proven inputs.
#pragma once

#include <span>
#include <vector>

#include "engine/config.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

namespace moeserve {

struct StepLayout {
  std::vector<int32_t> ids;                    // [rows]
  std::vector<int64_t> pos;                    // [rows]
  std::vector<int32_t> tables;                 // group 0's tables of every sequence, then group 1's
  std::vector<int64_t> table_offset[kNumCacheGroups];  // [rows]: where the row's sequence table starts
  std::vector<int64_t> slots[kNumCacheGroups];         // [rows]: block * block_size + pos % block_size (-1: unused group)
  std::vector<int32_t> logit_rows;             // rows returning logits, in ForwardOutput order
  std::vector<int> first_row, num_rows;        // per sequence, as ForwardOutput
};

// The batch must have passed ValidateBatch.
StepLayout LayOutStep(const ModelConfig& config, const KvCacheOptions& kv, std::span<const SequenceInput> batch);

}  // namespace moeserve
