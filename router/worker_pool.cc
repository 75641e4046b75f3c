#include "router/worker_pool.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace moeserve::router {

namespace v1 = moeserve::worker::v1;

namespace {
std::vector<std::vector<std::string>> OneRankEach(std::vector<std::string> addresses) {
  std::vector<std::vector<std::string>> groups;
  for (auto& a : addresses) groups.push_back({std::move(a)});
  return groups;
}
}  // namespace

WorkerPool::WorkerPool(std::vector<std::string> group_addresses, WorkerPoolOptions options)
    : WorkerPool(OneRankEach(std::move(group_addresses)), std::move(options)) {}

WorkerPool::WorkerPool(std::vector<std::vector<std::string>> groups, WorkerPoolOptions options)
    : options_(std::move(options)) {
  for (auto& ranks : groups) {
    Group g;
    for (const std::string& a : ranks) {
      g.health.push_back(v1::Worker::NewStub(grpc::CreateChannel(a, grpc::InsecureChannelCredentials())));
    }
    g.address = absl::StrJoin(ranks, "+");
    g.ranks = std::move(ranks);
    groups_.push_back(std::move(g));
  }
}

WorkerPool::~WorkerPool() { Stop(); }

absl::Status WorkerPool::Start() {
  absl::Status last = absl::InvalidArgumentError("no worker groups were given");
  int up = 0;
  for (int g = 0; g < static_cast<int>(groups_.size()); ++g) {
    absl::Status st = Connect(g, 30000);
    if (st.ok()) {
      ++up;
    } else {
      std::fprintf(stderr, "moeserve-router: %s (retrying in the background)\n", std::string(st.message()).c_str());
      last = st;
    }
  }
  if (up == 0) return last;
  health_thread_ = std::thread([this] { HealthLoop(); });
  return absl::OkStatus();
}

void WorkerPool::Stop() {
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    stop_ = true;
  }
  health_cv_.notify_all();
  if (health_thread_.joinable()) health_thread_.join();
  std::vector<std::shared_ptr<GroupRunner>> runners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Group& g : groups_) {
      if (g.runner) runners.push_back(std::move(g.runner));
      g.runner.reset();
    }
    for (auto& r : graveyard_) runners.push_back(std::move(r));
    graveyard_.clear();
  }
  for (auto& r : runners) r->Stop();
}

absl::Status WorkerPool::Connect(int g, int timeout_ms) {
  int64_t incarnation;
  std::string address;
  std::vector<std::string> ranks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    incarnation = ++groups_[g].incarnation;
    address = groups_[g].address;
    ranks = groups_[g].ranks;
  }
  RunnerHooks hooks = options_.hooks;
  hooks.on_orphans = [this, g, incarnation](std::vector<OrphanedRequest> orphans, const std::string& why) {
    OnOrphans(g, incarnation, std::move(orphans), why);
  };
  auto runner = std::make_shared<GroupRunner>(ranks, options_.scheduler, std::move(hooks));
  if (absl::Status st = runner->Start(timeout_ms); !st.ok()) return st;
  const v1::DescribeResponse& d = runner->description();
  // The adapters the other groups hold, before the group takes requests.
  std::lock_guard<std::mutex> adapters_lock(adapters_mu_);
  if (options_.adapters) {
    for (const Adapter& a : options_.adapters->Resident()) {
      v1::LoadAdapterResponse res;
      if (absl::Status st = runner->LoadAdapter(a, options_.adapters->max_rank(), &res); !st.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        graveyard_.push_back(runner);
        return absl::Status(st.code(), absl::StrCat("worker ", address, ": LoRA adapter ", a.name, ": ", st.message()));
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!described_) {
    description_ = d;
    max_model_len_ = std::min<int64_t>(options_.scheduler.max_model_len, d.max_model_len());
    described_ = true;
  } else if (d.vocab_size() != description_.vocab_size() || d.num_layers() != description_.num_layers()) {
    graveyard_.push_back(runner);
    return absl::FailedPreconditionError(absl::StrCat("worker ", address, " serves a different model (vocab ",
                                                      d.vocab_size(), ", layers ", d.num_layers(), ") than ",
                                                      groups_[0].address));
  }
  groups_[g].runner = std::move(runner);
  groups_[g].failed_checks = 0;
  return absl::OkStatus();
}

GenerationCallbacks WorkerPool::Wrap(int64_t id, GenerationCallbacks callbacks) {
  GenerationCallbacks w;
  w.on_scheduled = std::move(callbacks.on_scheduled);
  w.on_token = std::move(callbacks.on_token);
  w.on_prompt_logprobs = std::move(callbacks.on_prompt_logprobs);
  w.on_finish = [this, id, finish = std::move(callbacks.on_finish)](RequestStatus st, const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = routes_.find(id); it != routes_.end()) {
        --groups_[it->second.group].in_flight;
        routes_.erase(it);
      }
      // A finish waiting for a move that never happened (no group was left) is moot.
      std::erase_if(pending_finishes_, [id](const auto& f) { return f.first == id; });
    }
    if (finish) finish(st, why);
  };
  return w;
}

