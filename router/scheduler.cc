#include "router/scheduler.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/step_limits.h"

namespace moeserve::router {
namespace {

// A chunk of a request with prompt logprobs returns logits for every row
// while it covers prompt positions: a step holds at most
// kMaxPromptLogprobRows such rows, over all its requests.
bool HasPromptRows(const Request& r, int64_t start) {
  return r.sampling.prompt_logprobs() && start + 1 < static_cast<int64_t>(r.prompt.size());
}

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config, const KvCacheConfig& kv) : config_(config), kv_(kv) {}

absl::Status Scheduler::AddRequest(std::unique_ptr<Request> r) {
  if (r->prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (r->max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be at least 1");
  const int64_t total = static_cast<int64_t>(r->prompt.size()) + r->max_tokens;
  if (total > config_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat("this model's maximum context length is ", config_.max_model_len,
                                                   " tokens; the prompt (", r->prompt.size(), ") plus max_tokens (",
                                                   r->max_tokens, ") is ", total));
  }
  const auto need = kv_.BlocksNeeded(total);
  for (int g = 0; g < kNumGroups; ++g) {
    if (need[g] > kv_.pool(g).num_blocks()) {
      return absl::InvalidArgumentError(absl::StrCat("the request needs ", need[g], " KV blocks; the worker has ",
                                                     kv_.pool(g).num_blocks()));
    }
  }
  if (static_cast<int32_t>(waiting_.size()) >= config_.max_num_queued_requests) {
    return absl::ResourceExhaustedError("the waiting queue is full");
  }
  if (requests_.count(r->id)) return absl::AlreadyExistsError(absl::StrCat("request ", r->id, " exists"));
  r->status = RequestStatus::kWaiting;
  Request* p = r.get();
  requests_[r->id] = std::move(r);
  waiting_.push_back(p);
  return absl::OkStatus();
}

void Scheduler::Preempt(Request* r, SchedulerOutput* out) {
  kv_.Free(r->id);
  r->status = RequestStatus::kPreempted;
  r->num_computed = 0;
  ++r->num_preemptions;
  r->known_to_worker = false;
  r->blocks_sent = {0, 0};
  running_.erase(std::find(running_.begin(), running_.end(), r));
  waiting_.push_front(r);
  out->preempted.push_back(r->id);
}

void Scheduler::UpdateBlockHashes(Request* r) const {
  if (!kv_.config().enable_prefix_caching) return;
  const int64_t bs = kv_.config().block_size;
  // Called for every scheduled sequence each step; a new full block comes once in block_size tokens.
  if ((static_cast<int64_t>(r->block_hashes.size()) + 1) * bs > r->num_tokens()) return;
  std::vector<int32_t> block(bs);
  for (int64_t b = static_cast<int64_t>(r->block_hashes.size()); (b + 1) * bs <= r->num_tokens(); ++b) {
    for (int64_t i = 0; i < bs; ++i) block[i] = r->token_at(b * bs + i);
    r->block_hashes.push_back(HashBlock(b > 0 ? &r->block_hashes[b - 1] : nullptr, r->cache_key, block));
  }
}

void Scheduler::Emit(Request* r, int64_t n, SchedulerOutput* out) {
  const bool whole = !r->known_to_worker;
  out->scheduled.push_back({r->id, r->num_computed, n, whole, r->num_computed + n == r->num_tokens()});
  const BlockTables& t = kv_.tables(r->id);
  if (whole) {
    NewSequenceData d;
    d.request_id = r->id;
    d.tokens.reserve(r->num_tokens());
    d.tokens.insert(d.tokens.end(), r->prompt.begin(), r->prompt.end());
    d.tokens.insert(d.tokens.end(), r->output.begin(), r->output.end());
    d.num_prompt_tokens = static_cast<int32_t>(r->prompt.size());
    d.num_computed = r->num_computed;
    d.num_scheduled = n;
    d.tables = t;
    d.sampling = r->sampling;
    d.adapter = r->adapter ? r->adapter->slot : 0;
    out->new_sequences.push_back(std::move(d));
  } else {
    CachedSequenceData d;
    d.request_id = r->id;
    d.num_scheduled = n;
    for (int g = 0; g < kNumGroups; ++g) d.new_blocks[g].assign(t[g].begin() + r->blocks_sent[g], t[g].end());
    d.sliding_released_below = kv_.sliding_released(r->id);
    out->cached.push_back(std::move(d));
  }
  r->known_to_worker = true;
  for (int g = 0; g < kNumGroups; ++g) r->blocks_sent[g] = t[g].size();
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  out.finished.swap(finished_since_last_step_);
  int64_t budget = config_.max_num_batched_tokens;
  int64_t prompt_rows_left = kMaxPromptLogprobRows;  // rows returning logits for prompt logprobs
  auto prompt_rows_limit = [&](const Request& r, int64_t start) {
    return HasPromptRows(r, start) ? prompt_rows_left : std::numeric_limits<int64_t>::max();
  };
  std::vector<Request*> scheduled_running;

  // 1. Running requests, oldest first.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request* r = running_[i];
    int64_t n = std::min(r->num_tokens() - r->num_computed, budget);
    if (n <= 0) {
      ++i;
      continue;
    }
    // A prefill chunk no longer than the free sliding blocks allow (when even
    // one token does not fit, allocation fails below and preemption makes room).
    if (const int64_t lim = kv_.SlidingTokenLimit(r->id, r->num_computed, 0); lim >= 1) n = std::min(n, lim);
    n = std::min(n, prompt_rows_limit(*r, r->num_computed));
    if (n <= 0) {  // this step's prompt-logprob rows are taken
      ++i;
      continue;
    }
    bool fits = kv_.AllocateSlots(r->id, r->num_computed, n, 0, &r->block_hashes);
    while (!fits) {
      // Preempt the newest running request that is not already in this step.
      Request* victim = running_.back();
      if (std::find(scheduled_running.begin(), scheduled_running.end(), victim) != scheduled_running.end()) break;
      Preempt(victim, &out);
      if (victim == r) break;
      fits = kv_.AllocateSlots(r->id, r->num_computed, n, 0, &r->block_hashes);
    }
    if (!fits) break;  // r was preempted, or nothing left to preempt
    if (HasPromptRows(*r, r->num_computed)) prompt_rows_left -= n;
    Emit(r, n, &out);
    scheduled_running.push_back(r);
    budget -= n;
    ++i;
  }

  // 2. Waiting requests, in order, unless this step had to preempt. One whose
  // next block another request is computing waits a step to share it.
  for (size_t i = 0; out.preempted.empty() && budget > 0 && i < waiting_.size() &&
                     static_cast<int32_t>(running_.size()) < config_.max_num_seqs;) {
    Request* r = waiting_[i];
    PrefixHit hit;
    // Prompt logprobs need every prompt position computed: no cache hits.
    if (r->num_computed == 0 && kv_.config().enable_prefix_caching && !r->sampling.prompt_logprobs()) {
      UpdateBlockHashes(r);
      hit = kv_.FindCachedPrefix(r->block_hashes, r->num_tokens());
      if (hit.next_pending) {
        ++i;
        continue;
      }
    }
    const int64_t start = r->num_computed + hit.num_tokens;
    const int64_t n = std::min({r->num_tokens() - start, budget,
                                kv_.SlidingTokenLimit(r->id, start, config_.watermark_blocks, &hit),
                                prompt_rows_limit(*r, start)});
    if (n < 1 && HasPromptRows(*r, start) && prompt_rows_left == 0) {  // next step
      ++i;
      continue;
    }
    if (n < 1 || !kv_.AllocateSlots(r->id, start, n, config_.watermark_blocks, &r->block_hashes, &hit)) break;
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
    r->num_computed = start;
    r->status = RequestStatus::kRunning;
    running_.push_back(r);
    if (kv_.config().enable_prefix_caching) {
      out.prefix_cache_queries += r->num_tokens();
      out.prefix_cache_hits += hit.num_tokens;
    }
    if (r->num_cached_tokens < 0) {
      r->num_cached_tokens = std::min<int64_t>(hit.num_tokens, static_cast<int64_t>(r->prompt.size()));
      out.started.push_back(r->id);
    }
    if (HasPromptRows(*r, start)) prompt_rows_left -= n;
    Emit(r, n, &out);
    budget -= n;
  }
  out.num_batched_tokens = config_.max_num_batched_tokens - budget;
  return out;
}

void Scheduler::Finish(Request* r, RequestStatus status) {
  r->status = status;
  kv_.Free(r->id);
  r->known_to_worker = false;
  running_.erase(std::remove(running_.begin(), running_.end(), r), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), r), waiting_.end());
  finished_since_last_step_.push_back(r->id);
}

