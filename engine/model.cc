// The gpt-oss forward pass (spec §2), literal about the math:
//   x = E[token]
//   per layer: h = RMSNorm(x); q,k,v = W h + b; RoPE(q, k); write k,v to the paged
//     cache; attention with per-head sinks (sliding window on sliding layers);
//     x += Wo attn + bo; h = RMSNorm(x); top-4 of (Wr h + br), softmax;
//     x += sum_e w_e (W2_e SwiGLU(W1_e h + b1_e) + b2_e)
//   logits = lm_head RMSNorm(x)
#include "engine/model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/ops.h"

namespace moeserve {

using cpu::Linear;

Model::Model(std::unique_ptr<ModelWeights> weights, const ModelOptions& options)
    : weights_(std::move(weights)),
      options_(options),
      pool_(options.num_threads),
      kv_(weights_->config, options.kv) {
  const ModelConfig& c = weights_->config;
  inv_freq_ = c.RopeInvFreq(/*round_ramp=*/false);
  mscale_ = c.RopeMscale();
  ggml_yarn_ = c.has_rope_scaling && c.rope_scaling.factor > 1.0;
  const auto [low, high] = c.YarnRamp(/*round_ramp=*/true);
  ggml_ramp_[0] = static_cast<float>(low);
  ggml_ramp_[1] = static_cast<float>(high);
  expert_counts_.assign(c.num_hidden_layers * c.num_local_experts, 0);
}

const char* Model::PhaseName(int p) {
  static const char* kNames[] = {"embed", "qkv", "attention", "out", "router", "experts", "lm_head"};
  return kNames[p];
}

namespace {
int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

absl::Status ValidateBatch(const ModelConfig& c, const KvCacheOptions& kv, std::span<const SequenceInput> batch) {
  const int bs = kv.block_size;
  const bool used[kNumCacheGroups] = {KvCache::LayersInGroup(c, kFullGroup) > 0,
                                      KvCache::LayersInGroup(c, kSlidingGroup) > 0};
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    if (in.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no tokens"));
    if (in.start_pos < 0 || in.start_pos + static_cast<int64_t>(in.tokens.size()) > (int64_t{1} << 30)) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": bad start position ", in.start_pos));
    }
    for (int32_t t : in.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": token id ", t, " outside [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t end = in.start_pos + static_cast<int64_t>(in.tokens.size());  // one past the last position
    for (int g = 0; g < kNumCacheGroups; ++g) {
      if (!used[g]) continue;
      int64_t first = 0;
      if (g == kSlidingGroup) first = std::max<int64_t>(0, in.start_pos - c.sliding_window + 1);
      const int64_t b0 = first / bs, b1 = (end - 1) / bs;
      if (static_cast<int64_t>(in.block_tables[g].size()) <= b1) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block table of cache group ", g, " has ",
                                                       in.block_tables[g].size(), " blocks, positions up to ", end - 1,
                                                       " need ", b1 + 1));
      }
      for (int64_t b = b0; b <= b1; ++b) {
        const int32_t id = in.block_tables[g][b];
        if (id < 0 || id >= kv.num_blocks[g]) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block id ", id, " of cache group ", g,
                                                         " outside [0, ", kv.num_blocks[g], ")"));
        }
      }
    }
  }
  return absl::OkStatus();
}

