#include "worker/worker_service.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <unordered_set>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "base/step_limits.h"
#include "engine/parallel/gloo_communicator.h"

namespace moeserve::worker {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

SamplingParams FromProto(const v1::SamplingParams& p) {
  SamplingParams s;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  s.min_p = p.min_p();
  s.repetition_penalty = p.repetition_penalty() == 0.0f ? 1.0f : p.repetition_penalty();
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  s.has_seed = p.has_seed();
  s.seed = p.seed();
  s.logprobs = p.logprobs() ? p.top_logprobs() : -1;
  for (const auto& [t, b] : p.logit_bias()) s.logit_bias.emplace_back(t, b);
  std::sort(s.logit_bias.begin(), s.logit_bias.end());  // protobuf maps have no order
  return s;
}

// Rank 0's rendezvous store, seen from another rank.
class RemoteStore final : public parallel::RendezvousStore {
 public:
  explicit RemoteStore(const std::string& address)
      : stub_(v1::Worker::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))),
        address_(address) {}
  absl::Status Set(const std::string& key, const std::string& value) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    ctx.set_wait_for_ready(true);  // rank 0 may still be starting
    v1::StoreSetRequest req;
    req.set_key(key);
    req.set_value(value);
    v1::StoreSetResponse res;
    const grpc::Status st = stub_->StoreSet(&ctx, req, &res);
    if (!st.ok()) return absl::UnavailableError(absl::StrCat("rank 0 (", address_, "): ", st.error_message()));
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout + std::chrono::seconds(5));
    ctx.set_wait_for_ready(true);
    v1::StoreGetRequest req;
    req.set_key(key);
    req.set_timeout_ms(static_cast<int32_t>(timeout.count()));
    v1::StoreGetResponse res;
    const grpc::Status st = stub_->StoreGet(&ctx, req, &res);
    if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key \"", key, "\" was not set in time"));
    }
    if (!st.ok()) return absl::UnavailableError(absl::StrCat("rank 0 (", address_, "): ", st.error_message()));
    return res.value();
  }

 private:
  std::unique_ptr<v1::Worker::Stub> stub_;
  std::string address_;
};

}  // namespace

