// The router's worker groups: data-parallel replicas of the model, each
// driven by its own GroupRunner (DESIGN §1, §3).
//
// Requests go to the live group with the least load (requests in flight). A
// health thread checks every group's worker: a worker that stops answering is
// marked down and its requests move to another live group, where their
// tokens so far are recomputed and generation continues (greedy output is the
// same as without the failure); with no live group left they end with an
// error. A down group's worker is probed until it answers again, then it
// rejoins with a fresh scheduler and empty KV pools.
//
// Request ids are the pool's and stay valid across a move, so Abort always
// reaches the group that holds the request. Thread-safe; callbacks run on the
// loop thread of the group that serves the request.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "router/group_runner.h"

namespace moeserve::router {

struct WorkerPoolOptions {
  SchedulerConfig scheduler;
  int health_check_interval_ms = 1000;
  int health_check_timeout_ms = 2000;
  // Observers shared by all groups (queue time, step latency); on_orphans is the pool's.
  RunnerHooks hooks;
  // LoRA adapters every group holds (null: none can be loaded).
  AdapterRegistry* adapters = nullptr;
};

struct GroupStatus {
  std::string address;
  bool up = false;
  int running = 0;
  int waiting = 0;
  double kv_usage[kNumGroups] = {0, 0};
  int64_t num_preemptions = 0;  // since the router started, over all incarnations
  int64_t num_failures = 0;     // times the group was marked down
};

class WorkerPool : public GenerationBackend {
 public:
  // One address per group (each group one worker process).
  WorkerPool(std::vector<std::string> group_addresses, WorkerPoolOptions options);
  // Groups of ranks (tensor/expert parallel): groups[g][r] is rank r of group g.
  WorkerPool(std::vector<std::vector<std::string>> groups, WorkerPoolOptions options);
  ~WorkerPool();

  // Connects to every group; fails only if none answers. Groups that do not
  // answer yet are retried by the health thread.
  absl::Status Start();
  void Stop();

  absl::StatusOr<int64_t> Submit(GenerationRequest request, GenerationCallbacks callbacks) override;
  // Ends a request at its group's next step: the client went away (abort) or
  // a stop string matched (stopped; on_finish reports kFinishedStopped).
  void Finish(int64_t id, RequestStatus status) override;

  // The model as the first worker described it (all groups must agree).
  const worker::v1::DescribeResponse& description() const { return description_; }
  int64_t max_model_len() const override { return max_model_len_; }
  bool ready() const;  // at least one group is up
  std::vector<GroupStatus> Status() const;

  // LoRA adapters (router/adapters.h), loaded on every group that is up and
  // on groups that (re)join. The error is a worker's refusal (InvalidArgument
  // for files that are not a valid adapter for this model) or the registry's.
  absl::StatusOr<Adapter> LoadAdapter(const std::string& name, const std::string& path);
  // Retires the name now; the workers drop it once no request holds it.
  absl::Status UnloadAdapter(const std::string& name);
  AdapterRegistry* adapters() const { return options_.adapters; }

 private:
  struct Group {
    std::string address;              // the ranks' addresses joined with "+"
    std::vector<std::string> ranks;
    std::shared_ptr<GroupRunner> runner;  // null while down
    std::vector<std::unique_ptr<worker::v1::Worker::Stub>> health;  // per rank
    int64_t incarnation = 0;
    int failed_checks = 0;
    int in_flight = 0;
    int64_t num_failures = 0;
    int64_t preemptions_before = 0;  // of earlier incarnations
  };
  struct Route {
    int group;
    std::shared_ptr<GroupRunner> runner;
  };

  absl::Status Connect(int g, int timeout_ms);  // describes the worker and starts a runner (no lock held)
  void HealthLoop();
  void CheckGroup(int g);
  void ReapAdapters();  // unloads drained adapters from the workers
  absl::StatusOr<int64_t> Place(int64_t id, GenerationRequest request, GenerationCallbacks callbacks, int exclude);
  void OnOrphans(int g, int64_t incarnation, std::vector<OrphanedRequest> orphans, const std::string& why);
  GenerationCallbacks Wrap(int64_t id, GenerationCallbacks callbacks);

  WorkerPoolOptions options_;
  worker::v1::DescribeResponse description_;
  int64_t max_model_len_ = 0;

  mutable std::mutex mu_;
  std::vector<Group> groups_;
  std::map<int64_t, Route> routes_;  // request id -> where it runs
  std::atomic<int64_t> next_id_{1};
  int round_robin_ = 0;
  bool described_ = false;
  // Finished (aborted, stopped) while their group was failing: applied where they land.
  std::vector<std::pair<int64_t, RequestStatus>> pending_finishes_;
  std::vector<std::shared_ptr<GroupRunner>> graveyard_;  // failed runners, stopped by the health thread

  std::mutex adapters_mu_;  // serialises adapter loads, unloads and the loads of a joining group
  std::mutex health_mu_;
  std::condition_variable health_cv_;
  bool stop_ = false;
  std::thread health_thread_;
};

}  // namespace moeserve::router