void Model::Attention(int64_t layer, std::span<const SequenceInput> batch, const std::vector<int>& row_seq,
                      const std::vector<int64_t>& row_pos, const float* q, float* out) {
  const ModelConfig& c = config();
  const int hd = static_cast<int>(c.head_dim);
  const int kvh = static_cast<int>(c.num_key_value_heads);
  const int group = static_cast<int>(c.num_attention_heads / c.num_key_value_heads);
  const bool sliding = c.is_sliding(layer);
  const int cache_group = kv_.group_of_layer(layer);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int bs = kv_.block_size();
  const float* sinks = weights_->layers[layer].sinks.data();
  const int64_t num_rows = static_cast<int64_t>(row_seq.size());
  const int64_t qd = c.q_dim();
  const size_t elt = kv_.f32() ? 4 : 2;
  const cpu::Kernels& kern = cpu::ActiveKernels();
  pool_.Run(static_cast<int>(num_rows * kvh), [&](int task) {
    thread_local std::vector<float> scores;
    thread_local std::vector<const void*> k_rows, v_rows;
    const int64_t r = task / kvh;
    const int g = task % kvh;
    const int64_t p = row_pos[r];
    const int64_t first = sliding ? std::max<int64_t>(0, p - c.sliding_window + 1) : 0;
    const int64_t n = p - first + 1;
    const auto table = batch[row_seq[r]].block_tables[cache_group];
    k_rows.resize(n);
    v_rows.resize(n);
    scores.resize(static_cast<size_t>(n) * group + 16);
    for (int64_t j = first; j <= p; ++j) {
      const int32_t block = table[j / bs];
      const int slot = static_cast<int>(j % bs);
      k_rows[j - first] = static_cast<const char*>(kv_.Row(layer, false, block, slot)) + g * hd * elt;
      v_rows[j - first] = static_cast<const char*>(kv_.Row(layer, true, block, slot)) + g * hd * elt;
    }
    kern.attend(q + r * qd + g * group * hd, group, hd, k_rows.data(), v_rows.data(), n, !kv_.f32(),
                sinks + g * group, scale, scores.data(), out + r * qd + g * group * hd);
  });
}

void Model::Moe(const LayerWeights& lw, int64_t layer, const float* h, int num_rows, float* x) {
  const ModelConfig& c = config();
  const int64_t hs = c.hidden_size, inter = c.intermediate_size;
  const int ne = static_cast<int>(c.num_local_experts), k = static_cast<int>(c.num_experts_per_tok);
  const bool mxfp4 = lw.gate_up.mxfp4;

  // The router is tiny (E x H): one thread, no synchronisation.
  std::vector<float> router(static_cast<size_t>(num_rows) * ne);
  const int64_t t_router = NowNs();
  cpu::LinearRows(lw.router, lw.router_bias.data(), h, hs, num_rows, 0, lw.router.rows, router.data(), ne);

  // Group (row, weight) pairs by expert.
  std::vector<std::vector<std::pair<int, float>>> by_expert(ne);
  std::vector<int> idx(k);
  std::vector<float> wt(k);
  for (int r = 0; r < num_rows; ++r) {
    cpu::TopKSoftmax(router.data() + static_cast<size_t>(r) * ne, ne, k, idx.data(), wt.data());
    for (int s = 0; s < k; ++s) {
      by_expert[idx[s]].emplace_back(r, wt[s]);
      ++expert_counts_[layer * ne + idx[s]];
    }
  }
  phase_ns_[kRouter] += NowNs() - t_router;
  phase_ns_[kExperts] -= NowNs() - t_router;  // counted by the caller's lap as experts
  struct Active {
    int expert;
    int offset;  // first row in the gathered buffers
    int count;
  };
  std::vector<Active> active;
  int total = 0;
  for (int e = 0; e < ne; ++e) {
    if (by_expert[e].empty()) continue;
    active.push_back({e, total, static_cast<int>(by_expert[e].size())});
    total += static_cast<int>(by_expert[e].size());
  }
  // Gather inputs (permuted for MXFP4 so nibbles meet contiguous activations).
  std::vector<std::pair<int, float>> gathered(total);  // (token row, weight) of each gathered row
  for (const Active& a : active) std::copy(by_expert[a.expert].begin(), by_expert[a.expert].end(), &gathered[a.offset]);
  std::vector<float> xin(static_cast<size_t>(total) * hs);
  pool_.ParallelFor(total, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* src = h + static_cast<size_t>(gathered[r].first) * hs;
      float* dst = xin.data() + static_cast<size_t>(r) * hs;
      if (mxfp4) cpu::PermuteForMxfp4(src, dst, hs);
      else std::memcpy(dst, src, hs * sizeof(float));
    }
  });
  // Runs `m` for every active expert, split into row chunks, in one parallel region.
  auto run_experts = [&](const ExpertMatrix& m, const float* in, int64_t ld_in, float* outp, int64_t ld_out) {
    constexpr int64_t kChunk = 128;
    const int64_t chunks = (m.rows + kChunk - 1) / kChunk;
    pool_.Run(static_cast<int>(active.size() * chunks), [&](int task) {
      const Active& a = active[task / chunks];
      const int64_t b = (task % chunks) * kChunk, e = std::min(m.rows, b + kChunk);
      cpu::ExpertGemm(m, a.expert, in + static_cast<size_t>(a.offset) * ld_in, ld_in, a.count, b, e,
                      outp + static_cast<size_t>(a.offset) * ld_out, ld_out);
    });
  };
  std::vector<float> gate_up(static_cast<size_t>(total) * 2 * inter);
  run_experts(lw.gate_up, xin.data(), hs, gate_up.data(), 2 * inter);

  std::vector<float> act(static_cast<size_t>(total) * inter);
  const float limit = static_cast<float>(c.swiglu_limit), alpha = static_cast<float>(c.swiglu_alpha);
  pool_.ParallelFor(total, 1, [&](int64_t b, int64_t e) {
    std::vector<float> tmp(inter);
    for (int64_t r = b; r < e; ++r) {
      float* dst = act.data() + static_cast<size_t>(r) * inter;
      const float* src = gate_up.data() + static_cast<size_t>(r) * 2 * inter;
      if (mxfp4) {
        cpu::SwiGlu(src, inter, limit, alpha, tmp.data());
        cpu::PermuteForMxfp4(tmp.data(), dst, inter);
      } else {
        cpu::SwiGlu(src, inter, limit, alpha, dst);
      }
    }
  });
  std::vector<float> down(static_cast<size_t>(total) * hs);
  run_experts(lw.down, act.data(), inter, down.data(), hs);

  // x += sum_e w_e y_e, each token's terms added in descending weight order so
  // the result does not depend on which other tokens share the batch.
  std::vector<std::vector<std::pair<float, int>>> contrib(num_rows);  // (weight, gathered row) per token
  for (int r = 0; r < total; ++r) contrib[gathered[r].first].emplace_back(gathered[r].second, r);
  pool_.ParallelFor(num_rows, 1, [&](int64_t b, int64_t e) {
    std::vector<float> sum(hs);
    for (int64_t t = b; t < e; ++t) {
      auto& terms = contrib[t];
      std::sort(terms.begin(), terms.end(), [](const auto& p, const auto& q) { return p.first > q.first; });
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (const auto& [w, row] : terms) {
        const float* y = down.data() + static_cast<size_t>(row) * hs;
        for (int64_t i = 0; i < hs; ++i) sum[i] += w * y[i];
      }
      float* xr = x + static_cast<size_t>(t) * hs;
      for (int64_t i = 0; i < hs; ++i) xr[i] += sum[i];
    }
  });
}

