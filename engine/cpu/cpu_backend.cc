#include "engine/cpu/cpu_backend.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>

#include "engine/cpu/kernels.h"
#include "engine/cpu/ops.h"
#include "engine/forward.h"
#include "engine/fp8.h"
#include "absl/strings/str_cat.h"

namespace moeserve {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Adds the scope's wall time to a phase counter.
class PhaseTimer {
 public:
  explicit PhaseTimer(int64_t& counter) : counter_(counter), start_(NowNs()) {}
  ~PhaseTimer() { counter_ += NowNs() - start_; }

 private:
  int64_t& counter_;
  int64_t start_;
};

}  // namespace

CpuBackend::CpuBackend(std::unique_ptr<ModelWeights> weights, const CpuOptions& options)
    : weights_(std::move(weights)), options_(options), pool_(options.num_threads), kv_(weights_->config, options.kv) {
  const ModelConfig& c = weights_->config;
  inv_freq_ = c.RopeInvFreq(/*round_ramp=*/false);
  mscale_ = c.RopeMscale();
  ggml_yarn_ = c.has_rope_scaling && c.rope_scaling.factor > 1.0;
  const auto [low, high] = c.YarnRamp(/*round_ramp=*/true);
  ggml_ramp_[0] = static_cast<float>(low);
  ggml_ramp_[1] = static_cast<float>(high);
  expert_counts_.assign(c.num_hidden_layers * c.num_local_experts, 0);
}

const char* CpuBackend::PhaseName(int p) {
  static const char* kNames[] = {"embed", "qkv", "attention", "out", "router", "experts", "lm_head", "collectives"};
  return kNames[p];
}

absl::Status CpuBackend::SetLoraAdapter(int slot, std::shared_ptr<const LoraAdapter> adapter) {
  if (slot < 0 || slot >= kMaxLoraSlots) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA slot ", slot, " outside [0, ", kMaxLoraSlots, ")"));
  }
  if (adapter && shard().sharded()) {
    return absl::UnimplementedError("LoRA adapters on tensor/expert-parallel ranks are not supported yet");
  }
  if (adapter && static_cast<int64_t>(adapter->layers.size()) != config().num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("adapter ", adapter->dir, " has ", adapter->layers.size(),
                                                   " layers; the model has ", config().num_hidden_layers));
  }
  if (slot >= static_cast<int>(loras_.size())) loras_.resize(slot + 1);
  loras_[slot] = std::move(adapter);
  while (!loras_.empty() && !loras_.back()) loras_.pop_back();
  lora_ptrs_.clear();
  for (const auto& a : loras_) lora_ptrs_.push_back(a.get());
  return absl::OkStatus();
}

absl::Status CpuBackend::Forward(std::span<const SequenceInput> batch, ForwardOutput* out) {
  if (shard().sharded() && !comm_) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", shard().rank, " of ", shard().world_size,
                                                      ": the group has not met yet (Init)"));
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    const int32_t a = batch[s].adapter;
    if (a >= 0 && (a >= static_cast<int32_t>(loras_.size()) || !loras_[a])) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no LoRA adapter in slot ", a));
    }
  }
  return GptOssForward(config(), shard(), kv_.options(), *this, batch, out);
}

absl::Status CpuBackend::AllReduce(Tensor x) {
  PhaseTimer t(phase_ns_[kCollectives]);
  if (!comm_) return absl::OkStatus();
  // Chunk buffers are contiguous (ld == cols).
  return comm_->AllReduceSum(x.data, x.rows * x.ld, parallel::DataType::kF32);
}

