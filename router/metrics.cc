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
      lora_requests_(prometheus::BuildCounter()
                         .Name("moeserve_lora_requests_total")
                         .Help("Finished requests of each LoRA adapter, by finish reason.")
                         .Register(*registry_)),
      lora_prompt_tokens_(prometheus::BuildCounter()
                              .Name("moeserve_lora_prompt_tokens_total")
                              .Help("Prompt tokens of finished requests of each LoRA adapter.")
                              .Register(*registry_)),
      lora_generation_tokens_(prometheus::BuildCounter()
                                  .Name("moeserve_lora_generation_tokens_total")
                                  .Help("Generated tokens of finished requests of each LoRA adapter.")
                                  .Register(*registry_)),
      lora_loaded_(prometheus::BuildGauge()
                       .Name("moeserve_lora_adapters")
                       .Help("LoRA adapters loaded (1 per adapter, with its rank and worker memory as labels).")
                       .Register(*registry_)),
      prefix_cache_queries_(prometheus::BuildCounter()
                                .Name("moeserve_prefix_cache_queries_total")
                                .Help("Tokens of requests looked up in the prefix cache when scheduled (vLLM's "
                                      "prefix_cache_queries).")
                                .Register(*registry_)
                                .Add({})),
      prefix_cache_hits_(prometheus::BuildCounter()
                             .Name("moeserve_prefix_cache_hits_total")
                             .Help("Of those, tokens found cached and not computed again (vLLM's prefix_cache_hits).")
                             .Register(*registry_)
                             .Add({})),
      preemptions_(prometheus::BuildCounter()
                       .Name("moeserve_preemptions_total")
                       .Help("Requests preempted because the KV cache ran out (recomputed later), per worker group.")
                       .Register(*registry_)),
      failures_(prometheus::BuildCounter()
                    .Name("moeserve_worker_group_failures_total")
                    .Help("Times a worker group was marked down (its requests moved to another group).")
                    .Register(*registry_)),
      up_(prometheus::BuildGauge()
              .Name("moeserve_worker_group_up")
              .Help("1 while the worker group serves, 0 while it is down.")
              .Register(*registry_)),
      running_(prometheus::BuildGauge()
                   .Name("moeserve_requests_running")
                   .Help("Requests in the running batch, per worker group.")
                   .Register(*registry_)),
      waiting_(prometheus::BuildGauge()
                   .Name("moeserve_requests_waiting")
                   .Help("Requests waiting for admission, per worker group.")
                   .Register(*registry_)),
      waiting_limit_(prometheus::BuildGauge()
                         .Name("moeserve_requests_waiting_limit")
                         .Help("Waiting requests a worker group queues before answering 429 (--max-num-queued-requests).")
                         .Register(*registry_)),
      http_responses_(prometheus::BuildCounter()
                          .Name("moeserve_http_responses_total")
                          .Help("HTTP responses of the API routes by status code (streams count once, as 200).")
                          .Register(*registry_)),
      kv_usage_(prometheus::BuildGauge()
                    .Name("moeserve_kv_cache_usage_ratio")
                    .Help("Fraction of KV blocks in use, per worker group and cache group (full, sliding).")
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
               .Add({}, LatencyBuckets())),
      queue_(prometheus::BuildHistogram()
                 .Name("moeserve_request_queue_time_seconds")
                 .Help("Time from request arrival to its first scheduled step.")
                 .Register(*registry_)
                 .Add({}, LatencyBuckets())),
      step_(prometheus::BuildHistogram()
                .Name("moeserve_step_latency_seconds")
                .Help("Round trip of one step as the router sees it (send, worker forward and sampling, receive).")
                .Register(*registry_)
                .Add({}, LatencyBuckets())),
      step_tokens_(prometheus::BuildHistogram()
                       .Name("moeserve_step_batched_tokens")
                       .Help("Tokens scheduled in one step.")
                       .Register(*registry_)
                       .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024,
                                                                        2048, 4096, 8192})) {}

