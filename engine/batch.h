// The batch contract every backend takes: a ragged batch of sequences, the
// shape router steps have, and the flat per-row layout the forward pass runs
// on.
//
// Each SequenceInput brings its new tokens (a prefill chunk, or one decode
// token), the absolute position of the first of them, and one block table per
// cache group: entry i is the KV block holding positions [i*bs, (i+1)*bs).
// Sliding-group entries older than the window may be -1 (their blocks went back
// to the pool). A forward writes the new tokens' K/V into those blocks, attends,
// and returns logits for the last token of every sequence (or for every token
// with `all_logits`).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/config.h"
#include "engine/kv_cache.h"

namespace moeserve {

struct SequenceInput {
  std::span<const int32_t> tokens;
  int64_t start_pos = 0;
  std::span<const int32_t> block_tables[kNumCacheGroups];
  bool all_logits = false;
  // Structured output: the tokens allowed for the sequence's last row, as bits
  // over the vocabulary (bit t of word t / 32); the others' logits become -inf.
  // Empty: no constraint.
  std::span<const uint32_t> token_mask;
  // The LoRA adapter the sequence runs with: a slot of the backend's adapters
  // (Backend::SetLoraAdapter), or -1 for the base model.
  int32_t adapter = -1;
};

// Words of a token mask over `vocab` tokens.
inline int64_t TokenMaskWords(int64_t vocab) { return (vocab + 31) / 32; }
// True if `mask` allows some token of the vocabulary.
bool TokenMaskAllowsAny(std::span<const uint32_t> mask, int64_t vocab);
// Sets the logits of tokens outside `mask` to -inf (host memory).
void ApplyTokenMask(float* logits, int64_t vocab, const uint32_t* mask);

struct ForwardOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;   // [num_rows, vocab_size]
  std::vector<int> first_row;  // per sequence: its first row in `logits`
  std::vector<int> num_rows;   // per sequence: 1, or its token count with all_logits
  const float* Row(int seq, int i = -1) const {
    const int r = first_row[seq] + (i < 0 ? num_rows[seq] - 1 : i);
    return logits.data() + static_cast<size_t>(r) * vocab_size;
  }
};

// Checks a batch against the model and the KV pools: token ids, positions,
// block tables long enough and inside the pools, token masks of the
// vocabulary's size that allow some token, adapter slots >= -1 (the backend
// checks that the slot holds an adapter). InvalidArgument naming the
// sequence otherwise.
absl::Status ValidateBatch(const ModelConfig& config, const KvCacheOptions& kv, std::span<const SequenceInput> batch);

// A step's batch flattened into per-row arrays (a row is one token): token
// ids and positions per row, every sequence's block tables in one array with
// each row's offset into it, the KV slot each row writes per cache group, and
// which rows return logits (ForwardOutput's order). Both backends run the
// forward on this; the CUDA backend uploads the arrays as they are.
struct StepLayout {
  std::vector<int32_t> ids;                            // [rows]
  std::vector<int64_t> pos;                            // [rows]
  std::vector<int32_t> tables;                         // group 0's tables of every sequence, then group 1's
  std::vector<int64_t> table_offset[kNumCacheGroups];  // [rows]: where the row's sequence table starts
  std::vector<int64_t> slots[kNumCacheGroups];  // [rows]: block * block_size + pos % block_size (-1: unused group)
  std::vector<int32_t> logit_rows;              // rows returning logits, in ForwardOutput order
  std::vector<int32_t> adapter;                 // [rows]: the row's LoRA adapter slot, -1: none
  std::vector<int> first_row, num_rows;         // per sequence, as ForwardOutput

  int num_rows_total() const { return static_cast<int>(ids.size()); }
  // Row r's block table of cache group g (entries up to its position are valid).
  const int32_t* table(int g, int r) const { return tables.data() + table_offset[g][r]; }
};

// The batch must have passed ValidateBatch.
StepLayout LayOutStep(const ModelConfig& config, const KvCacheOptions& kv, std::span<const SequenceInput> batch);

}  // namespace moeserve
