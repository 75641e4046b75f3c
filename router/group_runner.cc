#include "router/group_runner.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"

namespace moeserve::router {

namespace v1 = moeserve::worker::v1;

GroupRunner::GroupRunner(std::string worker_address, SchedulerConfig config, RunnerHooks hooks)
    : address_(std::move(worker_address)), config_(config), hooks_(std::move(hooks)) {}

GroupRunner::~GroupRunner() { Stop(); }

absl::Status GroupRunner::Start(int timeout_ms) {
  auto channel = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  stub_ = v1::Worker::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  const grpc::Status st = stub_->Describe(&ctx, v1::DescribeRequest(), &description_);
  if (!st.ok()) return absl::UnavailableError(absl::StrCat("worker ", address_, ": ", st.error_message()));
  KvCacheConfig kv;
  kv.block_size = description_.block_size();
  kv.num_blocks = {description_.full().num_blocks(), description_.sliding().num_blocks()};
  kv.sliding_window = description_.sliding_window();
  config_.max_model_len = std::min<int64_t>(config_.max_model_len, description_.max_model_len());
  scheduler_ = std::make_unique<Scheduler>(config_, kv);
  stream_ctx_ = std::make_unique<grpc::ClientContext>();
  stream_ = stub_->Execute(stream_ctx_.get());
  // An empty step: the worker accepts this stream (it refuses a second router).
  v1::StepRequest hello;
  v1::StepResult res;
  if (!stream_->Write(hello) || !stream_->Read(&res)) {
    const grpc::Status st = stream_->Finish();
    stream_.reset();
    return absl::UnavailableError(absl::StrCat("worker ", address_, ": ", st.error_message()));
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void GroupRunner::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (stream_) {
    stream_->WritesDone();
    stream_->Finish();
    stream_.reset();
  }
  EndAll("the router is shutting down", /*hand_on=*/false);
}

absl::StatusOr<int64_t> GroupRunner::Submit(GenerationRequest g, GenerationCallbacks callbacks, int64_t id_hint) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || failed_ || !scheduler_) return absl::UnavailableError("no worker group is running");
  auto r = std::make_unique<Request>();
  r->id = id_hint > 0 ? id_hint : next_id_++;
  r->prompt = std::move(g.prompt);
  r->output = std::move(g.output);
  r->max_tokens = g.max_tokens;
  r->stop_token_ids = std::move(g.stop_token_ids);
  const int64_t id = r->id;
  for (int64_t i = 0; i < r->num_tokens(); ++i) {
    const int32_t t = r->token_at(i);
    if (t < 0 || t >= description_.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", t, " is outside the vocabulary"));
    }
  }
  if (r->output.size() >= static_cast<size_t>(r->max_tokens)) {
    return absl::InvalidArgumentError("the request has no tokens left to generate");
  }
  if (live_.count(id)) return absl::AlreadyExistsError(absl::StrCat("request ", id, " exists"));
  if (absl::Status st = scheduler_->AddRequest(std::move(r)); !st.ok()) return st;
  Live& l = live_[id];
  l.sampling = g.sampling;
  l.callbacks = std::move(callbacks);
  l.submitted = std::chrono::steady_clock::now();
  cv_.notify_all();
  return id;
}

void GroupRunner::Abort(int64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(id);
  }
  cv_.notify_all();
}

void GroupRunner::MarkFailed(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || failed_) return;
    failed_ = true;
    failure_ = why;
  }
  cv_.notify_all();
  if (stream_ctx_) stream_ctx_->TryCancel();  // a step blocked on a hung worker returns
}

bool GroupRunner::alive() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !stop_ && !failed_ && scheduler_ != nullptr;
}

int GroupRunner::num_running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return scheduler_ ? scheduler_->num_running() : 0;
}

int GroupRunner::num_waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return scheduler_ ? scheduler_->num_waiting() : 0;
}