void RouterMetrics::RequestFinished(const std::string& finish_reason, int64_t prompt_tokens,
                                    int64_t generation_tokens, double e2e_seconds) {
  requests_.Add({{"finish_reason", finish_reason}}).Increment();
  prompt_tokens_.Increment(static_cast<double>(prompt_tokens));
  generation_tokens_.Increment(static_cast<double>(generation_tokens));
  e2e_.Observe(e2e_seconds);
}

void RouterMetrics::LoraRequestFinished(const std::string& adapter, const std::string& finish_reason,
                                        int64_t prompt_tokens, int64_t generation_tokens) {
  lora_requests_.Add({{"adapter", adapter}, {"finish_reason", finish_reason}}).Increment();
  lora_prompt_tokens_.Add({{"adapter", adapter}}).Increment(static_cast<double>(prompt_tokens));
  lora_generation_tokens_.Add({{"adapter", adapter}}).Increment(static_cast<double>(generation_tokens));
}

void RouterMetrics::FirstToken(double seconds) { ttft_.Observe(seconds); }
void RouterMetrics::InterToken(double seconds) { itl_.Observe(seconds); }

void RouterMetrics::QueueTime(double seconds) { queue_.Observe(seconds); }

void RouterMetrics::Step(double seconds, int64_t batched_tokens) {
  step_.Observe(seconds);
  step_tokens_.Observe(static_cast<double>(batched_tokens));
}

RunnerHooks RouterMetrics::Hooks() {
  RunnerHooks h;
  h.on_step = [this](double s, int64_t tokens, int) { Step(s, tokens); };
  h.on_queue_time = [this](double s) { QueueTime(s); };
  h.on_prefix_cache = [this](int64_t queries, int64_t hits) {
    prefix_cache_queries_.Increment(static_cast<double>(queries));
    prefix_cache_hits_.Increment(static_cast<double>(hits));
  };
  return h;
}

void RouterMetrics::HttpResponse(int code) { http_responses_.Add({{"code", std::to_string(code)}}).Increment(); }

std::string RouterMetrics::Serialize(const WorkerPool& pool) {
  const std::vector<GroupStatus> groups = pool.Status();
  std::lock_guard<std::mutex> lock(mu_);
  if (pool.adapters()) {
    // Unloaded adapters leave the family: it is rebuilt from the registry.
    for (auto* m : lora_gauges_) lora_loaded_.Remove(m);
    lora_gauges_.clear();
    for (const auto& a : pool.adapters()->List()) {
      lora_gauges_.push_back(&lora_loaded_.Add(
          {{"adapter", a->name}, {"rank", std::to_string(a->rank)}, {"bytes", std::to_string(a->bytes)}}));
      lora_gauges_.back()->Set(1);
    }
  }
  preemptions_seen_.resize(groups.size(), 0);
  failures_seen_.resize(groups.size(), 0);
  for (size_t g = 0; g < groups.size(); ++g) {
    const GroupStatus& s = groups[g];
    const std::map<std::string, std::string> label = {{"dp_rank", std::to_string(g)}};
    up_.Add(label).Set(s.up ? 1 : 0);
    running_.Add(label).Set(s.running);
    waiting_.Add(label).Set(s.waiting);
    waiting_limit_.Add(label).Set(static_cast<double>(queue_limit_.load()));
    kv_usage_.Add({{"dp_rank", std::to_string(g)}, {"cache_group", "full"}}).Set(s.kv_usage[kFullGroup]);
    kv_usage_.Add({{"dp_rank", std::to_string(g)}, {"cache_group", "sliding"}}).Set(s.kv_usage[kSlidingGroup]);
    auto& p = preemptions_.Add(label);
    if (s.num_preemptions > preemptions_seen_[g]) {
      p.Increment(static_cast<double>(s.num_preemptions - preemptions_seen_[g]));
      preemptions_seen_[g] = s.num_preemptions;
    }
    auto& f = failures_.Add(label);
    if (s.num_failures > failures_seen_[g]) {
      f.Increment(static_cast<double>(s.num_failures - failures_seen_[g]));
      failures_seen_[g] = s.num_failures;
    }
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace moeserve::router
