// The router's Prometheus metrics (prometheus-cpp), served at /metrics.
// Every name is documented in docs/metrics.md.
//
// Thread-safety: prometheus-cpp metrics are safe to update from any thread;
// Serialize() takes a consistent snapshot.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "router/worker_pool.h"

namespace moeserve::router {

class RouterMetrics {
 public:
  RouterMetrics();

  void RequestFinished(const std::string& finish_reason, int64_t prompt_tokens, int64_t generation_tokens,
                       double e2e_seconds);
  // A finished request of a LoRA adapter (beside RequestFinished), by adapter name.
  void LoraRequestFinished(const std::string& adapter, const std::string& finish_reason, int64_t prompt_tokens,
                           int64_t generation_tokens);
  void FirstToken(double seconds);
  void InterToken(double seconds);
  void QueueTime(double seconds);
  void Step(double seconds, int64_t batched_tokens);
  // One HTTP response of the API (not /metrics, /health, /ready), by status code.
  void HttpResponse(int code);
  // The waiting-queue bound of each group (--max-num-queued-requests), exported beside the queue.
  void SetQueueLimit(int64_t limit) { queue_limit_ = limit; }
  // Hooks that feed QueueTime, Step and the prefix-cache counters from every group's loop.
  RunnerHooks Hooks();
  // Text exposition format, with the groups' gauges read now.
  std::string Serialize(const WorkerPool& pool);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Family<prometheus::Counter>& lora_requests_;
  prometheus::Family<prometheus::Counter>& lora_prompt_tokens_;
  prometheus::Family<prometheus::Counter>& lora_generation_tokens_;
  prometheus::Family<prometheus::Gauge>& lora_loaded_;
  prometheus::Counter& prefix_cache_queries_;
  prometheus::Counter& prefix_cache_hits_;
  prometheus::Family<prometheus::Counter>& preemptions_;
  prometheus::Family<prometheus::Counter>& failures_;
  prometheus::Family<prometheus::Gauge>& up_;
  prometheus::Family<prometheus::Gauge>& running_;
  prometheus::Family<prometheus::Gauge>& waiting_;
  prometheus::Family<prometheus::Gauge>& waiting_limit_;
  prometheus::Family<prometheus::Counter>& http_responses_;
  prometheus::Family<prometheus::Gauge>& kv_usage_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  prometheus::Histogram& queue_;
  prometheus::Histogram& step_;
  prometheus::Histogram& step_tokens_;
  std::mutex mu_;  // Serialize's bookkeeping
  std::vector<int64_t> preemptions_seen_, failures_seen_;
  std::atomic<int64_t> queue_limit_{0};
  std::vector<prometheus::Gauge*> lora_gauges_;
};

}  // namespace moeserve::router
