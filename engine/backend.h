// What a worker runs: gpt-oss on one device. The CPU backend is CpuBackend
// (engine/cpu/cpu_backend.h), the CUDA backend cuda::CudaBackend
// (engine/cuda/cuda_backend.h). Both run the one forward pass of
// engine/forward.cc over their own op implementations, take the same ragged
// batches with router-owned block tables (engine/batch.h) and return the same
// logits, so the worker does not care which one it drives.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/batch.h"
#include "engine/config.h"
#include "engine/kv_cache.h"
#include "engine/lora.h"
#include "engine/parallel/communicator.h"
#include "engine/parallel/shard.h"

namespace moeserve {

// The device cache of host experts (--n-cpu-moe): pairs (token, expert) of
// host layers served from the cache (hits) or by the CPU (misses).
struct ExpertCacheStats {
  int64_t hits = 0, misses = 0, loads = 0, slots = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // The model as this backend holds it: on a rank of a tensor/expert-parallel
  // group, the rank's head, KV-head and intermediate sizes (shard() has the
  // whole model's and the rank's ranges).
  virtual const ModelConfig& config() const = 0;
  virtual const ShardPlan& shard() const = 0;
  // The group's collectives, once the group has met (the worker's Init); a
  // sharded backend refuses to step without them.
  virtual void SetCommunicator(std::unique_ptr<parallel::Communicator> comm) = 0;
  virtual parallel::Communicator* communicator() const = 0;
  // The stream collectives are ordered on (a cudaStream_t), or null.
  virtual void* stream() const { return nullptr; }
  // The KV pools: block size, blocks per cache group, element type.
  virtual const KvCacheOptions& kv_options() const = 0;
  // One step: see engine/batch.h for the batch contract.
  virtual absl::Status Forward(std::span<const SequenceInput> batch, ForwardOutput* out) = 0;
  // Expert selections per [layer][expert] since construction.
  virtual const std::vector<int64_t>& expert_counts() const = 0;
  virtual ExpertCacheStats expert_cache_stats() const { return {}; }
  // "cpu", or the GPU's name.
  virtual std::string device() const = 0;
  // LoRA adapters by slot (engine/lora.h): SequenceInput::adapter names a
  // slot. A null adapter empties the slot; the backend lets go of the old one
  // (its memory is freed once no step uses it). Not between Forward calls'
  // threads: call it where Forward is called.
  virtual absl::Status SetLoraAdapter(int slot, std::shared_ptr<const LoraAdapter> adapter) {
    return absl::UnimplementedError(absl::StrCat("LoRA adapters are not supported on ", device(), " yet"));
  }
};

}  // namespace moeserve