absl::StatusOr<int64_t> WorkerPool::Submit(GenerationRequest request, GenerationCallbacks callbacks) {
  const int64_t id = next_id_++;
  return Place(id, std::move(request), Wrap(id, std::move(callbacks)), -1);
}

absl::StatusOr<int64_t> WorkerPool::Place(int64_t id, GenerationRequest request, GenerationCallbacks callbacks,
                                          int exclude) {
  std::lock_guard<std::mutex> lock(mu_);
  const int n = static_cast<int>(groups_.size());
  int best = -1;
  for (int k = 0; k < n; ++k) {
    const int g = (round_robin_ + k) % n;
    if (g == exclude || !groups_[g].runner || !groups_[g].runner->alive()) continue;
    if (best < 0 || groups_[g].in_flight < groups_[best].in_flight) best = g;
  }
  if (best < 0) return absl::UnavailableError("no worker group is up");
  round_robin_ = (best + 1) % n;
  Group& G = groups_[best];
  auto st = G.runner->Submit(std::move(request), std::move(callbacks), id);
  if (!st.ok()) return st.status();
  routes_[id] = Route{best, G.runner};
  ++G.in_flight;
  if (auto it = std::find_if(pending_finishes_.begin(), pending_finishes_.end(),
                             [id](const auto& f) { return f.first == id; });
      it != pending_finishes_.end()) {
    G.runner->Finish(id, it->second);
    pending_finishes_.erase(it);
  }
  return id;
}

void WorkerPool::Finish(int64_t id, RequestStatus status) {
  std::shared_ptr<GroupRunner> runner;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = routes_.find(id);
    if (it == routes_.end()) return;
    runner = it->second.runner;
    // A request of a failing group is about to move: finish it where it lands.
    if (!runner->alive()) pending_finishes_.emplace_back(id, status);
  }
  runner->Finish(id, status);
}

void WorkerPool::OnOrphans(int g, int64_t incarnation, std::vector<OrphanedRequest> orphans, const std::string& why) {
  std::string address;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Group& G = groups_[g];
    address = G.address;
    if (G.incarnation == incarnation && G.runner) {
      G.preemptions_before += G.runner->num_preemptions();
      graveyard_.push_back(std::move(G.runner));  // stopped by the health thread, not on its own loop thread
      G.runner.reset();
      ++G.num_failures;
    }
    for (const OrphanedRequest& o : orphans) {
      if (auto it = routes_.find(o.id); it != routes_.end() && it->second.group == g) --G.in_flight;
    }
  }
  std::fprintf(stderr, "moeserve-router: group %d (%s) is down: %s; moving %zu requests\n", g, address.c_str(),
               why.c_str(), orphans.size());
  for (OrphanedRequest& o : orphans) {
    GenerationCallbacks cb = o.callbacks;
    auto st = Place(o.id, std::move(o.request), std::move(o.callbacks), g);
    if (!st.ok() && cb.on_finish) {
      cb.on_finish(RequestStatus::kFinishedError, absl::StrCat(why, "; ", st.status().message()));
    }
  }
  health_cv_.notify_all();
}

void WorkerPool::HealthLoop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(health_mu_);
      health_cv_.wait_for(lock, std::chrono::milliseconds(options_.health_check_interval_ms), [&] { return stop_; });
      if (stop_) return;
    }
    std::vector<std::shared_ptr<GroupRunner>> dead;
    {
      std::lock_guard<std::mutex> lock(mu_);
      dead.swap(graveyard_);
    }
    for (auto& r : dead) r->Stop();
    dead.clear();
    for (int g = 0; g < static_cast<int>(groups_.size()); ++g) CheckGroup(g);
    ReapAdapters();
  }
}

