// gpt-oss on one NVIDIA GPU: the CUDA Backend.
//
// Create() checks the checkpoint is one the GPU path runs (BF16 dense
// weights, MXFP4 experts), copies the weights to the device with progress on
// stderr, sizes the KV pools from --gpu-memory-utilization (after weights
// and the step workspace; a clear error when the model does not fit) and
// allocates everything a step needs, so Forward allocates nothing.
//
// Forward is engine/forward.cc's gpt-oss loop over this backend's ops
// (engine/forward_ops.h), each one or a few kernels of ops.h. A step with more
// rows than the workspace holds runs in row chunks of max_rows_per_chunk.
// Logits are computed kLogitRows rows at a time and copied to the host (the
// worker samples there for now).
//
// Host experts (--n-cpu-moe): when the weights, the workspace and KV for one
// max_model_len sequence do not fit (or n_cpu_moe says so), the experts of the
// first n layers stay in host memory (the checkpoint mapping) and those layers'
// Experts op runs on the CPU kernels (engine/cpu/ops.h ExpertPairs) inside the
// step: routing and activations come to the host, the pairs whose expert the
// device cache holds are launched on the GPU first (asynchronously), the CPU
// computes the rest meanwhile, its outputs go back and are added before the
// usual weighted combine. Device memory left over caches host experts in
// slots; between steps (never inside one) the cache follows the experts routing
// selects most (recent counts, halved per refresh, a few loads per refresh).
// The cache changes where a pair is computed, not its result (tests compare the
// empty, full and thrashing cache with the all-device run).
//
// A rank of a tensor/expert-parallel group (engine/parallel/shard.h) holds its
// shard: its heads, its vocabulary range (embedding zeros elsewhere, logits
// all-gathered), its experts (expert parallel: pairs mapped to its index, other
// ranks' pairs zero) and all-reduces through the communicator (NCCL on the
// backend's stream).
//
// Thread-safety: one Forward at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/batch.h"
#include "engine/cuda/device.h"
#include "engine/cuda/ops.h"
#include "engine/cuda/runtime.h"
#include "engine/forward_ops.h"
#include "engine/kv_cache.h"
#include "engine/thread_pool.h"
#include "engine/weights.h"

namespace moeserve::cuda {

// How the device cache of host experts picks its experts (tests force the extremes).
enum class ExpertCachePolicy { kHot, kThrash };

struct CudaOptions {
  int device = 0;
  double gpu_memory_utilization = 0.9;
  int block_size = 16;
  KvDtype kv_dtype = KvDtype::kBf16;
  int64_t max_num_seqs = 64;          // the sliding-window pool is sized for this many sequences
  int64_t max_rows_per_chunk = 2048;  // workspace rows (tokens) per forward chunk
  bool progress = true;               // weight upload progress on stderr
  // The experts of the first n layers stay in host memory and run on the CPU
  // (llama.cpp's --n-cpu-moe). -1 (auto): as many as the device needs to hold
  // the rest, the workspace and KV for one max_model_len sequence; 0 when all fits.
  int n_cpu_moe = -1;
  int64_t max_model_len = 8192;       // auto's KV floor
  int cpu_threads = 0;                // for the host experts (0: one per hardware thread)
  // Device bytes for caching host experts: -1: what is left after the plan's
  // weights and KV floor (at most all host experts); 0: no cache.
  int64_t expert_cache_bytes = -1;
  ExpertCachePolicy expert_cache_policy = ExpertCachePolicy::kHot;
  // Use at most this many device bytes (0: no limit): a smaller card than the
  // one present (tests; sizing a deployment for a 12 GB card on a bigger one).
  int64_t device_memory_limit = 0;
};

class CudaBackend final : public Backend, private ForwardOps {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(std::unique_ptr<ModelWeights> weights,
                                                             const CudaOptions& options);
  ~CudaBackend() override;

  const ModelConfig& config() const override { return weights_->config; }
  const ShardPlan& shard() const override { return weights_->shard; }
  void SetCommunicator(std::unique_ptr<parallel::Communicator> comm) override { comm_ = std::move(comm); }
  parallel::Communicator* communicator() const override { return comm_.get(); }
  void* stream() const override { return stream_; }
  const KvCacheOptions& kv_options() const override { return kv_; }
  std::string device() const override { return info_.name; }
  absl::Status Forward(std::span<const SequenceInput> batch, ForwardOutput* out) override;
  const std::vector<int64_t>& expert_counts() const override { return expert_counts_; }
  // Copies the adapter's factors to the device (f32) and its entry table
  // (ops.h LoraEntry); refused on tensor/expert-parallel ranks for now. Host
  // experts (--n-cpu-moe) apply it with the CPU kernels from the host copy.
  absl::Status SetLoraAdapter(int slot, std::shared_ptr<const LoraAdapter> adapter) override;

  int64_t weight_bytes() const { return weight_bytes_; }
  // The --n-cpu-moe split and expert cache a device of `device_bytes` would
  // get for this (rank's) model, from the shapes alone: for sizing a
  // deployment without the card or the checkpoint (bench/, the cost model).
  static absl::StatusOr<HybridPlan> PlanMemory(const ModelConfig& rank_config, const ShardPlan& shard,
                                               const CudaOptions& options, int64_t device_bytes);
  const HybridPlan& hybrid_plan() const { return plan_; }
  ExpertCacheStats expert_cache_stats() const override {
    ExpertCacheStats s = cache_stats_;
    s.slots = static_cast<int64_t>(slot_owner_.size());
    return s;
  }