WorkerService::WorkerService(std::unique_ptr<Backend> model, const WorkerOptions& options)
    : model_(std::move(model)), options_(options), registry_(std::make_shared<prometheus::Registry>()) {
  step_seconds_ = &prometheus::BuildHistogram()
                       .Name("moeserve_worker_step_seconds")
                       .Help("Wall time of one step (forward and sampling).")
                       .Register(*registry_)
                       .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                                        0.5, 1, 2.5, 5, 10, 30});
  batch_tokens_ = &prometheus::BuildHistogram()
                       .Name("moeserve_worker_batch_tokens")
                       .Help("Tokens computed per step.")
                       .Register(*registry_)
                       .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024,
                                                                        2048, 4096, 8192});
  sequences_held_ = &prometheus::BuildGauge()
                         .Name("moeserve_worker_sequences")
                         .Help("Sequences whose state the worker holds.")
                         .Register(*registry_)
                         .Add({});
  lora_adapters_ = &prometheus::BuildGauge()
                        .Name("moeserve_worker_lora_adapters")
                        .Help("LoRA adapters loaded.")
                        .Register(*registry_)
                        .Add({});
  lora_bytes_ = &prometheus::BuildGauge()
                     .Name("moeserve_worker_lora_adapter_bytes")
                     .Help("Memory the loaded LoRA adapters take.")
                     .Register(*registry_)
                     .Add({});
  kv_usage_ = &prometheus::BuildGauge()
                   .Name("moeserve_worker_kv_cache_usage_ratio")
                   .Help("Fraction of KV blocks referenced by held sequences, per cache group.")
                   .Register(*registry_);
  expert_selections_ = &prometheus::BuildCounter()
                            .Name("moeserve_worker_expert_selections_total")
                            .Help("Tokens routed to each expert of each layer (the MoE load picture).")
                            .Register(*registry_);
  collective_seconds_ = &prometheus::BuildCounter()
                             .Name("moeserve_worker_collective_seconds_total")
                             .Help("Wall time in the group's collectives (all-reduce, all-gather, broadcast).")
                             .Register(*registry_)
                             .Add({});
  auto& cache = prometheus::BuildCounter()
                    .Name("moeserve_worker_expert_cache_pairs_total")
                    .Help("(token, expert) pairs of layers whose experts live in host memory (--n-cpu-moe): "
                          "served from the device cache (hit) or by the CPU (miss).")
                    .Register(*registry_);
  cache_hits_ = &cache.Add({{"result", "hit"}});
  cache_misses_ = &cache.Add({{"result", "miss"}});
  prometheus::BuildGauge()
      .Name("moeserve_worker_expert_cache_slots")
      .Help("Host experts the device cache holds.")
      .Register(*registry_)
      .Add({})
      .Set(static_cast<double>(model_->expert_cache_stats().slots));
  const ShardPlan& shard = model_->shard();
  prometheus::BuildGauge()
      .Name("moeserve_worker_info")
      .Help("The worker's place: rank and size of its tensor/expert-parallel group, device.")
      .Register(*registry_)
      .Add({{"rank", std::to_string(shard.rank)},
            {"world_size", std::to_string(shard.world_size)},
            {"parallel", !shard.sharded() ? "none" : shard.expert_parallel ? "expert" : "tensor"},
            {"device", model_->device()}})
      .Set(1);
  const ModelConfig& c = model_->config();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (int64_t e = 0; e < c.num_local_experts; ++e) {
      expert_counters_.push_back(
          &expert_selections_->Add({{"layer", std::to_string(l)}, {"expert", std::to_string(e)}}));
    }
  }
  expert_seen_.assign(expert_counters_.size(), 0);
}

void WorkerService::UpdateMetrics(int64_t batch_tokens, double step_seconds) {
  step_seconds_->Observe(step_seconds);
  batch_tokens_->Observe(static_cast<double>(batch_tokens));
  sequences_held_->Set(static_cast<double>(sequences_.size()));
  const KvCacheOptions& kv = model_->kv_options();
  for (int g = 0; g < kNumCacheGroups; ++g) {
    int64_t used = 0;
    for (const auto& [id, s] : sequences_) {
      for (int32_t b : s.tables[g]) used += b >= 0;
    }
    const int64_t total = kv.num_blocks[g];
    kv_usage_->Add({{"group", g == kFullGroup ? "full" : "sliding"}})
        .Set(total ? static_cast<double>(used) / static_cast<double>(total) : 0.0);
  }
  const ExpertCacheStats cache = model_->expert_cache_stats();
  if (cache.hits + cache.misses > 0) {
    cache_hits_->Increment(static_cast<double>(cache.hits - cache_seen_.hits));
    cache_misses_->Increment(static_cast<double>(cache.misses - cache_seen_.misses));
    cache_seen_ = cache;
  }
  if (parallel::Communicator* comm = model_->communicator()) {
    collective_seconds_->Increment(static_cast<double>(comm->busy_ns() - collective_ns_seen_) * 1e-9);
    collective_ns_seen_ = comm->busy_ns();
  }
  const auto& counts = model_->expert_counts();
  for (size_t i = 0; i < counts.size() && i < expert_counters_.size(); ++i) {
    if (counts[i] > expert_seen_[i]) {
      expert_counters_[i]->Increment(static_cast<double>(counts[i] - expert_seen_[i]));
      expert_seen_[i] = counts[i];
    }
  }
}

