#include "router/group_runner.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "router/step_codec.h"

namespace moeserve::router {

namespace v1 = moeserve::worker::v1;

GroupRunner::GroupRunner(std::string worker_address, SchedulerConfig config, RunnerHooks hooks)
    : GroupRunner(std::vector<std::string>{std::move(worker_address)}, config, std::move(hooks)) {}

GroupRunner::GroupRunner(std::vector<std::string> rank_addresses, SchedulerConfig config, RunnerHooks hooks)
    : ranks_(std::move(rank_addresses)), address_(absl::StrJoin(ranks_, "+")), config_(config),
      hooks_(std::move(hooks)) {}

GroupRunner::~GroupRunner() { Stop(); }

absl::Status GroupRunner::Start(int timeout_ms) {
  const int world = static_cast<int>(ranks_.size());
  if (world == 0) return absl::InvalidArgumentError("a group needs at least one worker");
  rank_.resize(world);
  for (int r = 0; r < world; ++r) {
    Rank& R = rank_[r];
    R.stub = v1::Worker::NewStub(grpc::CreateChannel(ranks_[r], grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    const grpc::Status st = R.stub->Describe(&ctx, v1::DescribeRequest(), &R.description);
    if (!st.ok()) return absl::UnavailableError(absl::StrCat("worker ", ranks_[r], ": ", st.error_message()));
    const v1::DescribeResponse& d = R.description;
    if (d.world_size() != world || d.rank() != r) {
      return absl::FailedPreconditionError(absl::StrCat("worker ", ranks_[r], " is rank ", d.rank(), " of ",
                                                        d.world_size(), ", but the router has it as rank ", r, " of ",
                                                        world, " (--tensor-parallel-size and --worker order must agree)"));
    }
    const v1::DescribeResponse& d0 = rank_[0].description;
    if (d.vocab_size() != d0.vocab_size() || d.num_layers() != d0.num_layers() || d.block_size() != d0.block_size() ||
        d.expert_parallel() != d0.expert_parallel()) {
      return absl::FailedPreconditionError(absl::StrCat("worker ", ranks_[r], " does not serve the same model shape, ",
                                                        "block size and split as ", ranks_[0]));
    }
  }
  // The group's capacity is its smallest rank's.
  description_ = rank_[0].description;
  for (const Rank& R : rank_) {
    description_.mutable_full()->set_num_blocks(std::min(description_.full().num_blocks(), R.description.full().num_blocks()));
    description_.mutable_sliding()->set_num_blocks(
        std::min(description_.sliding().num_blocks(), R.description.sliding().num_blocks()));
    description_.set_max_model_len(std::min(description_.max_model_len(), R.description.max_model_len()));
  }
  if (world > 1) RETURN_IF_ERROR(InitGroup(timeout_ms));
  KvCacheConfig kv;
  kv.block_size = description_.block_size();
  kv.num_blocks = {description_.full().num_blocks(), description_.sliding().num_blocks()};
  kv.sliding_window = description_.sliding_window();
  kv.enable_prefix_caching = config_.enable_prefix_caching;
  config_.max_model_len = std::min<int64_t>(config_.max_model_len, description_.max_model_len());
  scheduler_ = std::make_unique<Scheduler>(config_, kv);
  // An empty step on every rank: each accepts this stream (a worker refuses a second router).
  for (int r = 0; r < world; ++r) {
    Rank& R = rank_[r];
    R.stream_ctx = std::make_unique<grpc::ClientContext>();
    R.stream = R.stub->Execute(R.stream_ctx.get());
    v1::StepRequest hello;
    v1::StepResult res;
    if (!R.stream->Write(hello) || !R.stream->Read(&res)) {
      const grpc::Status st = R.stream->Finish();
      R.stream.reset();
      return absl::UnavailableError(absl::StrCat("worker ", ranks_[r], ": ", st.error_message()));
    }
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

absl::Status GroupRunner::InitGroup(int timeout_ms) {
  const int world = static_cast<int>(ranks_.size());
  v1::InitRequest req;
  req.set_world_size(world);
  req.set_nccl_unique_id(rank_[0].description.nccl_unique_id());
  req.set_store_address(ranks_[0]);
  // A fresh prefix per incarnation: a restarted group never reads stale addresses.
  req.set_store_prefix(absl::StrCat("group/", std::chrono::steady_clock::now().time_since_epoch().count(), "/",
                                    reinterpret_cast<uintptr_t>(this)));
  const int join_ms = std::max(timeout_ms, 60000);
  req.set_timeout_ms(join_ms);
  std::vector<grpc::Status> results(world);
  std::vector<std::thread> calls;
  for (int r = 0; r < world; ++r) {
    calls.emplace_back([&, r] {
      v1::InitRequest mine = req;
      mine.set_rank(r);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(join_ms + 10000));
      v1::InitResponse res;
      results[r] = rank_[r].stub->Init(&ctx, mine, &res);
    });
  }
  for (auto& t : calls) t.join();
  for (int r = 0; r < world; ++r) {
    if (!results[r].ok()) {
      return absl::UnavailableError(absl::StrCat("group ", address_, ": rank ", r, " (", ranks_[r],
                                                 ") did not join: ", results[r].error_message()));
    }
  }
  return absl::OkStatus();
}

void GroupRunner::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (Rank& R : rank_) {
    if (!R.stream) continue;
    R.stream->WritesDone();
    R.stream->Finish();
    R.stream.reset();
  }
  EndAll("the router is shutting down", /*hand_on=*/false);
}

namespace {
absl::Status FromGrpc(const grpc::Status& st, const std::string& who) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(static_cast<int>(st.error_code())),
                      st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED
                          ? absl::StrCat("worker ", who, ": ", st.error_message())
                          : st.error_message());
}
}  // namespace

absl::Status GroupRunner::LoadAdapter(const Adapter& adapter, int64_t max_rank, v1::LoadAdapterResponse* out) {
  v1::LoadAdapterRequest req;
  req.set_adapter(adapter.slot);
  req.set_path(adapter.path);
  req.set_max_rank(max_rank);
  for (size_t r = 0; r < rank_.size(); ++r) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));  // reading the files
    RETURN_IF_ERROR(FromGrpc(rank_[r].stub->LoadAdapter(&ctx, req, out), ranks_[r]));
  }
  return absl::OkStatus();
}