absl::StatusOr<Adapter> WorkerPool::LoadAdapter(const std::string& name, const std::string& path) {
  if (!options_.adapters) return absl::FailedPreconditionError("this router serves no LoRA adapters");
  std::lock_guard<std::mutex> adapters_lock(adapters_mu_);
  ASSIGN_OR_RETURN(Adapter a, options_.adapters->Reserve(name, path));
  std::vector<std::shared_ptr<GroupRunner>> runners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Group& g : groups_)
      if (g.runner) runners.push_back(g.runner);
  }
  absl::Status st = runners.empty() ? absl::UnavailableError("no worker group is up") : absl::OkStatus();
  size_t loaded = 0;
  for (; st.ok() && loaded < runners.size(); ++loaded) {
    v1::LoadAdapterResponse res;
    st = runners[loaded]->LoadAdapter(a, options_.adapters->max_rank(), &res);
    a.rank = res.rank();
    a.bytes = res.bytes();
  }
  if (!st.ok()) {
    for (size_t i = 0; i < loaded; ++i) (void)runners[i]->UnloadAdapter(a.slot);
    options_.adapters->Cancel(a);
    return st;
  }
  options_.adapters->Publish(a);
  return a;
}

absl::Status WorkerPool::UnloadAdapter(const std::string& name) {
  if (!options_.adapters) return absl::NotFoundError(absl::StrCat("The lora adapter '", name, "' cannot be found."));
  RETURN_IF_ERROR(options_.adapters->Retire(name));
  ReapAdapters();
  return absl::OkStatus();
}

void WorkerPool::ReapAdapters() {
  if (!options_.adapters) return;
  std::lock_guard<std::mutex> adapters_lock(adapters_mu_);
  const std::vector<Adapter> drained = options_.adapters->Drained();
  if (drained.empty()) return;
  std::vector<std::shared_ptr<GroupRunner>> runners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Group& g : groups_)
      if (g.runner) runners.push_back(g.runner);
  }
  for (const Adapter& a : drained) {
    // A worker that still holds a finished sequence of it refuses; the next round retries.
    bool all = true;
    for (auto& r : runners) {
      if (r->alive()) all = r->UnloadAdapter(a.slot).ok() && all;
    }
    if (all) options_.adapters->Free(a.slot);
  }
}

void WorkerPool::CheckGroup(int g) {
  std::shared_ptr<GroupRunner> runner;
  std::string address;
  {
    std::lock_guard<std::mutex> lock(mu_);
    runner = groups_[g].runner;
    address = groups_[g].address;
  }
  if (!runner) {
    if (Connect(g, options_.health_check_timeout_ms).ok()) {
      std::fprintf(stderr, "moeserve-router: group %d (%s) is up\n", g, address.c_str());
    }
    return;
  }
  if (!runner->alive()) return;  // failing: its loop hands the requests on
  // Every rank must answer: one that does not fails its group.
  grpc::Status st;
  v1::HealthResponse res;
  res.set_ok(true);
  for (size_t r = 0; r < groups_[g].health.size() && st.ok() && res.ok(); ++r) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(options_.health_check_timeout_ms));
    st = groups_[g].health[r]->Health(&ctx, v1::HealthRequest(), &res);
    if (!st.ok() || !res.ok()) address = groups_[g].ranks[r];
  }
  int failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed = (st.ok() && res.ok()) ? (groups_[g].failed_checks = 0) : ++groups_[g].failed_checks;
  }
  // Two misses in a row: one slow answer from a busy machine is not a failure.
  if (failed >= 2) {
    runner->MarkFailed(absl::StrCat("worker ", address, " failed its health check: ",
                                    st.ok() ? std::string("not ok") : st.error_message()));
  }
}

bool WorkerPool::ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Group& g : groups_) {
    if (g.runner && g.runner->alive()) return true;
  }
  return false;
}

std::vector<GroupStatus> WorkerPool::Status() const {
  std::vector<std::pair<std::shared_ptr<GroupRunner>, GroupStatus>> rs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Group& g : groups_) {
      GroupStatus s;
      s.address = g.address;
      s.num_failures = g.num_failures;
      s.num_preemptions = g.preemptions_before;
      rs.emplace_back(g.runner, s);
    }
  }
  std::vector<GroupStatus> out;
  for (auto& [r, s] : rs) {
    if (r) {
      s.up = r->alive();
      s.running = r->num_running();
      s.waiting = r->num_waiting();
      for (int c = 0; c < kNumGroups; ++c) s.kv_usage[c] = r->kv_usage(c);
      s.num_preemptions += r->num_preemptions();
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace moeserve::router
