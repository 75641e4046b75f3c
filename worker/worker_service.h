// The gRPC worker: one engine Backend on one device, executing the router's
// steps (proto/moeserve/worker/v1/worker.proto).
//
// Per sequence it keeps every known token, the block tables and the sampler;
// the router sends new sequences whole once and running ones as diffs. A step
// that fails (bad block table, bad token id) answers with an error naming the
// cause and drops only that step's sequences; the worker keeps serving.
//
// One router drives a worker: a second Execute stream is refused
// (FAILED_PRECONDITION) while one is open, and when a stream ends its
// sequences are dropped (a router that comes back starts afresh).
//
// A rank of a tensor/expert-parallel group (its backend holds a shard,
// engine/parallel/shard.h) steps only after Init has joined the group's
// communicator: Gloo for CPU ranks, through the rendezvous store rank 0 serves
// (StoreSet / StoreGet), or NCCL for GPU ranks, with rank 0's unique id. Every
// rank receives the same steps; rank 0 samples and broadcasts the tokens, so
// all ranks hold the same sequences. A collective that fails leaves the ranks
// out of step: the worker exits (status 3) and its group is restarted whole.
//
// LoRA adapters (engine/lora.h) are loaded into numbered slots by the router
// (LoadAdapter) and chosen per new sequence; they belong to the router's
// session and are dropped with its sequences when its stream ends.
//
// Thread-safety: steps run one at a time (a mutex around the model);
// Describe, Health and the store may run concurrently.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/parallel/rendezvous.h"
#include "engine/sampler.h"
#include "moeserve/worker/v1/worker.grpc.pb.h"

namespace moeserve::worker {

struct WorkerOptions {
  std::string served_model_name = "gpt-oss";
  int64_t max_model_len = 8192;
  // The address Gloo listens on for the group's peers (an interface of this host).
  std::string gloo_hostname = "127.0.0.1";
  // GPU ranks: NCCL's unique id (rank 0) and joining with it. Unset: Gloo.
  std::function<absl::StatusOr<std::string>()> nccl_unique_id;
  std::function<absl::StatusOr<std::unique_ptr<parallel::Communicator>>(const v1::InitRequest&)> nccl_join;
};

class WorkerService final : public moeserve::worker::v1::Worker::Service {
 public:
  WorkerService(std::unique_ptr<Backend> model, const WorkerOptions& options);

  grpc::Status Describe(grpc::ServerContext*, const v1::DescribeRequest*, v1::DescribeResponse* out) override;
  grpc::Status Init(grpc::ServerContext*, const v1::InitRequest* req, v1::InitResponse*) override;
  grpc::Status Execute(grpc::ServerContext* ctx,
                       grpc::ServerReaderWriter<v1::StepResult, v1::StepRequest>* stream) override;
  grpc::Status Health(grpc::ServerContext*, const v1::HealthRequest*, v1::HealthResponse* out) override;
  grpc::Status StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* req, v1::StoreSetResponse*) override;
  grpc::Status StoreGet(grpc::ServerContext*, const v1::StoreGetRequest* req, v1::StoreGetResponse* out) override;
  grpc::Status LoadAdapter(grpc::ServerContext*, const v1::LoadAdapterRequest* req,
                           v1::LoadAdapterResponse* out) override;
  grpc::Status UnloadAdapter(grpc::ServerContext*, const v1::UnloadAdapterRequest* req,
                             v1::UnloadAdapterResponse*) override;

  // One step, without gRPC (also used by tests). With req.masks_follow, `read_masks` reads the follow-up
  // request with the step's token masks (after the forward pass); Step reads
  // it exactly once, also when the step fails.
  v1::StepResult Step(const v1::StepRequest& req,
                      const std::function<bool(v1::StepRequest*)>& read_masks = nullptr);

  // The worker's Prometheus metrics (docs/metrics.md), for an exposer.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  // Step's work; masks_request() returns the follow-up with the masks (null: none came).
  v1::StepResult RunStep(const v1::StepRequest& req, const std::function<const v1::StepRequest*()>& masks_request);
  struct Sequence {
    std::vector<int32_t> tokens;
    int64_t num_computed = 0;
    std::vector<int32_t> tables[kNumCacheGroups];
    std::unique_ptr<Sampler> sampler;
    bool logprobs = false;
    // Prompt logprobs: rows of prompt chunks return logits; tokens[1..num_prompt) get logprobs.
    bool prompt_logprobs = false;
    int64_t num_prompt = 0;
    int top_logprobs = 0;
    int32_t adapter = 0;  // LoRA slot, 0: the base model
  };

  // Rank 0 samples; the others take its tokens. False: the step's collective failed.
  bool ShareTokens(std::vector<int32_t>& tokens);

  std::unique_ptr<Backend> model_;
  WorkerOptions options_;
  parallel::InMemoryStore store_;  // rank 0: the group's rendezvous
  std::mutex init_mu_;
  std::string nccl_id_;            // rank 0 of an NCCL group
  std::mutex mu_;
  std::mutex session_mu_;  // held by the one Execute stream being served
  std::unordered_map<int64_t, Sequence> sequences_;
  std::unordered_map<int32_t, int64_t> adapter_bytes_;  // loaded LoRA slots (under mu_)
  void DropAdapters();  // (under mu_)

  void UpdateMetrics(int64_t batch_tokens, double step_seconds);
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Histogram* step_seconds_;
  prometheus::Histogram* batch_tokens_;
  prometheus::Gauge* sequences_held_;
  prometheus::Gauge *lora_adapters_, *lora_bytes_;
  prometheus::Family<prometheus::Gauge>* kv_usage_;
  prometheus::Family<prometheus::Counter>* expert_selections_;
  prometheus::Counter* collective_seconds_;
  prometheus::Counter *cache_hits_, *cache_misses_;
  ExpertCacheStats cache_seen_;
  int64_t collective_ns_seen_ = 0;
  std::vector<prometheus::Counter*> expert_counters_;  // [layer * E + expert]
  std::vector<int64_t> expert_seen_;
};

}  // namespace moeserve::worker