grpc::Status WorkerService::Describe(grpc::ServerContext*, const v1::DescribeRequest*, v1::DescribeResponse* out) {
  const ModelConfig& c = model_->config();
  const KvCacheOptions& kv = model_->kv_options();
  out->set_model(options_.served_model_name);
  out->set_vocab_size(c.vocab_size);
  out->set_num_layers(static_cast<int32_t>(c.num_hidden_layers));
  out->set_max_model_len(options_.max_model_len);
  out->set_block_size(kv.block_size);
  out->set_sliding_window(c.sliding_window);
  for (int g = 0; g < kNumCacheGroups; ++g) {
    v1::CacheGroup* cg = g == kFullGroup ? out->mutable_full() : out->mutable_sliding();
    cg->set_num_blocks(static_cast<int32_t>(kv.num_blocks[g]));
    cg->set_bytes_per_block(static_cast<int64_t>(KvCache::BytesPerBlock(c, g, kv.block_size, kv.dtype)));
    cg->set_num_layers(KvCache::LayersInGroup(c, g));
  }
  const ShardPlan& shard = model_->shard();
  out->set_rank(shard.rank);
  out->set_world_size(shard.world_size);
  out->set_expert_parallel(shard.expert_parallel);
  out->set_device(model_->device());
  for (int64_t id : c.eos_token_ids) out->add_eos_token_ids(static_cast<int32_t>(id));
  if (shard.sharded()) {
    const bool nccl = static_cast<bool>(options_.nccl_join);
    out->set_communicator(nccl ? "nccl" : "gloo");
    if (nccl && shard.rank == 0) {
      std::lock_guard<std::mutex> lock(init_mu_);
      if (nccl_id_.empty()) {
        auto id = options_.nccl_unique_id();
        if (!id.ok()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(id.status().message()));
        nccl_id_ = *id;
      }
      out->set_nccl_unique_id(nccl_id_);
    }
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::Init(grpc::ServerContext*, const v1::InitRequest* req, v1::InitResponse*) {
  const ShardPlan& shard = model_->shard();
  if (req->world_size() != shard.world_size || req->rank() != shard.rank) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("this worker was started as rank ", shard.rank, " of ", shard.world_size,
                                     ", not rank ", req->rank(), " of ", req->world_size()));
  }
  if (!shard.sharded()) return grpc::Status::OK;
  std::lock_guard<std::mutex> init(init_mu_);
  if (model_->communicator()) return grpc::Status::OK;  // the group has met; a router reconnecting
  const auto timeout = std::chrono::milliseconds(req->timeout_ms() > 0 ? req->timeout_ms() : 60000);
  absl::StatusOr<std::unique_ptr<parallel::Communicator>> comm;
  if (options_.nccl_join) {
    comm = options_.nccl_join(*req);
  } else {
    if (req->store_address().empty() || req->store_prefix().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Init of a Gloo group needs store_address and store_prefix");
    }
    parallel::GlooOptions go;
    go.hostname = options_.gloo_hostname;
    go.prefix = req->store_prefix();
    go.timeout = timeout;
    if (shard.rank == 0) {
      comm = parallel::CreateGlooCommunicator(shard.rank, shard.world_size, store_, go);
    } else {
      RemoteStore remote(req->store_address());
      comm = parallel::CreateGlooCommunicator(shard.rank, shard.world_size, remote, go);
    }
  }
  if (!comm.ok()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(comm.status().message()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  model_->SetCommunicator(std::move(*comm));
  std::fprintf(stderr, "moeserve-worker: rank %d of %d joined its group (%s)\n", shard.rank, shard.world_size,
               model_->communicator()->name().c_str());
  return grpc::Status::OK;
}

grpc::Status WorkerService::StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* req, v1::StoreSetResponse*) {
  if (model_->shard().rank != 0) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "only rank 0 holds the store");
  if (absl::Status st = store_.Set(req->key(), req->value()); !st.ok()) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(st.message()));
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::StoreGet(grpc::ServerContext*, const v1::StoreGetRequest* req, v1::StoreGetResponse* out) {
  if (model_->shard().rank != 0) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "only rank 0 holds the store");
  const int timeout_ms = std::clamp(req->timeout_ms(), 0, 600000);
  auto v = store_.Get(req->key(), std::chrono::milliseconds(timeout_ms));
  if (!v.ok()) return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, std::string(v.status().message()));
  out->set_value(*v);
  return grpc::Status::OK;
}