 private:
  struct LayerDev {
    const float *attn_norm, *mlp_norm, *q_bias, *k_bias, *v_bias, *o_bias, *sinks, *router, *router_bias;
    const uint16_t *q, *k, *v, *o;
    const uint8_t *gu_blocks, *gu_scales, *down_blocks, *down_scales;
    const float *gu_bias, *down_bias;
  };
  CudaBackend() = default;
  absl::Status Upload(const CudaOptions& options);
  absl::Status SetUpHostExperts(const CudaOptions& options, int64_t max_pairs);
  absl::Status LoadSlot(int64_t slot, int64_t layer, int64_t global_expert);
  absl::Status RefreshExpertCache();
  absl::Status HostExperts(int64_t layer, Tensor h, const Routing& routing, Tensor out);
  // y += each row's adapter's update of `target` (items: rows, or pairs with their row and expert maps).
  void ApplyLora(int64_t layer, LoraTarget target, const float* x, int64_t ldx, int64_t in, const int32_t* x_row,
                 const int32_t* slot_row, const int32_t* item_expert, int items, float* y, int64_t ldy, int64_t out);

  // ForwardOps.
  int max_rows() const override { return static_cast<int>(max_rows_); }
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
  absl::Status EndStep() override;

  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<parallel::Communicator> comm_;  // NCCL, on stream_
  DeviceInfo info_;
  KvCacheOptions kv_;
  cudaStream_t stream_ = nullptr;
  int64_t weight_bytes_ = 0;
  int64_t max_rows_ = 0;
  std::vector<DeviceBuffer> buffers_;  // weights, KV pools, workspace
  const uint16_t *embed_ = nullptr, *lm_head_ = nullptr;
  const float *final_norm_ = nullptr, *inv_freq_ = nullptr;
  float mscale_ = 1.0f;
  std::vector<LayerDev> layers_;
  // Per layer: its cache group and its region of that group's pool, as the kernels address it.
  std::vector<int> layer_group_;
  std::vector<KvLayer> kv_layers_;
  // Workspace.
  float *x_, *h_, *q_, *k_, *v_, *attn_, *o_, *router_logits_, *topk_w_, *gate_up_, *act_, *down_, *logits_,
      *final_rows_;
  int32_t *topk_idx_, *pair_row_, *pair_identity_, *ids_, *logit_rows_, *tables_;
  int64_t *pos_, *slots_[kNumCacheGroups], *table_offset_[kNumCacheGroups], *counts_;
  int64_t tables_capacity_ = 0;
  int rows_ = 0;  // of the chunk being computed
  std::vector<int64_t> expert_counts_;

  // Host experts (--n-cpu-moe) and their device cache.
  HybridPlan plan_;
  std::unique_ptr<ThreadPool> host_pool_;
  ExpertCachePolicy cache_policy_ = ExpertCachePolicy::kHot;
  struct {
    const uint8_t *gu_blocks = nullptr, *gu_scales = nullptr, *down_blocks = nullptr, *down_scales = nullptr;
    const float *gu_bias = nullptr, *down_bias = nullptr;
  } cache_;                                   // [slot, ...] in the kernels' layouts
  std::vector<std::vector<int32_t>> slot_of_;  // [host layer][expert] -> slot or -1
  std::vector<int64_t> slot_owner_;           // slot -> layer * E + expert, or -1
  std::vector<double> score_;                 // recent selections per host expert
  std::vector<int64_t> counts_seen_;
  int64_t thrash_next_ = 0;
  ExpertCacheStats cache_stats_;
  float* host_down_dev_ = nullptr;
  int32_t* pair_slot_ = nullptr;
  std::vector<int32_t> host_idx_, host_slot_, host_expert_, host_row_;
  std::vector<float> host_h_, host_down_;
  absl::Status host_error_;

  // Tensor/expert-parallel ranks.
  int32_t* local_map_ = nullptr;   // [layer][expert] -> this rank's expert index or -1 (expert parallel)
  int32_t* pair_local_ = nullptr;  // the step's pairs, mapped
  float* gathered_ = nullptr;      // [world, kLogitRows, vocab_stride]
  std::vector<float> host_gathered_;
  // LoRA adapters: per slot the host adapter (kept alive) and its device
  // factors and entries; the slot -> entries table; the chunk's row slots.
  struct LoraDevice {
    std::shared_ptr<const LoraAdapter> host;
    DeviceBuffer factors, entries;
  };
  std::vector<std::unique_ptr<LoraDevice>> lora_;
  DeviceBuffer lora_tables_, lora_rows_, lora_scratch_;
  int64_t lora_max_rank_ = 0;  // the scratch's width
  bool chunk_lora_ = false;    // some row of the chunk runs an adapter
  const int32_t* chunk_adapter_ = nullptr;  // the chunk's row slots (host, the step's layout)
  // Host experts with LoRA: per pair its adapter slot (host pairs) or expert (device-cached pairs).
  int32_t* pair_lora_expert_ = nullptr;
  std::vector<int32_t> host_pair_adapter_, host_lora_expert_;
  std::vector<const LoraAdapter*> lora_host_ptrs_;
  // Structured output: a logits chunk's token masks, on the device and staged on the host.
  uint32_t* mask_words_ = nullptr;
  std::vector<uint32_t> host_masks_;
};

}  // namespace moeserve::cuda