double GroupRunner::kv_usage(int group) const {
  std::lock_guard<std::mutex> lock(mu_);
  return scheduler_ ? scheduler_->kv().usage(group) : 0.0;
}

int64_t GroupRunner::num_preemptions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return num_preemptions_;
}

void GroupRunner::EndAll(const std::string& why, bool hand_on) {
  std::vector<OrphanedRequest> orphans;
  std::vector<GenerationCallbacks> aborted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = true;
    if (!scheduler_) return;  // never started: nothing was accepted
    for (int64_t id : aborts_) {
      auto it = live_.find(id);
      if (it == live_.end()) continue;
      aborted.push_back(std::move(it->second.callbacks));
      live_.erase(it);
      scheduler_->FinishRequests({id}, RequestStatus::kFinishedAborted);
      scheduler_->Release(id);
    }
    aborts_.clear();
    std::vector<int64_t> ids;
    for (auto& [id, l] : live_) {
      const Request* r = scheduler_->request(id);
      if (!r) continue;
      OrphanedRequest o;
      o.id = id;
      o.request.prompt = r->prompt;
      o.request.output = r->output;
      o.request.max_tokens = r->max_tokens;
      o.request.stop_token_ids = r->stop_token_ids;
      o.request.sampling = l.sampling;
      o.callbacks = std::move(l.callbacks);
      orphans.push_back(std::move(o));
      ids.push_back(id);
    }
    scheduler_->FinishRequests(ids, RequestStatus::kFinishedError);
    for (int64_t id : ids) scheduler_->Release(id);
    live_.clear();
  }
  for (auto& cb : aborted) {
    if (cb.on_finish) cb.on_finish(RequestStatus::kFinishedAborted, "");
  }
  if (hand_on && hooks_.on_orphans) {
    hooks_.on_orphans(std::move(orphans), why);
    return;
  }
  for (auto& o : orphans) {
    if (o.callbacks.on_finish) o.callbacks.on_finish(RequestStatus::kFinishedError, why);
  }
}

void GroupRunner::Loop() {
  while (true) {
    std::string failure;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(50), [&] {
        return stop_ || failed_ || !aborts_.empty() || scheduler_->num_running() + scheduler_->num_waiting() > 0;
      });
      if (stop_) return;
      failure = failure_;
    }
    if (!failure.empty() || !RunStep()) {
      // Marked down; reconnecting is the worker pool's job.
      return EndAll(failure.empty() ? absl::StrCat("worker ", address_, " failed") : failure, /*hand_on=*/true);
    }
  }
}