absl::Status GroupRunner::UnloadAdapter(int32_t slot) {
  v1::UnloadAdapterRequest req;
  req.set_adapter(slot);
  for (size_t r = 0; r < rank_.size(); ++r) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::UnloadAdapterResponse res;
    const grpc::Status st = rank_[r].stub->UnloadAdapter(&ctx, req, &res);
    if (!st.ok() && st.error_code() != grpc::StatusCode::NOT_FOUND) return FromGrpc(st, ranks_[r]);
  }
  return absl::OkStatus();
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
  r->sampling = std::move(g.sampling);
  r->cache_key = g.cache_key;
  r->adapter = std::move(g.adapter);
  r->callbacks = std::move(callbacks);
  if (g.grammar) {
    // A request moved from a failed group replays its output through the grammar.
    r->grammar = std::move(g.grammar);
    r->matcher = std::make_unique<grammar::GrammarMatcher>(r->grammar);
    for (int32_t t : r->output) {
      if (!r->matcher->Accept(t)) return absl::InvalidArgumentError("the output so far breaks the request's grammar");
    }
  }
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
  if (absl::Status st = scheduler_->AddRequest(std::move(r)); !st.ok()) return st;
  cv_.notify_all();
  return id;
}

void GroupRunner::Finish(int64_t id, RequestStatus status) {
  MOE_CHECK(status == RequestStatus::kFinishedAborted || status == RequestStatus::kFinishedStopped);
  {
    std::lock_guard<std::mutex> lock(mu_);
    finishes_.emplace_back(id, status);
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
  for (Rank& R : rank_) {
    if (R.stream_ctx) R.stream_ctx->TryCancel();  // a step blocked on a hung worker returns
  }
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

void GroupRunner::ApplyFinishes(std::vector<std::function<void()>>* events) {
  for (const auto& finish : finishes_) {
    const int64_t id = finish.first;
    const RequestStatus status = finish.second;
    const Request* r = scheduler_->request(id);
    if (!r || IsFinished(r->status)) continue;
    scheduler_->FinishRequests({id}, status);
    std::unique_ptr<Request> done = scheduler_->Release(id);
    events->push_back([cb = std::move(done->callbacks.on_finish), status] {
      if (cb) cb(status, "");
    });
  }
  finishes_.clear();
}

void GroupRunner::EndAll(const std::string& why, bool hand_on) {
  std::vector<OrphanedRequest> orphans;
  std::vector<std::function<void()>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = true;
    if (!scheduler_) return;  // never started: nothing was accepted
    ApplyFinishes(&finished);
    const std::vector<int64_t> ids = scheduler_->RequestIds();
    scheduler_->FinishRequests(ids, RequestStatus::kFinishedError);
    for (int64_t id : ids) {
      std::unique_ptr<Request> r = scheduler_->Release(id);
      if (!r) continue;
      OrphanedRequest o;
      o.id = id;
      o.request.prompt = std::move(r->prompt);
      o.request.output = std::move(r->output);
      o.request.max_tokens = r->max_tokens;
      o.request.stop_token_ids = std::move(r->stop_token_ids);
      o.request.sampling = std::move(r->sampling);
      o.request.cache_key = r->cache_key;
      o.request.adapter = std::move(r->adapter);
      o.request.grammar = std::move(r->grammar);
      o.callbacks = std::move(r->callbacks);
      orphans.push_back(std::move(o));
    }
  }
  for (auto& e : finished) e();
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
        return stop_ || failed_ || !finishes_.empty() || scheduler_->num_running() + scheduler_->num_waiting() > 0;
      });
      if (stop_) return;
      failure = failure_;
    }
    if (failure.empty() && !RunStep()) {
      std::lock_guard<std::mutex> lock(mu_);
      failure = failure_.empty() ? absl::StrCat("worker ", address_, " failed") : failure_;
    }
    // Marked down, or the step stream broke; reconnecting is the worker pool's job.
    if (!failure.empty()) return EndAll(failure, /*hand_on=*/true);
  }
}