absl::Status CpuBackend::BeginChunk(const StepLayout& step, int r0, int r1) {
  PhaseTimer t(phase_ns_[kEmbed]);
  const ModelConfig& c = config();
  step_ = &step;
  r0_ = r0;
  rows_ = r1 - r0;
  lora_groups_.clear();
  for (int r = 0; r < rows_; ++r) {
    const int32_t slot = step.adapter[r0 + r];
    if (slot < 0) continue;
    auto g = std::find_if(lora_groups_.begin(), lora_groups_.end(),
                          [&](const LoraGroup& x) { return x.adapter == loras_[slot].get(); });
    if (g == lora_groups_.end()) g = lora_groups_.insert(lora_groups_.end(), LoraGroup{loras_[slot].get(), {}});
    g->rows.push_back(r);
  }
  const int64_t widths[] = {c.hidden_size, c.hidden_size, c.q_dim(), c.kv_dim(), c.kv_dim(), c.q_dim(), c.hidden_size};
  for (int b = 0; b < 7; ++b) act_[b].resize(static_cast<size_t>(rows_) * widths[b]);
  // RoPE tables for every row.
  const int half = static_cast<int>(c.head_dim / 2);
  cos_.resize(static_cast<size_t>(rows_) * half);
  sin_.resize(static_cast<size_t>(rows_) * half);
  for (int r = 0; r < rows_; ++r) {
    const int64_t pos = step.pos[r0 + r];
    if (options_.rope_ggml) {
      cpu::RopeCosSinGgml(pos, static_cast<int>(c.head_dim), static_cast<float>(c.rope_theta), ggml_yarn_,
                          static_cast<float>(c.rope_scaling.factor), ggml_ramp_[0], ggml_ramp_[1], &cos_[r * half],
                          &sin_[r * half]);
    } else {
      cpu::RopeCosSin(pos, inv_freq_, mscale_, &cos_[r * half], &sin_[r * half]);
    }
  }
  return absl::OkStatus();
}

Tensor CpuBackend::Buffer(Act which) {
  std::vector<float>& b = act_[static_cast<int>(which)];
  const int64_t cols = rows_ > 0 ? static_cast<int64_t>(b.size()) / rows_ : 0;
  return Tensor{b.data(), rows_, cols, cols};
}

void CpuBackend::Embed(Tensor x) {
  PhaseTimer t(phase_ns_[kEmbed]);
  const Matrix& e = weights_->embed;
  const int64_t v0 = shard().vocab_begin, v1 = shard().vocab_end;
  for (int r = 0; r < x.rows; ++r) {
    const int64_t id = step_->ids[r0_ + r];
    if (id < v0 || id >= v1) {  // another rank's part of the vocabulary
      std::fill(x.data + r * x.ld, x.data + r * x.ld + x.cols, 0.0f);
      continue;
    }
    const size_t off = static_cast<size_t>(id - v0) * x.cols;
    if (e.dtype == DType::kBF16) {
      ConvertToF32(DType::kBF16, static_cast<const uint16_t*>(e.data) + off, x.data + r * x.ld, x.cols);
    } else {
      std::memcpy(x.data + r * x.ld, static_cast<const float*>(e.data) + off, x.cols * sizeof(float));
    }
  }
}

void CpuBackend::RmsNorm(int64_t layer, Norm which, Tensor x, Tensor y) {
  PhaseTimer t(phase_ns_[which == Norm::kAttention ? kQkv : kExperts]);
  const LayerWeights& lw = weights_->layers[layer];
  const float* w = (which == Norm::kAttention ? lw.attn_norm : lw.mlp_norm).data();
  const float eps = static_cast<float>(config().rms_norm_eps);
  for (int r = 0; r < x.rows; ++r) cpu::RmsNorm(x.data + r * x.ld, w, x.cols, eps, y.data + r * y.ld);
}

void CpuBackend::Linear(int64_t layer, Tensor x, std::initializer_list<Projection> outs) {
  const LayerWeights& lw = weights_->layers[layer];
  auto weight = [&](Dense d) -> std::pair<const Matrix*, const float*> {
    switch (d) {
      case Dense::kQ:
        return {&lw.q, lw.q_bias.data()};
      case Dense::kK:
        return {&lw.k, lw.k_bias.data()};
      case Dense::kV:
        return {&lw.v, lw.v_bias.data()};
      case Dense::kO:
        return {&lw.o, lw.o_bias.data()};
    }
    return {nullptr, nullptr};
  };
  PhaseTimer t(phase_ns_[outs.begin()->w == Dense::kO ? kOut : kQkv]);
  if (outs.size() == 1) {
    const auto [w, b] = weight(outs.begin()->w);
    cpu::Linear(pool_, *w, b, x.data, x.ld, static_cast<int>(x.rows), outs.begin()->y.data, outs.begin()->y.ld);
  } else {
    // One parallel region for all projections of the same input (q, k and v).
    std::vector<cpu::LinearOut> many;
    for (const Projection& p : outs) {
      const auto [w, b] = weight(p.w);
      many.push_back({w, b, p.y.data, p.y.ld});
    }
    cpu::LinearMany(pool_, many, x.data, x.ld, static_cast<int>(x.rows));
  }
  for (const Projection& p : outs) {
    static constexpr LoraTarget kTarget[] = {LoraTarget::kQ, LoraTarget::kK, LoraTarget::kV, LoraTarget::kO};
    ApplyLora(layer, kTarget[static_cast<int>(p.w)], x, p.y);
  }
}

