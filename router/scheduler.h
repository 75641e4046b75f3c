// Continuous batching for one worker group, in the shape of vLLM v1: no
// prefill and decode phases, one rule. Each step hands out a token budget
// (max_num_batched_tokens) first to running requests, then to waiting ones, up
// to max_num_seqs running. A request's step covers min(remaining tokens,
// budget) tokens, so long prompts are prefilled in chunks and prefill mixes
// with decode in the same step. When the KV pool cannot grow a running
// request, the newest running request is preempted (its blocks freed, its
// tokens recomputed later). New requests are admitted only while a watermark
// of blocks stays free.
//
// Prefix caching (kv_cache_manager.h): a request being admitted starts from
// its longest usable cached prefix, its computed-token count set to the hit;
// a preempted request usually finds its own blocks still cached. If the block
// after the hit is being computed by a running request, the request waits a
// step and shares it. Blocks are named after each step's result, never before.
//
// What the worker holds lives on each Request (known_to_worker, blocks_sent):
// Schedule emits new sequences whole and running ones as diffs; the step codec
// (step_codec.h) turns the output into a StepRequest.
//
// A plain state machine: no threads, no clocks, no I/O; a loop object owns the
// thread and the worker stream and calls Schedule / UpdateFromOutput.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "router/kv_cache_manager.h"
#include "router/request.h"

namespace moeserve::router {

struct SchedulerConfig {
  int64_t max_num_batched_tokens = 2048;
  int32_t max_num_seqs = 64;
  int64_t max_model_len = 8192;
  int32_t watermark_blocks = 1;  // per group, kept free when admitting new requests
  int32_t max_num_queued_requests = 1024;
  bool enable_prefix_caching = true;  // copied into the KvCacheConfig by the group runner
};

// One sequence of a step, in schedule order.
struct ScheduledSequence {
  int64_t request_id;
  int64_t start;        // position of the first token computed this step
  int64_t num_tokens;   // tokens computed this step
  bool whole;           // new to the worker (or recomputed after preemption): sent whole
  bool samples;         // this step reaches the end of the known tokens, so the worker samples
};

// A sequence the worker does not know yet: everything it needs (vLLM's NewRequestData).
struct NewSequenceData {
  int64_t request_id;
  std::vector<int32_t> tokens;  // every known token: prompt, then output when recomputing
  int32_t num_prompt_tokens;
  int64_t num_computed;         // tokens whose K/V exist (a prefix-cache hit), where this step starts
  int64_t num_scheduled;
  BlockTables tables;
  worker::v1::SamplingParams sampling;
  int32_t adapter = 0;  // LoRA slot (router/adapters.h), 0: the base model
};

// A sequence the worker holds: what changed since the last step (vLLM's CachedRequestData).
struct CachedSequenceData {
  int64_t request_id;
  int64_t num_scheduled;
  BlockTables new_blocks;              // table entries appended since the last step, per group
  int64_t sliding_released_below = 0;  // sliding entries below this index are released
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> scheduled;
  std::vector<NewSequenceData> new_sequences;
  std::vector<CachedSequenceData> cached;
  std::vector<int64_t> preempted;  // worker state of these must be dropped
  std::vector<int64_t> finished;   // finished since the previous step: drop their worker state
  std::vector<int64_t> started;    // scheduled for the first time (their num_cached_tokens is set)
  int64_t num_batched_tokens = 0;
  // Prefix-cache lookups of this step, in tokens (vLLM's prefix_cache_queries / _hits).
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, const KvCacheConfig& kv);

  // Queues a request. InvalidArgument if it can never fit (prompt + max_tokens
  // beyond max_model_len, or more KV blocks than the pools have);
  // ResourceExhausted if the waiting queue is full.
  absl::Status AddRequest(std::unique_ptr<Request> request);
  SchedulerOutput Schedule();
  // Applies a step's results: `sampled` maps request id -> token for the
  // sequences that sampled. Returns the ids that finished.
  std::vector<int64_t> UpdateFromOutput(const SchedulerOutput& output, const std::map<int64_t, int32_t>& sampled);
  // Ends requests (stop string, abort, error) wherever they are; their blocks return at once.
  void FinishRequests(const std::vector<int64_t>& ids, RequestStatus status);
  // Forgets a finished request (after its result has been delivered).
  std::unique_ptr<Request> Release(int64_t id);

  const Request* request(int64_t id) const;
  Request* mutable_request(int64_t id);
  // Every request the scheduler holds, in id order.
  std::vector<int64_t> RequestIds() const;
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  const KvCacheManager& kv() const { return kv_; }

 private:
  void Preempt(Request* r, SchedulerOutput* out);
  // Adds the step's payload for a scheduled request (whole or as a diff) and
  // records what the worker now holds.
  void Emit(Request* r, int64_t num_tokens, SchedulerOutput* out);
  // Extends r->block_hashes over the full blocks of its known tokens.
  void UpdateBlockHashes(Request* r) const;
  void Finish(Request* r, RequestStatus status);

  SchedulerConfig config_;
  KvCacheManager kv_;
  std::unordered_map<int64_t, std::unique_ptr<Request>> requests_;
  std::deque<Request*> waiting_;
  std::vector<Request*> running_;
  std::vector<int64_t> finished_since_last_step_;
};

}  // namespace moeserve::router
