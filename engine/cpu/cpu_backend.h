// gpt-oss on the CPU: the CPU Backend. It holds the memory (weights mapped
// from the checkpoint, the paged KV cache, the step's activation buffers) and
// implements the forward's ops (engine/forward_ops.h) with the SIMD kernels of
// engine/cpu/ over a thread pool; engine/forward.cc runs the layers.
//
// Thread-safety: one Forward at a time; it uses the backend's thread pool.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/backend.h"
#include "engine/forward_ops.h"
#include "engine/kv_cache.h"
#include "engine/thread_pool.h"
#include "engine/weights.h"

namespace moeserve {

struct CpuOptions {
  int num_threads = 0;  // 0: one per hardware thread
  KvCacheOptions kv;
  // RoPE/YaRN computed as ggml does (rounded ramp ends, fp32 angle recurrence),
  // for comparisons with llama.cpp. The default follows the OpenAI reference.
  bool rope_ggml = false;
};

class CpuBackend final : public Backend, private ForwardOps {
 public:
  CpuBackend(std::unique_ptr<ModelWeights> weights, const CpuOptions& options);

  const ModelConfig& config() const override { return weights_->config; }
  const ShardPlan& shard() const override { return weights_->shard; }
  void SetCommunicator(std::unique_ptr<parallel::Communicator> comm) override { comm_ = std::move(comm); }
  parallel::Communicator* communicator() const override { return comm_.get(); }
  const KvCacheOptions& kv_options() const override { return kv_.options(); }
  std::string device() const override { return "cpu"; }
  absl::Status SetLoraAdapter(int slot, std::shared_ptr<const LoraAdapter> adapter) override;
  absl::Status Forward(std::span<const SequenceInput> batch, ForwardOutput* out) override;
  // Expert selections counted per [layer][expert] since construction.
  const std::vector<int64_t>& expert_counts() const override { return expert_counts_; }

  const ModelWeights& weights() const { return *weights_; }
  KvCache& kv_cache() { return kv_; }
  ThreadPool& pool() { return pool_; }

  // Wall time spent per phase of Forward since construction, in nanoseconds.
  enum Phase { kEmbed, kQkv, kAttention, kOut, kRouter, kExperts, kLmHead, kCollectives, kNumPhases };
  static const char* PhaseName(int p);
  const int64_t* phase_ns() const { return phase_ns_; }

 private:
  // ForwardOps.
  int max_rows() const override { return 1 << 30; }  // one chunk: host memory grows with the step
  absl::Status BeginChunk(const StepLayout& step, int r0, int r1) override;
  Tensor Buffer(Act which) override;
  void Embed(Tensor x) override;
  void RmsNorm(int64_t layer, Norm which, Tensor x, Tensor y) override;
  void Linear(int64_t layer, Tensor x, std::initializer_list<Projection> outs) override;
  void Rope(Tensor x, int num_heads) override;
  void KvWrite(int64_t layer, Tensor k, Tensor v) override;
  absl::Status Attention(int64_t layer, Tensor q, Tensor out) override;
  void Add(Tensor x, Tensor y) override;
  absl::Status AllReduce(Tensor x) override;
  absl::StatusOr<Routing> Route(int64_t layer, Tensor h) override;
  void Experts(int64_t layer, Tensor h, const Routing& routing, Tensor out) override;
  absl::Status Logits(Tensor x, std::span<const int32_t> rows, std::span<const uint32_t* const> masks,
                      float* logits) override;
  absl::Status LogitsUnmasked(Tensor x, std::span<const int32_t> rows, float* logits);
  absl::Status EndStep() override { return absl::OkStatus(); }

  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<parallel::Communicator> comm_;
  CpuOptions options_;
  ThreadPool pool_;
  KvCache kv_;
  std::vector<float> inv_freq_;
  float mscale_;
  bool ggml_yarn_ = false;       // rope_ggml: YaRN active
  float ggml_ramp_[2] = {0, 0};  // rope_ggml: rounded ramp ends
  std::vector<int64_t> expert_counts_;
  int64_t phase_ns_[kNumPhases] = {};

  // The chunk being computed.
  const StepLayout* step_ = nullptr;
  int r0_ = 0, rows_ = 0;
  std::vector<float> cos_, sin_;  // [rows, head_dim / 2]
  std::vector<float> act_[7];     // Act buffers
  std::vector<int32_t> route_idx_;
  std::vector<float> route_weight_;
  std::vector<float> gathered_;  // sharded logits: [world, rows, vocab_stride]
  std::vector<int32_t> pair_row_, pair_expert_;
  std::vector<float> pair_out_;  // [rows * k, hidden]

  // LoRA adapters by slot, and the chunk's rows of each slot in use.
  std::vector<std::shared_ptr<const LoraAdapter>> loras_;
  std::vector<const LoraAdapter*> lora_ptrs_;  // loras_ as raw pointers, for ExpertPairs
  struct LoraGroup {
    const LoraAdapter* adapter;
    std::vector<int32_t> rows;  // chunk-local
  };
  std::vector<LoraGroup> lora_groups_;
  std::vector<int32_t> pair_adapter_;
  // Adds every group's update of `target` to y (x: the op's input).
  void ApplyLora(int64_t layer, LoraTarget target, Tensor x, Tensor y);
};

}  // namespace moeserve