void CpuBackend::ApplyLora(int64_t layer, LoraTarget target, Tensor x, Tensor y) {
  for (const LoraGroup& g : lora_groups_) {
    cpu::LoraApply(&pool_, g.adapter->factors(layer, target), 0, x.data, x.ld, g.rows, y.data, y.ld, g.rows);
  }
}

void CpuBackend::Rope(Tensor x, int num_heads) {
  PhaseTimer t(phase_ns_[kAttention]);
  const int hd = static_cast<int>(config().head_dim), half = hd / 2;
  for (int r = 0; r < x.rows; ++r) cpu::ApplyRope(x.data + r * x.ld, num_heads, hd, &cos_[r * half], &sin_[r * half]);
}

namespace {
// E4M3 -> f32 for every byte.
const std::array<float, 256> kE4m3Table = [] {
  std::array<float, 256> t{};
  for (int i = 0; i < 256; ++i) t[i] = E4m3ToF32(static_cast<uint8_t>(i));
  return t;
}();
}  // namespace

void CpuBackend::KvWrite(int64_t layer, Tensor k, Tensor v) {
  PhaseTimer t(phase_ns_[kAttention]);
  const int g = kv_.group_of_layer(layer);
  const int bs = kv_.block_size();
  const int64_t kvd = k.cols;
  for (int r = 0; r < k.rows; ++r) {
    const int64_t slot = step_->slots[g][r0_ + r];
    void* kd = kv_.Row(layer, false, slot / bs, static_cast<int>(slot % bs));
    void* vd = kv_.Row(layer, true, slot / bs, static_cast<int>(slot % bs));
    const float* kr = k.data + r * k.ld;
    const float* vr = v.data + r * v.ld;
    if (kv_.dtype() == KvDtype::kF32) {
      std::memcpy(kd, kr, kvd * sizeof(float));
      std::memcpy(vd, vr, kvd * sizeof(float));
    } else if (kv_.dtype() == KvDtype::kFp8) {
      for (int64_t i = 0; i < kvd; ++i) {
        static_cast<uint8_t*>(kd)[i] = F32ToE4m3(kr[i]);
        static_cast<uint8_t*>(vd)[i] = F32ToE4m3(vr[i]);
      }
    } else {
      for (int64_t i = 0; i < kvd; ++i) {
        static_cast<uint16_t*>(kd)[i] = F32ToBf16(kr[i]);
        static_cast<uint16_t*>(vd)[i] = F32ToBf16(vr[i]);
      }
    }
  }
}