bool WorkerService::ShareTokens(std::vector<int32_t>& tokens) {
  parallel::Communicator* comm = model_->communicator();
  if (!comm || tokens.empty()) return true;
  return comm->BroadcastHost(tokens.data(), static_cast<int64_t>(tokens.size()), parallel::DataType::kI32, 0).ok();
}

grpc::Status WorkerService::Health(grpc::ServerContext*, const v1::HealthRequest*, v1::HealthResponse* out) {
  out->set_ok(true);
  return grpc::Status::OK;
}

namespace {
grpc::Status ToGrpc(const absl::Status& st) {
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(st.code())), std::string(st.message()));
}
}  // namespace

grpc::Status WorkerService::LoadAdapter(grpc::ServerContext*, const v1::LoadAdapterRequest* req,
                                        v1::LoadAdapterResponse* out) {
  const int32_t slot = req->adapter();
  if (slot < 1 || slot >= kMaxLoraSlots) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("adapter slot ", slot, " outside [1, ",
                                                                         kMaxLoraSlots, ")"));
  }
  if (model_->shard().sharded()) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "LoRA adapters on tensor/expert-parallel ranks are not supported yet");
  }
  // Files are read outside the step lock: steps go on meanwhile.
  auto adapter = LoadLoraAdapter(req->path(), model_->config(), {req->max_rank()});
  if (!adapter.ok()) return ToGrpc(adapter.status());
  const int64_t bytes = static_cast<int64_t>((*adapter)->bytes());
  out->set_rank((*adapter)->max_rank);
  out->set_bytes(bytes);
  out->set_summary((*adapter)->summary);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, seq] : sequences_) {
    if (seq.adapter == slot) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("adapter slot ", slot, " is in use by sequence ", id));
    }
  }
  if (absl::Status st = model_->SetLoraAdapter(slot, std::move(*adapter)); !st.ok()) return ToGrpc(st);
  adapter_bytes_[slot] = bytes;
  int64_t total = 0;
  for (const auto& [s, b] : adapter_bytes_) total += b;
  lora_adapters_->Set(static_cast<double>(adapter_bytes_.size()));
  lora_bytes_->Set(static_cast<double>(total));
  return grpc::Status::OK;
}

grpc::Status WorkerService::UnloadAdapter(grpc::ServerContext*, const v1::UnloadAdapterRequest* req,
                                          v1::UnloadAdapterResponse*) {
  std::lock_guard<std::mutex> lock(mu_);
  const int32_t slot = req->adapter();
  if (!adapter_bytes_.count(slot)) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("no adapter in slot ", slot));
  }
  for (const auto& [id, seq] : sequences_) {
    if (seq.adapter == slot) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("adapter slot ", slot, " is in use by sequence ", id));
    }
  }
  if (absl::Status st = model_->SetLoraAdapter(slot, nullptr); !st.ok()) return ToGrpc(st);
  adapter_bytes_.erase(slot);
  int64_t total = 0;
  for (const auto& [s, b] : adapter_bytes_) total += b;
  lora_adapters_->Set(static_cast<double>(adapter_bytes_.size()));
  lora_bytes_->Set(static_cast<double>(total));
  return grpc::Status::OK;
}

void WorkerService::DropAdapters() {
  for (const auto& [slot, bytes] : adapter_bytes_) (void)model_->SetLoraAdapter(slot, nullptr);
  adapter_bytes_.clear();
  lora_adapters_->Set(0);
  lora_bytes_->Set(0);
}