bool GroupRunner::RunStep() {
  using Event = std::function<void()>;
  std::vector<Event> events;
  v1::StepRequest req;
  SchedulerOutput out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Aborts first: their blocks return before this step is planned.
    for (int64_t id : aborts_) {
      auto it = live_.find(id);
      if (it == live_.end()) continue;
      scheduler_->FinishRequests({id}, RequestStatus::kFinishedAborted);
      scheduler_->Release(id);
      auto cb = std::move(it->second.callbacks);
      live_.erase(it);
      events.push_back([cb] {
        if (cb.on_finish) cb.on_finish(RequestStatus::kFinishedAborted, "");
      });
    }
    aborts_.clear();
    out = scheduler_->Schedule();
    req.set_step_id(++step_id_);
    for (int64_t id : out.finished) req.add_finished_ids(id);
    num_preemptions_ += static_cast<int64_t>(out.preempted.size());
    for (int64_t id : out.preempted) {
      req.add_finished_ids(id);
      if (auto it = live_.find(id); it != live_.end()) it->second.blocks_sent[0] = it->second.blocks_sent[1] = 0;
    }
    const auto now = std::chrono::steady_clock::now();
    for (const ScheduledSequence& s : out.scheduled) {
      const Request* r = scheduler_->request(s.request_id);
      Live& l = live_[s.request_id];
      if (!l.scheduled_once) {
        l.scheduled_once = true;
        if (hooks_.on_queue_time) {
          const double q = std::chrono::duration<double>(now - l.submitted).count();
          events.push_back([this, q] { hooks_.on_queue_time(q); });
        }
      }
      const BlockTables& t = scheduler_->kv().tables(s.request_id);
      if (s.whole) {
        v1::NewSequence* n = req.add_new_sequences();
        n->set_id(s.request_id);
        for (int64_t i = 0; i < r->num_tokens(); ++i) n->add_tokens(r->token_at(i));
        n->set_num_computed(s.start);
        n->set_num_scheduled(s.num_tokens);
        for (int32_t b : t[kFullGroup]) n->add_full_blocks(b);
        for (int32_t b : t[kSlidingGroup]) n->add_sliding_blocks(b);
        *n->mutable_sampling() = l.sampling;
        n->set_num_prompt_tokens(static_cast<int32_t>(r->prompt.size()));
      } else {
        v1::RunningSequence* n = req.add_running();
        n->set_id(s.request_id);
        n->set_num_scheduled(s.num_tokens);
        for (size_t b = l.blocks_sent[kFullGroup]; b < t[kFullGroup].size(); ++b) n->add_new_full_blocks(t[kFullGroup][b]);
        for (size_t b = l.blocks_sent[kSlidingGroup]; b < t[kSlidingGroup].size(); ++b) {
          n->add_new_sliding_blocks(t[kSlidingGroup][b]);
        }
        n->set_sliding_released_below(scheduler_->kv().sliding_released(s.request_id));
      }
      l.blocks_sent[kFullGroup] = t[kFullGroup].size();
      l.blocks_sent[kSlidingGroup] = t[kSlidingGroup].size();
    }
  }
  for (auto& e : events) e();
  events.clear();
  if (out.scheduled.empty() && out.finished.empty() && out.preempted.empty()) return true;

  v1::StepResult res;
  const auto t0 = std::chrono::steady_clock::now();
  if (!stream_->Write(req) || !stream_->Read(&res)) return false;
  if (hooks_.on_step) {
    hooks_.on_step(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   out.num_batched_tokens, static_cast<int>(out.scheduled.size()));
  }

  // Tokens are delivered outside the lock through pointers into live_: only
  // this thread erases from it (std::map keeps other elements in place while
  // Submit inserts), and finished requests are erased after their last token.
  std::vector<std::pair<const std::function<void(const v1::SampleOutput&)>*, const v1::SampleOutput*>> tokens;
  std::vector<int64_t> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!res.error().empty()) {
      // The worker dropped this step's sequences: only they fail.
      for (const auto& s : out.scheduled) done.push_back(s.request_id);
      scheduler_->FinishRequests(done, RequestStatus::kFinishedError);
    } else {
      sampled_.clear();
      tokens.reserve(res.samples_size());
      for (const v1::SampleOutput& s : res.samples()) {
        sampled_[s.id()] = s.token();
        auto it = live_.find(s.id());
        if (it == live_.end() || !it->second.callbacks.on_token) continue;
        tokens.emplace_back(&it->second.callbacks.on_token, &s);
      }
      done = scheduler_->UpdateFromOutput(out, sampled_);
    }
  }
  for (const auto& [cb, s] : tokens) (*cb)(*s);
  if (done.empty()) return true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int64_t id : done) {
      auto it = live_.find(id);
      if (it == live_.end()) continue;
      const RequestStatus status = scheduler_->request(id)->status;
      auto cb = std::move(it->second.callbacks);
      live_.erase(it);
      scheduler_->Release(id);
      const std::string why = status == RequestStatus::kFinishedError ? res.error() : "";
      events.push_back([cb, status, why] {
        if (cb.on_finish) cb.on_finish(status, why);
      });
    }
  }
  for (auto& e : events) e();
  return true;
}

}  // namespace moeserve::router