bool GroupRunner::RunStep() {
  using Event = std::function<void()>;
  std::vector<Event> events;
  std::vector<std::pair<int64_t, grammar::GrammarMatcher*>> masks;  // sequences that sample under a grammar
  v1::StepRequest req;
  SchedulerOutput out;
  uint64_t step_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Finishes first: their blocks return before this step is planned.
    ApplyFinishes(&events);
    out = scheduler_->Schedule();
    step_id = ++step_id_;
    req = EncodeStep(step_id, out);
    num_preemptions_ += static_cast<int64_t>(out.preempted.size());
    // Structured output: the masks of sequences that sample under a grammar
    // follow the step (computed below while the worker runs the forward).
    for (const ScheduledSequence& q : out.scheduled) {
      const Request* r = scheduler_->request(q.request_id);
      if (q.samples && r && r->matcher) masks.emplace_back(q.request_id, r->matcher.get());
    }
    req.set_masks_follow(!masks.empty());
    const auto now = std::chrono::steady_clock::now();
    for (int64_t id : out.started) {
      const Request* r = scheduler_->request(id);
      if (hooks_.on_queue_time) {
        const double q = std::chrono::duration<double>(now - r->arrival).count();
        events.push_back([this, q] { hooks_.on_queue_time(q); });
      }
      // Only the loop thread touches a request's callbacks after Submit.
      if (r->callbacks.on_scheduled) {
        events.push_back([cb = &r->callbacks.on_scheduled, cached = r->num_cached_tokens] { (*cb)(cached); });
      }
    }
    if (hooks_.on_prefix_cache && out.prefix_cache_queries > 0) {
      events.push_back([this, q = out.prefix_cache_queries, h = out.prefix_cache_hits] { hooks_.on_prefix_cache(q, h); });
    }
  }
  for (auto& e : events) e();
  events.clear();
  if (out.scheduled.empty() && out.finished.empty() && out.preempted.empty()) return true;
  v1::StepResult res;
  const auto t0 = std::chrono::steady_clock::now();
  // The same step to every rank, then (structured output) the masks, then
  // every rank's result; rank 0's samples count.
  for (Rank& R : rank_) {
    if (!R.stream->Write(req)) return false;
  }
  if (!masks.empty()) {
    // While the worker runs the forward. Outside the lock: only this thread
    // touches the matchers, and their requests are released by this thread alone.
    v1::StepRequest follow_up;
    follow_up.set_step_id(step_id);
    for (const auto& [id, m] : masks) {
      v1::SequenceMask* sm = follow_up.add_masks();
      sm->set_id(id);
      EncodeTokenMask(m->Mask(), static_cast<int32_t>(description_.vocab_size()), sm->mutable_mask());
    }
    for (Rank& R : rank_) {
      if (!R.stream->Write(follow_up)) return false;
    }
  }
  for (size_t r = 0; r < rank_.size(); ++r) {
    v1::StepResult mine;
    if (!rank_[r].stream->Read(r == 0 ? &res : &mine)) return false;
    // Ranks check a step alike; one that disagrees has left its group's state.
    if (r > 0 && mine.error().empty() != res.error().empty()) return false;
  }
  if (hooks_.on_step) {
    hooks_.on_step(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   out.num_batched_tokens, static_cast<int>(out.scheduled.size()));
  }
  absl::StatusOr<StepSamples> decoded = DecodeResult(res, step_id, out, description_.vocab_size());
  if (!decoded.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = absl::StrCat("worker ", address_, ": ", decoded.status().message());
    return false;
  }

  // Tokens are delivered outside the lock through pointers into the requests'
  // records: only this thread releases a request, Submit never touches an
  // existing one, and finished requests are released after their last token.
  std::vector<std::pair<const std::function<void(const v1::SampleOutput&)>*, const v1::SampleOutput*>> tokens;
  std::vector<std::pair<const std::function<void(const v1::PromptLogprobs&)>*, const v1::PromptLogprobs*>> prompt_lps;
  std::vector<int64_t> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (decoded->error.empty()) {
      for (const v1::PromptLogprobs& pl : res.prompt_logprobs()) {
        const Request* r = scheduler_->request(pl.id());
        const bool scheduled = std::any_of(out.scheduled.begin(), out.scheduled.end(),
                                           [&](const auto& s) { return s.request_id == pl.id(); });
        bool ok = r && scheduled && r->sampling.prompt_logprobs() && pl.first_position() >= 1 &&
                  pl.first_position() + pl.tokens_size() <= static_cast<int64_t>(r->prompt.size());
        for (int k = 0; ok && k < pl.tokens_size(); ++k) ok = pl.tokens(k).token() == r->prompt[pl.first_position() + k];
        if (!ok) {
          failure_ = absl::StrCat("worker ", address_, " returned prompt logprobs that do not match sequence ",
                                  pl.id(), "'s prompt");
          return false;
        }
        if (!IsFinished(r->status) && r->callbacks.on_prompt_logprobs) {
          prompt_lps.emplace_back(&r->callbacks.on_prompt_logprobs, &pl);
        }
      }
    }
    if (!decoded->error.empty()) {
      // The worker dropped this step's sequences: only they fail.
      for (const auto& s : out.scheduled) done.push_back(s.request_id);
      scheduler_->FinishRequests(done, RequestStatus::kFinishedError);
    } else {
      tokens.reserve(decoded->samples.size());
      for (const v1::SampleOutput* s : decoded->samples) {
        const Request* r = scheduler_->request(s->id());
        if (r && !IsFinished(r->status) && r->matcher && !r->matcher->Accept(s->token())) {
          // The mask went with the step: a worker that samples outside it broke the protocol.
          failure_ = absl::StrCat("worker ", address_, " sampled token ", s->token(), " for sequence ", s->id(),
                                  ", which its grammar forbids");
          return false;
        }
        if (!r || IsFinished(r->status) || !r->callbacks.on_token) continue;
        tokens.emplace_back(&r->callbacks.on_token, s);
      }
      done = scheduler_->UpdateFromOutput(out, decoded->tokens);
    }
  }
  for (const auto& [cb, pl] : prompt_lps) (*cb)(*pl);
  for (const auto& [cb, s] : tokens) (*cb)(*s);
  if (done.empty()) return true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int64_t id : done) {
      std::unique_ptr<Request> r = scheduler_->Release(id);
      if (!r) continue;
      const RequestStatus status = r->status;
      const std::string why = status == RequestStatus::kFinishedError ? decoded->error : "";
      events.push_back([cb = std::move(r->callbacks.on_finish), status, why] {
        if (cb) cb(status, why);
      });
    }
  }
  for (auto& e : events) e();
  return true;
}

}  // namespace moeserve::router