absl::Status CpuBackend::Attention(int64_t layer, Tensor q, Tensor out) {
  PhaseTimer t(phase_ns_[kAttention]);
  const ModelConfig& c = config();
  const int hd = static_cast<int>(c.head_dim);
  const int kvh = static_cast<int>(c.num_key_value_heads);
  const int group = static_cast<int>(c.num_attention_heads / c.num_key_value_heads);
  const bool sliding = c.is_sliding(layer);
  const int cache_group = kv_.group_of_layer(layer);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int bs = kv_.block_size();
  const float* sinks = weights_->layers[layer].sinks.data();
  const size_t elt = static_cast<size_t>(KvDtypeBytes(kv_.dtype()));
  const bool fp8 = kv_.dtype() == KvDtype::kFp8;
  const cpu::Kernels& kern = cpu::ActiveKernels();
  pool_.Run(static_cast<int>(q.rows * kvh), [&](int task) {
    thread_local std::vector<float> scores;
    thread_local std::vector<const void*> k_rows, v_rows;
    thread_local std::vector<float> k_f32, v_f32;  // fp8 rows widened for the f32 kernel
    const int64_t r = task / kvh;
    const int g = task % kvh;
    const int64_t p = step_->pos[r0_ + r];
    const int64_t first = sliding ? std::max<int64_t>(0, p - c.sliding_window + 1) : 0;
    const int64_t n = p - first + 1;
    const int32_t* table = step_->table(cache_group, r0_ + static_cast<int>(r));
    k_rows.resize(n);
    v_rows.resize(n);
    scores.resize(static_cast<size_t>(n) * group + 16);
    for (int64_t j = first; j <= p; ++j) {
      const int32_t block = table[j / bs];
      const int slot = static_cast<int>(j % bs);
      k_rows[j - first] = static_cast<const char*>(kv_.Row(layer, false, block, slot)) + g * hd * elt;
      v_rows[j - first] = static_cast<const char*>(kv_.Row(layer, true, block, slot)) + g * hd * elt;
    }
    if (fp8) {
      k_f32.resize(static_cast<size_t>(n) * hd);
      v_f32.resize(static_cast<size_t>(n) * hd);
      for (int64_t j = 0; j < n; ++j) {
        const uint8_t* kr = static_cast<const uint8_t*>(k_rows[j]);
        const uint8_t* vr = static_cast<const uint8_t*>(v_rows[j]);
        float* kw = &k_f32[j * hd];
        float* vw = &v_f32[j * hd];
        for (int i = 0; i < hd; ++i) {
          kw[i] = kE4m3Table[kr[i]];
          vw[i] = kE4m3Table[vr[i]];
        }
        k_rows[j] = kw;
        v_rows[j] = vw;
      }
    }
    kern.attend(q.data + r * q.ld + g * group * hd, group, hd, k_rows.data(), v_rows.data(), n,
                kv_.dtype() == KvDtype::kBf16,
                sinks + g * group, scale, scores.data(), out.data + r * out.ld + g * group * hd);
  });
  return absl::OkStatus();
}

void CpuBackend::Add(Tensor x, Tensor y) {
  PhaseTimer t(phase_ns_[kOut]);
  for (int64_t r = 0; r < x.rows; ++r) {
    float* xr = x.data + r * x.ld;
    const float* yr = y.data + r * y.ld;
    for (int64_t i = 0; i < x.cols; ++i) xr[i] += yr[i];
  }
}

absl::StatusOr<Routing> CpuBackend::Route(int64_t layer, Tensor h) {
  PhaseTimer t(phase_ns_[kRouter]);
  const ModelConfig& c = config();
  const LayerWeights& lw = weights_->layers[layer];
  const int ne = static_cast<int>(c.num_local_experts), k = static_cast<int>(c.num_experts_per_tok);
  const int rows = static_cast<int>(h.rows);
  // The router is tiny (E x H): one thread, no synchronisation.
  std::vector<float> logits(static_cast<size_t>(rows) * ne);
  cpu::LinearRows(lw.router, lw.router_bias.data(), h.data, h.ld, rows, 0, lw.router.rows, logits.data(), ne);
  ApplyLora(layer, LoraTarget::kRouter, h, Tensor{logits.data(), rows, ne, ne});
  route_idx_.resize(static_cast<size_t>(rows) * k);
  route_weight_.resize(static_cast<size_t>(rows) * k);
  std::vector<int> idx(k);
  for (int r = 0; r < rows; ++r) {
    cpu::TopKSoftmax(logits.data() + static_cast<size_t>(r) * ne, ne, k, idx.data(), &route_weight_[r * k]);
    for (int s = 0; s < k; ++s) {
      route_idx_[r * k + s] = idx[s];
      ++expert_counts_[layer * ne + idx[s]];
    }
  }
  return Routing{route_idx_.data(), route_weight_.data()};
}

