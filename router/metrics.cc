#include "router/metrics.h"

#include <prometheus/text_serializer.h>

namespace moeserve::router {
namespace {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

}  // namespace

RouterMetrics::RouterMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("moeserve_requests_total")
                    .Help("Finished requests by finish reason (stop, length, tool_calls, abort, error).")
                    .Register(*registry_)),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("moeserve_prompt_tokens_total")
                         .Help("Prompt tokens of finished requests.")
                         .Register(*registry_)
                         .Add({})),
      generation_tokens_(prometheus::BuildCounter()
                             .Name("moeserve_generation_tokens_total")
                             .Help("Generated tokens of finished requests.")
                             .Register(*registry_)
                             .Add({})),
      preemptions_(prometheus::BuildCounter()
                       .Name("moeserve_preemptions_total")
                       .Help("Requests preempted because the KV cache ran out (recomputed later).")
                       .Register(*registry_)
                       .Add({})),
      running_(prometheus::BuildGauge()
                   .Name("moeserve_requests_running")
                   .Help("Requests in the running batch.")
                   .Register(*registry_)
                   .Add({})),
      waiting_(prometheus::BuildGauge()
                   .Name("moeserve_requests_waiting")
                   .Help("Requests waiting for admission.")
                   .Register(*registry_)
                   .Add({})),
      kv_usage_(prometheus::BuildGauge()
                    .Name("moeserve_kv_cache_usage_ratio")
                    .Help("Fraction of KV blocks in use, per cache group (full, sliding).")
                    .Register(*registry_)),
      ttft_(prometheus::BuildHistogram()
                .Name("moeserve_time_to_first_token_seconds")
                .Help("Time from request arrival to its first generated token.")
                .Register(*registry_)
                .Add({}, LatencyBuckets())),
      itl_(prometheus::BuildHistogram()
               .Name("moeserve_inter_token_latency_seconds")
               .Help("Time between consecutive generated tokens of a request.")
               .Register(*registry_)
               .Add({}, LatencyBuckets())),
      e2e_(prometheus::BuildHistogram()
               .Name("moeserve_e2e_request_latency_seconds")
               .Help("Time from request arrival to its end.")
               .Register(*registry_)
               .Add({}, LatencyBuckets())) {}

void RouterMetrics::RequestFinished(const std::string& finish_reason, int64_t prompt_tokens,
                                    int64_t generation_tokens, double e2e_seconds) {
  requests_.Add({{"finish_reason", finish_reason}}).Increment();
  prompt_tokens_.Increment(static_cast<double>(prompt_tokens));
  generation_tokens_.Increment(static_cast<double>(generation_tokens));
  e2e_.Observe(e2e_seconds);
}

void RouterMetrics::FirstToken(double seconds) { ttft_.Observe(seconds); }
void RouterMetrics::InterToken(double seconds) { itl_.Observe(seconds); }

std::string RouterMetrics::Serialize(const GroupRunner& runner) {
  running_.Set(runner.num_running());
  waiting_.Set(runner.num_waiting());
  kv_usage_.Add({{"group", "full"}}).Set(runner.kv_usage(kFullGroup));
  kv_usage_.Add({{"group", "sliding"}}).Set(runner.kv_usage(kSlidingGroup));
  const int64_t p = runner.num_preemptions();
  if (p > preemptions_seen_) {
    preemptions_.Increment(static_cast<double>(p - preemptions_seen_));
    preemptions_seen_ = p;
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace moeserve::router