namespace {

// A TokenMask as mask words over the vocabulary (engine/batch.h); error text when malformed.
std::string DecodeTokenMask(const v1::TokenMask& m, int64_t vocab, std::vector<uint32_t>* words) {
  const int forms = (m.allowed_size() > 0) + (m.denied_size() > 0) + !m.bits().empty();
  if (forms != 1) return "a token mask must set exactly one of allowed, denied and bits";
  const int64_t n = TokenMaskWords(vocab);
  auto in_vocab = [&](int32_t t) { return t >= 0 && t < vocab; };
  if (m.allowed_size() > 0) {
    words->assign(n, 0);
    for (int32_t t : m.allowed()) {
      if (!in_vocab(t)) return absl::StrCat("token mask: token ", t, " is outside the vocabulary");
      (*words)[t >> 5] |= 1u << (t & 31);
    }
  } else if (m.denied_size() > 0) {
    words->assign(n, 0xffffffffu);
    for (int32_t t : m.denied()) {
      if (!in_vocab(t)) return absl::StrCat("token mask: token ", t, " is outside the vocabulary");
      (*words)[t >> 5] &= ~(1u << (t & 31));
    }
  } else {
    if (static_cast<int64_t>(m.bits().size()) != (vocab + 7) / 8) {
      return absl::StrCat("token mask: ", m.bits().size(), " bytes of bits; the vocabulary needs ", (vocab + 7) / 8);
    }
    words->assign(n, 0);
    for (int64_t b = 0; b < static_cast<int64_t>(m.bits().size()); ++b) {
      (*words)[b >> 2] |= static_cast<uint32_t>(static_cast<uint8_t>(m.bits()[b])) << (8 * (b & 3));
    }
  }
  return "";
}

}  // namespace

v1::StepResult WorkerService::Step(const v1::StepRequest& req,
                                   const std::function<bool(v1::StepRequest*)>& read_masks) {
  std::optional<v1::StepRequest> follow_up;
  bool follow_up_ok = false;
  auto masks_request = [&]() -> const v1::StepRequest* {
    if (!follow_up) {
      follow_up.emplace();
      follow_up_ok = read_masks && read_masks(&*follow_up);
    }
    return follow_up_ok ? &*follow_up : nullptr;
  };
  v1::StepResult res = RunStep(req, masks_request);
  if (req.masks_follow()) masks_request();  // read even when the step failed before it needed the masks
  return res;
}