absl::Status Model::Forward(std::span<const SequenceInput> batch, ForwardOutput* out) {
  RETURN_IF_ERROR(ValidateBatch(config(), kv_.options(), batch));
  const ModelConfig& c = config();
  const ModelWeights& w = *weights_;
  const int64_t hs = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), hd = c.head_dim;
  const int bs = kv_.block_size();
  const float eps = static_cast<float>(c.rms_norm_eps);

  std::vector<int> row_seq;
  std::vector<int64_t> row_pos;
  for (size_t s = 0; s < batch.size(); ++s) {
    for (size_t i = 0; i < batch[s].tokens.size(); ++i) {
      row_seq.push_back(static_cast<int>(s));
      row_pos.push_back(batch[s].start_pos + static_cast<int64_t>(i));
    }
  }
  const int n = static_cast<int>(row_seq.size());

  int64_t t_mark = NowNs();
  auto lap = [&](Phase p) {
    const int64_t t = NowNs();
    phase_ns_[p] += t - t_mark;
    t_mark = t;
  };
  // Embedding.
  std::vector<float> x(static_cast<size_t>(n) * hs);
  {
    int r = 0;
    for (const SequenceInput& in : batch) {
      for (int32_t t : in.tokens) {
        const size_t off = static_cast<size_t>(t) * hs;
        if (w.embed.dtype == DType::kBF16) {
          ConvertToF32(DType::kBF16, static_cast<const uint16_t*>(w.embed.data) + off, x.data() + r * hs, hs);
        } else {
          std::memcpy(x.data() + r * hs, static_cast<const float*>(w.embed.data) + off, hs * sizeof(float));
        }
        ++r;
      }
    }
  }

  // RoPE tables for every row.
  const int half = static_cast<int>(hd / 2);
  std::vector<float> cosv(static_cast<size_t>(n) * half), sinv(static_cast<size_t>(n) * half);
  for (int r = 0; r < n; ++r) {
    if (options_.rope_ggml) {
      cpu::RopeCosSinGgml(row_pos[r], static_cast<int>(hd), static_cast<float>(c.rope_theta), ggml_yarn_,
                          static_cast<float>(c.rope_scaling.factor), ggml_ramp_[0], ggml_ramp_[1], &cosv[r * half],
                          &sinv[r * half]);
    } else {
      cpu::RopeCosSin(row_pos[r], inv_freq_, mscale_, &cosv[r * half], &sinv[r * half]);
    }
  }

  std::vector<float> h(static_cast<size_t>(n) * hs), q(static_cast<size_t>(n) * qd), k(static_cast<size_t>(n) * kvd),
      v(static_cast<size_t>(n) * kvd), attn(static_cast<size_t>(n) * qd), o(static_cast<size_t>(n) * hs);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    lap(kEmbed);
    for (int r = 0; r < n; ++r) cpu::RmsNorm(&x[r * hs], lw.attn_norm.data(), hs, eps, &h[r * hs]);
    cpu::LinearMany(pool_, {{&lw.q, lw.q_bias.data(), q.data(), qd},
                            {&lw.k, lw.k_bias.data(), k.data(), kvd},
                            {&lw.v, lw.v_bias.data(), v.data(), kvd}},
                    h.data(), hs, n);
    lap(kQkv);
    const int g = kv_.group_of_layer(l);
    for (int r = 0; r < n; ++r) {
      cpu::ApplyRope(&q[r * qd], static_cast<int>(c.num_attention_heads), static_cast<int>(hd), &cosv[r * half],
                     &sinv[r * half]);
      cpu::ApplyRope(&k[r * kvd], static_cast<int>(c.num_key_value_heads), static_cast<int>(hd), &cosv[r * half],
                     &sinv[r * half]);
      const int64_t p = row_pos[r];
      const int32_t block = batch[row_seq[r]].block_tables[g][p / bs];
      void* kd = kv_.Row(l, false, block, static_cast<int>(p % bs));
      void* vd = kv_.Row(l, true, block, static_cast<int>(p % bs));
      if (kv_.f32()) {
        std::memcpy(kd, &k[r * kvd], kvd * sizeof(float));
        std::memcpy(vd, &v[r * kvd], kvd * sizeof(float));
      } else {
        for (int64_t i = 0; i < kvd; ++i) {
          static_cast<uint16_t*>(kd)[i] = F32ToBf16(k[r * kvd + i]);
          static_cast<uint16_t*>(vd)[i] = F32ToBf16(v[r * kvd + i]);
        }
      }
    }
    Attention(l, batch, row_seq, row_pos, q.data(), attn.data());
    lap(kAttention);
    Linear(pool_, lw.o, lw.o_bias.data(), attn.data(), qd, n, o.data(), hs);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    lap(kOut);

    for (int r = 0; r < n; ++r) cpu::RmsNorm(&x[r * hs], lw.mlp_norm.data(), hs, eps, &h[r * hs]);
    Moe(lw, l, h.data(), n, x.data());
    lap(kExperts);
  }

  // Final norm and lm_head for the rows that return logits.
  out->vocab_size = c.vocab_size;
  out->first_row.clear();
  out->num_rows.clear();
  std::vector<float> xf;
  int r0 = 0, rows = 0;
  for (const SequenceInput& in : batch) {
    const int cnt = static_cast<int>(in.tokens.size());
    const int want = in.all_logits ? cnt : 1;
    out->first_row.push_back(rows);
    out->num_rows.push_back(want);
    for (int i = cnt - want; i < cnt; ++i) {
      xf.resize(static_cast<size_t>(rows + 1) * hs);
      cpu::RmsNorm(&x[static_cast<size_t>(r0 + i) * hs], w.final_norm.data(), hs, eps, &xf[static_cast<size_t>(rows) * hs]);
      ++rows;
    }
    r0 += cnt;
  }
  out->logits.resize(static_cast<size_t>(rows) * c.vocab_size);
  Linear(pool_, w.lm_head, nullptr, xf.data(), hs, rows, out->logits.data(), c.vocab_size);
  lap(kLmHead);
  return absl::OkStatus();
}

}  // namespace moeserve
