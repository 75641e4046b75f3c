// The gpt-oss model on the CPU backend (a Backend): one Forward call computes a ragged
// batch, the shape router steps have.
//
// Each SequenceInput brings its new tokens (a prefill chunk, or one decode
// token), the absolute position of the first of them, and one block table per
// cache group: entry i is the KV block holding positions [i*bs, (i+1)*bs).
// Sliding-group entries older than the window may be -1 (their blocks went back
// to the pool). Forward writes the new tokens' K/V into those blocks, attends,
// and returns logits for the last token of every sequence (or for every token
// with `all_logits`).
//
// Thread-safety: one Forward at a time; it uses the model's thread pool.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/thread_pool.h"
#include "engine/weights.h"

namespace moeserve {

struct SequenceInput {
  std::span<const int32_t> tokens;
  int64_t start_pos = 0;
  std::span<const int32_t> block_tables[kNumCacheGroups];
  bool all_logits = false;
};

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

struct ModelOptions {
  int num_threads = 0;          // 0: one per hardware thread
  KvCacheOptions kv;
  // RoPE/YaRN computed as ggml does (rounded ramp ends, fp32 angle recurrence),
  // for comparisons with llama.cpp. The default follows the OpenAI reference.
  bool rope_ggml = false;
};

class Model : public Backend {
 public:
  Model(std::unique_ptr<ModelWeights> weights, const ModelOptions& options);

  const ModelConfig& config() const override { return weights_->config; }
  const KvCacheOptions& kv_options() const override { return kv_.options(); }
  std::string device() const override { return "cpu"; }
  const ModelWeights& weights() const { return *weights_; }
  KvCache& kv_cache() { return kv_; }
  ThreadPool& pool() { return pool_; }

  absl::Status Forward(std::span<const SequenceInput> batch, ForwardOutput* out) override;

  // Expert selections counted per [layer][expert] since construction.
  const std::vector<int64_t>& expert_counts() const override { return expert_counts_; }

  // Wall time spent per phase of Forward since construction, in nanoseconds.
  enum Phase { kEmbed, kQkv, kAttention, kOut, kRouter, kExperts, kLmHead, kNumPhases };
  static const char* PhaseName(int p);
  const int64_t* phase_ns() const { return phase_ns_; }

 private:
  void Attention(int64_t layer, std::span<const SequenceInput> batch, const std::vector<int>& row_seq,
                 const std::vector<int64_t>& row_pos, const float* q, float* out);
  void Moe(const LayerWeights& lw, int64_t layer, const float* h, int num_rows, float* x);

  std::unique_ptr<ModelWeights> weights_;
  ModelOptions options_;
  ThreadPool pool_;
  KvCache kv_;
  std::vector<float> inv_freq_;
  float mscale_;
  bool ggml_yarn_ = false;      // rope_ggml: YaRN active
  float ggml_ramp_[2] = {0, 0}; // rope_ggml: rounded ramp ends
  std::vector<int64_t> expert_counts_;
  int64_t phase_ns_[kNumPhases] = {};
};

}  // namespace moeserve
