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

#include <memory>
#include <string>

#include "router/group_runner.h"

namespace moeserve::router {

class RouterMetrics {
 public:
  RouterMetrics();

  void RequestFinished(const std::string& finish_reason, int64_t prompt_tokens, int64_t generation_tokens,
                       double e2e_seconds);
  void FirstToken(double seconds);
  void InterToken(double seconds);
  // Text exposition format, with the group's gauges read now.
  std::string Serialize(const GroupRunner& runner);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Counter& preemptions_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Family<prometheus::Gauge>& kv_usage_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  int64_t preemptions_seen_ = 0;
};

}  // namespace moeserve::router
