// Drives one worker group: the thin loop around a Scheduler (DESIGN §3).
//
// A group is one worker, or the N ranks of a tensor/expert-parallel group
// (rank i at address i). It describes every rank (each must say it is rank i
// of N, of the same model), starts the group's rendezvous (Init on every rank
// at once: rank 0's address as the Gloo store under a fresh key prefix, or
// rank 0's NCCL id), sizes the scheduler's block pools from the smallest
// rank's capacity, and runs one thread that turns each Schedule() into a StepRequest
// (step_codec.h: new sequences whole once, running ones as block-table diffs,
// finished and preempted ids to drop) on the worker's Execute stream, reads
// the StepResult, and feeds it back with UpdateFromOutput. Every request's
// state is its scheduler Request; the runner keeps no table of its own. Every rank gets the
// same step; rank 0's samples are used; a rank that fails fails the group. Callers submit and
// abort requests from any thread; their callbacks run on the loop thread.
// If the worker fails, the requests in flight go to the on_orphans hook (the
// worker pool recomputes them on another group) or end with kFinishedError.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "moeserve/worker/v1/worker.grpc.pb.h"
#include "router/scheduler.h"

namespace moeserve::router {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  // Tokens already generated (a request moved from a failed group): they are
  // recomputed, count against max_tokens and are not reported again.
  std::vector<int32_t> output;
  int64_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  worker::v1::SamplingParams sampling;
  int64_t cache_key = 0;  // prefix-cache namespace (the LoRA adapter's); 0: the base model
  std::shared_ptr<const Adapter> adapter;  // null: the base model
  // Structured output (router/grammar/): the grammar the output must follow, or null.
  std::shared_ptr<const grammar::CompiledGrammar> grammar;
};

// What the API front (router/generation.h) needs of whatever runs
// generations: the worker pool, or a scripted stand-in in its unit tests.
class GenerationBackend {
 public:
  virtual ~GenerationBackend() = default;
  // Queues a request; callbacks run on a loop thread. ResourceExhausted when the queue is full.
  virtual absl::StatusOr<int64_t> Submit(GenerationRequest request, GenerationCallbacks callbacks) = 0;
  // Ends a request at its next step (aborted, or stopped by a stop string).
  virtual void Finish(int64_t id, RequestStatus status) = 0;
  void Abort(int64_t id) { Finish(id, RequestStatus::kFinishedAborted); }
  virtual int64_t max_model_len() const = 0;
};

// A request that lost its worker: what it needs to continue elsewhere.
struct OrphanedRequest {
  int64_t id;
  GenerationRequest request;  // prompt, output so far, the original max_tokens
  GenerationCallbacks callbacks;
};

// Observers, called on the loop thread.
struct RunnerHooks {
  // After each step that ran on the worker: its round-trip time, tokens and sequences.
  std::function<void(double seconds, int64_t batched_tokens, int num_seqs)> on_step;
  // When a request is scheduled for the first time: seconds since Submit.
  std::function<void(double seconds)> on_queue_time;
  // Prefix-cache lookups of a step, in tokens: looked up, found cached.
  std::function<void(int64_t queries, int64_t hits)> on_prefix_cache;
  // The worker failed: these requests have not finished. Without this hook they end with kFinishedError.
  std::function<void(std::vector<OrphanedRequest>, const std::string& why)> on_orphans;
};

class GroupRunner {
 public:
  GroupRunner(std::string worker_address, SchedulerConfig config, RunnerHooks hooks = {});
  // A group of ranks: rank_addresses[i] is rank i.
  GroupRunner(std::vector<std::string> rank_addresses, SchedulerConfig config, RunnerHooks hooks = {});
  ~GroupRunner();

  // Connects (Describe and, for several ranks, Init; waiting at most
  // timeout_ms for each) and starts the loop.
  absl::Status Start(int timeout_ms = 30000);
  void Stop();

  // Queues a request; errors (too long, queue full) come back at once. `id`
  // must be unique for this runner; 0 picks the next free one.
  absl::StatusOr<int64_t> Submit(GenerationRequest request, GenerationCallbacks callbacks, int64_t id = 0);
  // Ends a request before the next step: kFinishedAborted (the client went
  // away) or kFinishedStopped (a stop string matched); on_finish reports it.
  void Finish(int64_t id, RequestStatus status);
  void Abort(int64_t id) { Finish(id, RequestStatus::kFinishedAborted); }
  // Treats the worker as failed (a failed health check): the loop stops and
  // hands its requests on, as if the step stream had broken.
  void MarkFailed(const std::string& why);
  // False once the worker failed or Stop() was called.
  bool alive() const;
  const std::string& address() const { return address_; }

  const worker::v1::DescribeResponse& description() const { return description_; }
  // LoRA adapters on every rank of the group (worker.v1 LoadAdapter /
  // UnloadAdapter; after Start). The error is the first rank's refusal.
  absl::Status LoadAdapter(const Adapter& adapter, int64_t max_rank, worker::v1::LoadAdapterResponse* out);
  absl::Status UnloadAdapter(int32_t slot);
  int num_running() const;
  int num_waiting() const;
  int64_t num_preemptions() const;
  double kv_usage(int group) const;

 private:
  void Loop();
  bool RunStep();  // false when the worker failed
  // Applies the finishes callers asked for (under mu_); their on_finish calls go to `events`.
  void ApplyFinishes(std::vector<std::function<void()>>* events);
  // Ends every request the runner holds: aborted ones as aborted; the rest go to
  // hooks_.on_orphans when `hand_on` and the hook is set, else end with kFinishedError.
  void EndAll(const std::string& why, bool hand_on);

  absl::Status InitGroup(int timeout_ms);  // the rendezvous of several ranks

  std::vector<std::string> ranks_;
  std::string address_;  // the ranks' addresses joined with "+"
  SchedulerConfig config_;
  RunnerHooks hooks_;
  worker::v1::DescribeResponse description_;  // rank 0's, with the group's smallest KV capacity
  struct Rank {
    std::unique_ptr<worker::v1::Worker::Stub> stub;
    std::unique_ptr<grpc::ClientContext> stream_ctx;
    std::unique_ptr<grpc::ClientReaderWriter<worker::v1::StepRequest, worker::v1::StepResult>> stream;
    worker::v1::DescribeResponse description;
  };
  std::vector<Rank> rank_;
  std::unique_ptr<Scheduler> scheduler_;  // loop thread only (under mu_ for Submit's checks)

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<int64_t, RequestStatus>> finishes_;  // asked by callers, applied before each step
  bool stop_ = false;
  bool failed_ = false;
  std::string failure_;
  int64_t next_id_ = 1;
  uint64_t step_id_ = 0;
  int64_t num_preemptions_ = 0;
  std::thread thread_;
};

}  // namespace moeserve::router