void CpuBackend::Experts(int64_t layer, Tensor h, const Routing& routing, Tensor out) {
  PhaseTimer t(phase_ns_[kExperts]);
  const ModelConfig& c = config();
  const LayerWeights& lw = weights_->layers[layer];
  const int64_t hs = c.hidden_size;
  const int k = static_cast<int>(c.num_experts_per_tok);
  const int num_rows = static_cast<int>(h.rows);
  const std::vector<int32_t>& local = shard().local_expert[layer];
  // Pair p = (row p / k, its (p % k)-th expert), as this rank's expert index (-1: another rank's).
  const int pairs = num_rows * k;
  pair_row_.resize(pairs);
  pair_expert_.resize(pairs);
  for (int p = 0; p < pairs; ++p) {
    pair_row_[p] = p / k;
    pair_expert_[p] = local[routing.idx[p]];
  }
  pair_out_.resize(static_cast<size_t>(pairs) * hs);
  cpu::ExpertLora lora;
  if (!lora_groups_.empty()) {
    pair_adapter_.resize(pairs);
    for (int p = 0; p < pairs; ++p) pair_adapter_[p] = step_->adapter[r0_ + p / k];
    lora = {layer, pair_adapter_, lora_ptrs_};
  }
  cpu::ExpertPairs(pool_, lw.gate_up, lw.down, static_cast<float>(c.swiglu_limit), static_cast<float>(c.swiglu_alpha),
                   h.data, h.ld, pair_row_, pair_expert_, pair_out_.data(), hs,
                   lora_groups_.empty() ? nullptr : &lora);
  // out = sum_e w_e y_e, each token's terms added in descending weight order so
  // the result does not depend on which other tokens share the batch.
  pool_.ParallelFor(num_rows, 1, [&](int64_t b, int64_t e) {
    std::vector<std::pair<float, int>> terms;
    for (int64_t r = b; r < e; ++r) {
      terms.clear();
      for (int s = 0; s < k; ++s) {
        if (pair_expert_[r * k + s] >= 0) terms.emplace_back(routing.weight[r * k + s], static_cast<int>(r * k + s));
      }
      std::stable_sort(terms.begin(), terms.end(), [](const auto& p, const auto& q) { return p.first > q.first; });
      float* sum = out.data + static_cast<size_t>(r) * out.ld;
      std::fill(sum, sum + hs, 0.0f);
      for (const auto& [w, p] : terms) {
        const float* y = pair_out_.data() + static_cast<size_t>(p) * hs;
        for (int64_t i = 0; i < hs; ++i) sum[i] += w * y[i];
      }
    }
  });
}

absl::Status CpuBackend::Logits(Tensor x, std::span<const int32_t> rows, std::span<const uint32_t* const> masks,
                                float* logits) {
  RETURN_IF_ERROR(LogitsUnmasked(x, rows, logits));
  for (size_t i = 0; i < masks.size(); ++i) {
    if (masks[i]) ApplyTokenMask(logits + i * config().vocab_size, config().vocab_size, masks[i]);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::LogitsUnmasked(Tensor x, std::span<const int32_t> rows, float* logits) {
  PhaseTimer t(phase_ns_[kLmHead]);
  const ModelConfig& c = config();
  const ModelWeights& w = *weights_;
  const int64_t hs = c.hidden_size;
  std::vector<float> xf(rows.size() * hs);
  for (size_t i = 0; i < rows.size(); ++i) {
    cpu::RmsNorm(x.data + static_cast<size_t>(rows[i]) * x.ld, w.final_norm.data(), hs,
                 static_cast<float>(c.rms_norm_eps), &xf[i * hs]);
  }
  const ShardPlan& p = shard();
  if (!p.sharded()) {
    cpu::Linear(pool_, w.lm_head, nullptr, xf.data(), hs, static_cast<int>(rows.size()), logits, c.vocab_size);
    return absl::OkStatus();
  }
  // This rank's vocabulary range into its slot, then every rank's slots.
  const int64_t n = static_cast<int64_t>(rows.size()), stride = p.vocab_stride;
  gathered_.assign(static_cast<size_t>(p.world_size) * n * stride, 0.0f);
  float* mine = gathered_.data() + static_cast<size_t>(p.rank) * n * stride;
  cpu::Linear(pool_, w.lm_head, nullptr, xf.data(), hs, static_cast<int>(n), mine, stride);
  {
    PhaseTimer tc(phase_ns_[kCollectives]);
    RETURN_IF_ERROR(comm_->AllGather(mine, gathered_.data(), n * stride, parallel::DataType::kF32));
  }
  for (int r = 0; r < p.world_size; ++r) {
    const auto [v0, v1] = ShardPlan::Split(c.vocab_size, p.world_size, r);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(gathered_.data() + (static_cast<size_t>(r) * n + i) * stride, v1 - v0,
                  logits + static_cast<size_t>(i) * c.vocab_size + v0);
    }
  }
  return absl::OkStatus();
}

}  // namespace moeserve