v1::StepResult WorkerService::RunStep(const v1::StepRequest& req,
                                      const std::function<const v1::StepRequest*()>& masks_request) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t t0 = NowNs();
  v1::StepResult res;
  res.set_step_id(req.step_id());
  for (int64_t id : req.finished_ids()) sequences_.erase(id);

  std::vector<int64_t> ids;  // sequences of this step, in batch order
  auto fail = [&](const std::string& why) {
    for (int64_t id : ids) sequences_.erase(id);
    res.clear_samples();
    res.clear_prompt_logprobs();
    res.set_error(why);
    return res;
  };
  std::vector<int64_t> scheduled;
  std::vector<std::vector<uint32_t>> masks;  // per sequence of the step (empty: none)
  const int64_t vocab = model_->config().vocab_size;
  auto take_mask = [&](int64_t id, bool has, const v1::TokenMask& m) -> std::string {
    masks.emplace_back();
    if (!has) return "";
    if (req.masks_follow()) return absl::StrCat("sequence ", id, ": a step whose masks follow it carries none inline");
    const std::string why = DecodeTokenMask(m, vocab, &masks.back());
    return why.empty() ? "" : absl::StrCat("sequence ", id, ": ", why);
  };
  std::unordered_set<int64_t> named;  // a sequence appears at most once per step
  auto twice = [&](int64_t id) { return !named.insert(id).second; };
  for (const v1::NewSequence& n : req.new_sequences()) {
    if (twice(n.id())) return fail(absl::StrCat("sequence ", n.id(), " appears twice in the step"));
    ids.push_back(n.id());
    Sequence s;
    s.tokens.assign(n.tokens().begin(), n.tokens().end());
    s.num_computed = n.num_computed();
    s.tables[kFullGroup].assign(n.full_blocks().begin(), n.full_blocks().end());
    s.tables[kSlidingGroup].assign(n.sliding_blocks().begin(), n.sliding_blocks().end());
    // Every known token, not only this step's chunk: prompt logprobs read the token after a chunk.
    for (const int32_t t : n.tokens()) {
      if (t < 0 || t >= vocab) return fail(absl::StrCat("sequence ", n.id(), ": token ", t, " is outside the vocabulary"));
    }
    const SamplingParams sp = FromProto(n.sampling());
    if (absl::Status st = sp.Validate(); !st.ok()) return fail(absl::StrCat("sequence ", n.id(), ": ", st.message()));
    const int32_t np = std::clamp<int32_t>(n.num_prompt_tokens(), 0, static_cast<int32_t>(s.tokens.size()));
    s.sampler = std::make_unique<Sampler>(sp, std::vector<int32_t>(s.tokens.begin(), s.tokens.begin() + np));
    s.sampler->AddOutputHistory(std::vector<int32_t>(s.tokens.begin() + np, s.tokens.end()));
    s.logprobs = n.sampling().logprobs();
    s.prompt_logprobs = n.sampling().prompt_logprobs();
    s.num_prompt = np;
    s.top_logprobs = n.sampling().top_logprobs();
    s.adapter = n.adapter();
    if (s.adapter != 0 && !adapter_bytes_.count(s.adapter)) {
      return fail(absl::StrCat("sequence ", n.id(), ": no LoRA adapter is loaded as ", s.adapter));
    }
    if (n.num_scheduled() < 1 || s.num_computed < 0 ||
        s.num_computed + n.num_scheduled() > static_cast<int64_t>(s.tokens.size())) {
      return fail(absl::StrCat("sequence ", n.id(), ": scheduled tokens outside the known tokens"));
    }
    sequences_[n.id()] = std::move(s);
    scheduled.push_back(n.num_scheduled());
    if (std::string why = take_mask(n.id(), n.has_token_mask(), n.token_mask()); !why.empty()) return fail(why);
  }
  for (const v1::RunningSequence& r : req.running()) {
    if (twice(r.id())) return fail(absl::StrCat("sequence ", r.id(), " appears twice in the step"));
    auto it = sequences_.find(r.id());
    if (it == sequences_.end()) return fail(absl::StrCat("sequence ", r.id(), " is unknown to this worker"));
    ids.push_back(r.id());
    Sequence& s = it->second;
    s.tables[kFullGroup].insert(s.tables[kFullGroup].end(), r.new_full_blocks().begin(), r.new_full_blocks().end());
    s.tables[kSlidingGroup].insert(s.tables[kSlidingGroup].end(), r.new_sliding_blocks().begin(),
                                   r.new_sliding_blocks().end());
    for (int64_t b = 0; b < std::min<int64_t>(r.sliding_released_below(), s.tables[kSlidingGroup].size()); ++b) {
      s.tables[kSlidingGroup][b] = -1;
    }
    if (r.num_scheduled() < 1 || s.num_computed + r.num_scheduled() > static_cast<int64_t>(s.tokens.size())) {
      return fail(absl::StrCat("sequence ", r.id(), ": scheduled tokens outside the known tokens"));
    }
    scheduled.push_back(r.num_scheduled());
    if (std::string why = take_mask(r.id(), r.has_token_mask(), r.token_mask()); !why.empty()) return fail(why);
  }
  std::vector<SequenceInput> batch;
  int64_t prompt_rows = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    Sequence& s = sequences_[ids[i]];
    SequenceInput in;
    in.tokens = std::span<const int32_t>(s.tokens).subspan(s.num_computed, scheduled[i]);
    in.start_pos = s.num_computed;
    in.block_tables[kFullGroup] = s.tables[kFullGroup];
    in.block_tables[kSlidingGroup] = s.tables[kSlidingGroup];
    in.adapter = s.adapter == 0 ? -1 : s.adapter;
    // A mask applies to the step's sample; a chunk that does not reach the end samples nothing.
    if (s.num_computed + scheduled[i] == static_cast<int64_t>(s.tokens.size())) in.token_mask = masks[i];
    // Prompt logprobs: every row whose next token is a prompt token returns logits.
    in.all_logits = s.prompt_logprobs && s.num_computed + 1 < s.num_prompt;
    if (in.all_logits) prompt_rows += scheduled[i];
    batch.push_back(in);
  }
  if (prompt_rows > kMaxPromptLogprobRows) {
    return fail(absl::StrCat("the step has ", prompt_rows, " rows with prompt logprobs; at most ",
                             kMaxPromptLogprobRows, " are allowed"));
  }
  ForwardOutput out;
  // A rank whose group's collective failed cannot go on: its peers are out of step.
  auto exit_if_group_failed = [&] {
    if (parallel::Communicator* comm = model_->communicator(); comm && !comm->failure().empty()) {
      std::fprintf(stderr, "moeserve-worker: %s; leaving so the group restarts\n", comm->failure().c_str());
      std::fflush(stderr);
      std::_Exit(3);
    }
  };
  if (!batch.empty()) {
    if (absl::Status st = model_->Forward(batch, &out); !st.ok()) {
      exit_if_group_failed();
      return fail(std::string(st.message()));
    }
  }
  const int64_t t1 = NowNs();
  // Rank 0 samples; the other ranks of a group take its tokens.
  const bool samples = model_->shard().rank == 0;
  // Masks sent after the step: computed by the router while the forward ran;
  // applied to the sampling rows here, as the logits op applies inline ones.
  if (req.masks_follow()) {
    const v1::StepRequest* m = masks_request();
    if (!m) return fail("the step's token masks did not follow it");
    if (m->step_id() != req.step_id() || m->new_sequences_size() > 0 || m->running_size() > 0 ||
        m->finished_ids_size() > 0 || m->masks_follow()) {
      return fail("a step's token masks must follow it alone, with its step_id");
    }
    std::unordered_set<int64_t> masked;
    for (const v1::SequenceMask& sm : m->masks()) {
      const auto at = std::find(ids.begin(), ids.end(), sm.id());
      if (at == ids.end() || !masked.insert(sm.id()).second) {
        return fail(absl::StrCat("a token mask for sequence ", sm.id(), ", which is not in the step or has one already"));
      }
      const size_t i = static_cast<size_t>(at - ids.begin());
      const Sequence& s = sequences_[ids[i]];
      if (s.num_computed + scheduled[i] != static_cast<int64_t>(s.tokens.size())) {
        return fail(absl::StrCat("sequence ", sm.id(), " samples nothing this step but has a token mask"));
      }
      std::vector<uint32_t> bits;
      if (std::string why = DecodeTokenMask(sm.mask(), vocab, &bits); !why.empty()) {
        return fail(absl::StrCat("sequence ", sm.id(), ": ", why));
      }
      if (!TokenMaskAllowsAny(bits, vocab)) return fail(absl::StrCat("sequence ", sm.id(), ": the token mask allows no token"));
      if (samples) {
        const size_t row = static_cast<size_t>(out.first_row[i] + out.num_rows[i] - 1);
        ApplyTokenMask(out.logits.data() + row * static_cast<size_t>(out.vocab_size), out.vocab_size, bits.data());
      }
    }
  }
  std::vector<SampleResult> results(ids.size());
  std::vector<int32_t> tokens;
  if (samples) {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!batch[i].all_logits) continue;
      const Sequence& s = sequences_[ids[i]];
      // Row j is position num_computed + j and predicts the token after it.
      const int64_t rows = std::min<int64_t>(scheduled[i], s.num_prompt - 1 - s.num_computed);
      v1::PromptLogprobs* pl = res.add_prompt_logprobs();
      pl->set_id(ids[i]);
      pl->set_first_position(s.num_computed + 1);
      for (int64_t j = 0; j < rows; ++j) {
        const int32_t next = s.tokens[s.num_computed + j + 1];
        const SampleResult lp =
            TokenLogprobs(out.Row(static_cast<int>(i), static_cast<int>(j)), out.vocab_size, next, s.top_logprobs);
        v1::SampleOutput* o = pl->add_tokens();
        o->set_token(next);
        o->set_logprob(std::max(lp.logprob, -9999.0f));
        for (const auto& t : lp.top) {
          v1::TokenLogprob* tl = o->add_top_logprobs();
          tl->set_token(t.token);
          tl->set_logprob(std::max(t.logprob, -9999.0f));
        }
      }
    }
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    Sequence& s = sequences_[ids[i]];
    if (s.num_computed + scheduled[i] != static_cast<int64_t>(s.tokens.size())) continue;
    if (samples) results[i] = s.sampler->Sample(out.Row(static_cast<int>(i)), out.vocab_size);
    tokens.push_back(results[i].token);
  }
  if (!ShareTokens(tokens)) exit_if_group_failed();
  size_t next_token = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    Sequence& s = sequences_[ids[i]];
    s.num_computed += scheduled[i];
    if (s.num_computed != static_cast<int64_t>(s.tokens.size())) continue;  // a prefill chunk: nothing to sample
    SampleResult& r = results[i];
    r.token = tokens[next_token++];
    s.tokens.push_back(r.token);
    v1::SampleOutput* o = res.add_samples();
    o->set_id(ids[i]);
    o->set_token(r.token);
    if (s.logprobs) {
      // A token a mask ruled out has logprob -inf: reported as -9999, as vLLM does (JSON has no infinity).
      auto finite = [](float lp) { return std::max(lp, -9999.0f); };
      o->set_logprob(finite(r.logprob));
      for (const auto& t : r.top) {
        v1::TokenLogprob* tl = o->add_top_logprobs();
        tl->set_token(t.token);
        tl->set_logprob(finite(t.logprob));
      }
    }
  }
  const int64_t t2 = NowNs();
  int64_t batch_tokens = 0;
  for (int64_t n : scheduled) batch_tokens += n;
  UpdateMetrics(batch_tokens, static_cast<double>(t2 - t0) * 1e-9);
  res.set_forward_ns(t1 - t0);
  res.set_sample_ns(t2 - t1);
  res.set_total_ns(t2 - t0);
  return res;
}

grpc::Status WorkerService::Execute(grpc::ServerContext* ctx,
                                    grpc::ServerReaderWriter<v1::StepResult, v1::StepRequest>* stream) {
  // One router drives the worker at a time: block ids are that router's.
  std::unique_lock<std::mutex> session(session_mu_, std::try_to_lock);
  if (!session.owns_lock()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "another router is driving this worker");
  }
  v1::StepRequest req;
  while (!ctx->IsCancelled() && stream->Read(&req)) {
    if (!stream->Write(Step(req, [stream](v1::StepRequest* masks) { return stream->Read(masks); }))) break;
  }
  // The router is gone (or moved on): its sequences and their blocks are free.
  std::lock_guard<std::mutex> lock(mu_);
  sequences_.clear();
  sequences_held_->Set(0);
  DropAdapters();
  for (int g = 0; g < kNumCacheGroups; ++g) {
    kv_usage_->Add({{"group", g == kFullGroup ? "full" : "sliding"}}).Set(0);
  }
  return grpc::Status::OK;
}

}  // namespace moeserve::worker