std::vector<int64_t> Scheduler::UpdateFromOutput(const SchedulerOutput& output,
                                                 const std::map<int64_t, int32_t>& sampled) {
  std::vector<int64_t> done;
  for (const ScheduledSequence& s : output.scheduled) {
    auto it = requests_.find(s.request_id);
    if (it == requests_.end()) continue;
    Request* r = it->second.get();
    if (r->status != RequestStatus::kRunning) continue;  // aborted or preempted meanwhile
    r->num_computed = s.start + s.num_tokens;
    auto tok = s.samples ? sampled.find(s.request_id) : sampled.end();
    if (tok != sampled.end()) r->output.push_back(tok->second);
    // The step's full blocks are computed now: name them for later requests.
    UpdateBlockHashes(r);
    kv_.CacheBlocks(r->id, r->block_hashes, r->num_computed);
    if (tok == sampled.end()) continue;
    if (std::find(r->stop_token_ids.begin(), r->stop_token_ids.end(), tok->second) != r->stop_token_ids.end()) {
      Finish(r, RequestStatus::kFinishedStopped);
      done.push_back(r->id);
    } else if (static_cast<int64_t>(r->output.size()) >= r->max_tokens || r->num_tokens() >= config_.max_model_len) {
      Finish(r, RequestStatus::kFinishedLength);
      done.push_back(r->id);
    }
  }
  return done;
}

void Scheduler::FinishRequests(const std::vector<int64_t>& ids, RequestStatus status) {
  MOE_CHECK(IsFinished(status));
  for (int64_t id : ids) {
    auto it = requests_.find(id);
    if (it == requests_.end() || IsFinished(it->second->status)) continue;
    Finish(it->second.get(), status);
  }
}

std::unique_ptr<Request> Scheduler::Release(int64_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end() || !IsFinished(it->second->status)) return nullptr;
  auto r = std::move(it->second);
  requests_.erase(it);
  return r;
}

std::vector<int64_t> Scheduler::RequestIds() const {
  std::vector<int64_t> ids;
  ids.reserve(requests_.size());
  for (const auto& [id, r] : requests_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

Request* Scheduler::mutable_request(int64_t id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

const Request* Scheduler::request(int64_t id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

}  // namespace moeserve::router
