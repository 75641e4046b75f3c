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
// Thread-safety: steps run one at a time (a mutex around the model);
// Describe and Health may run concurrently.
#pragma once

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
#include "engine/sampler.h"
#include "moeserve/worker/v1/worker.grpc.pb.h"

namespace moeserve::worker {

struct WorkerOptions {
  std::string served_model_name = "gpt-oss";
  int64_t max_model_len = 8192;
};

class WorkerService final : public moeserve::worker::v1::Worker::Service {
 public:
  WorkerService(std::unique_ptr<Backend> model, const WorkerOptions& options);

  grpc::Status Describe(grpc::ServerContext*, const v1::DescribeRequest*, v1::DescribeResponse* out) override;
  grpc::Status Init(grpc::ServerContext*, const v1::InitRequest* req, v1::InitResponse*) override;
  grpc::Status Execute(grpc::ServerContext* ctx,
                       grpc::ServerReaderWriter<v1::StepResult, v1::StepRequest>* stream) override;
  grpc::Status Health(grpc::ServerContext*, const v1::HealthRequest*, v1::HealthResponse* out) override;

  // One step, without gRPC (also used by tests).
  v1::StepResult Step(const v1::StepRequest& req);

  // The worker's Prometheus metrics (docs/metrics.md), for an exposer.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  struct Sequence {
    std::vector<int32_t> tokens;
    int64_t num_computed = 0;
    std::vector<int32_t> tables[kNumCacheGroups];
    std::unique_ptr<Sampler> sampler;
    bool logprobs = false;
  };

  std::unique_ptr<Backend> model_;
  WorkerOptions options_;
  std::mutex mu_;
  std::mutex session_mu_;  // held by the one Execute stream being served
  std::unordered_map<int64_t, Sequence> sequences_;

  void UpdateMetrics(int64_t batch_tokens, double step_seconds);
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Histogram* step_seconds_;
  prometheus::Histogram* batch_tokens_;
  prometheus::Gauge* sequences_held_;
  prometheus::Family<prometheus::Gauge>* kv_usage_;
  prometheus::Family<prometheus::Counter>* expert_selections_;
  std::vector<prometheus::Counter*> expert_counters_;  // [layer * E + expert]
  std::vector<int64_t> expert_seen_;
};

}  // namespace moeserve::worker
