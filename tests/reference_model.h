// A plain scalar gpt-oss forward pass written from the spec (§2), in double
// precision, with no cache, no blocking and no threads: the independent
// reference the engine is tested against. It reads the checkpoint tensors
// directly (its own MXFP4 decode from §3.3), not the engine's kernels.
#pragma once

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/safetensors.h"

namespace moeserve::testing {

struct RefOptions {
  bool round_yarn = false;  // ggml's floor/ceil of the ramp ends
};

class ReferenceModel {
 public:
  ReferenceModel(const ModelConfig& c, const Checkpoint& ck, RefOptions o = {}) : c_(c), ck_(ck), o_(o) {}

  // Logits at every position of `tokens`: [n][vocab].
  std::vector<std::vector<double>> Forward(const std::vector<int32_t>& tokens) {
    const int n = static_cast<int>(tokens.size());
    const int64_t H = c_.hidden_size, nh = c_.num_attention_heads, nkv = c_.num_key_value_heads, hd = c_.head_dim;
    std::vector<std::vector<double>> x(n);
    for (int t = 0; t < n; ++t) x[t] = Row("model.embed_tokens.weight", tokens[t]);
    for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> q(n), k(n), v(n);
      for (int t = 0; t < n; ++t) {
        auto h = Norm(x[t], Vec(p + "input_layernorm.weight"));
        q[t] = Lin(p + "self_attn.q_proj", h);
        k[t] = Lin(p + "self_attn.k_proj", h);
        v[t] = Lin(p + "self_attn.v_proj", h);
        Rope(q[t], nh, t);
        Rope(k[t], nkv, t);
      }
      const auto sinks = Vec(p + "self_attn.sinks");
      const bool sliding = c_.is_sliding(l);
      for (int t = 0; t < n; ++t) {
        std::vector<double> attn(nh * hd, 0.0);
        for (int64_t h = 0; h < nh; ++h) {
          const int64_t g = h / (nh / nkv);
          const int first = sliding ? std::max<int>(0, t - static_cast<int>(c_.sliding_window) + 1) : 0;
          std::vector<double> s;
          double m = sinks[h];
          for (int j = first; j <= t; ++j) {
            double d = 0;
            for (int64_t i = 0; i < hd; ++i) d += q[t][h * hd + i] * k[j][g * hd + i];
            s.push_back(d / std::sqrt(static_cast<double>(hd)));
            m = std::max(m, s.back());
          }
          double den = std::exp(sinks[h] - m);
          for (double& e : s) den += (e = std::exp(e - m));
          for (int j = first; j <= t; ++j)
            for (int64_t i = 0; i < hd; ++i) attn[h * hd + i] += s[j - first] / den * v[j][g * hd + i];
        }
        auto o = Lin(p + "self_attn.o_proj", attn);
        for (int64_t i = 0; i < H; ++i) x[t][i] += o[i];
        auto h = Norm(x[t], Vec(p + "post_attention_layernorm.weight"));
        auto moe = Moe(p, h);
        for (int64_t i = 0; i < H; ++i) x[t][i] += moe[i];
      }
    }
    std::vector<std::vector<double>> logits(n);
    const auto fn = Vec("model.norm.weight");
    for (int t = 0; t < n; ++t) {
      auto h = Norm(x[t], fn);
      logits[t].resize(c_.vocab_size);
      for (int64_t r = 0; r < c_.vocab_size; ++r) {
        auto w = Row("lm_head.weight", r);
        double d = 0;
        for (int64_t i = 0; i < H; ++i) d += w[i] * h[i];
        logits[t][r] = d;
      }
    }
    return logits;
  }

  int64_t clamped_gates() const { return clamped_gates_; }
  int64_t clamped_ups() const { return clamped_ups_; }

 private:
  static double Elem(const TensorView& t, int64_t i) {
    switch (t.dtype) {
      case DType::kF32: return static_cast<const float*>(t.data)[i];
      case DType::kBF16: {
        uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(t.data)[i]) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
      }
      case DType::kF16: return F16ToF32(static_cast<const uint16_t*>(t.data)[i]);
      case DType::kU8: return static_cast<const uint8_t*>(t.data)[i];
    }
    return 0;
  }
  const TensorView& T(const std::string& name) const { return *ck_.Find(name); }
  std::vector<double> Vec(const std::string& name) const {
    const TensorView& t = T(name);
    std::vector<double> v(t.numel());
    for (int64_t i = 0; i < t.numel(); ++i) v[i] = Elem(t, i);
    return v;
  }
  std::vector<double> Row(const std::string& name, int64_t r) const {
    const TensorView& t = T(name);
    const int64_t cols = t.shape[1];
    std::vector<double> v(cols);
    for (int64_t i = 0; i < cols; ++i) v[i] = Elem(t, r * cols + i);
    return v;
  }
  std::vector<double> Lin(const std::string& prefix, const std::vector<double>& x) const {
    const TensorView& w = T(prefix + ".weight");
    const auto b = Vec(prefix + ".bias");
    const int64_t rows = w.shape[0], cols = w.shape[1];
    std::vector<double> y(rows);
    for (int64_t r = 0; r < rows; ++r) {
      double d = b[r];
      for (int64_t i = 0; i < cols; ++i) d += Elem(w, r * cols + i) * x[i];
      y[r] = d;
    }
    return y;
  }
  std::vector<double> Norm(const std::vector<double>& x, const std::vector<double>& w) const {
    double ss = 0;
    for (double e : x) ss += e * e;
    const double r = 1.0 / std::sqrt(ss / x.size() + c_.rms_norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * w[i];
    return y;
  }
  // YaRN straight from spec §2.3 (double precision throughout), with the
  // correction range as Hugging Face's _compute_yarn_parameters defines it:
  //   low, high = find_correction_dim(beta_fast), find_correction_dim(beta_slow)
  //   if truncate: low, high = floor(low), ceil(high)
  //   return max(low, 0), min(high, dim - 1)        (dim = head_dim; always clamped)
  //   ramp = clamp((i - low) / (high - low), 0, 1)  (high == low: high += 0.001)
  void Rope(std::vector<double>& v, int64_t heads, int pos) const {
    const double d = static_cast<double>(c_.head_dim), base = c_.rope_theta;
    const auto& s = c_.rope_scaling;
    const bool yarn = c_.has_rope_scaling && s.factor > 1.0;
    double low = d / 2 * std::log(s.original_max_position_embeddings / (s.beta_fast * 2 * M_PI)) / std::log(base);
    double high = d / 2 * std::log(s.original_max_position_embeddings / (s.beta_slow * 2 * M_PI)) / std::log(base);
    if (o_.round_yarn) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(0.0, low);
    high = std::min(d - 1, high);
    if (high == low) high += 0.001;
    const double m = yarn ? 0.1 * std::log(s.factor) + 1.0 : 1.0;
    const int64_t half = c_.head_dim / 2;
    for (int64_t i = 0; i < half; ++i) {
      const double f = std::pow(base, 2.0 * i / d);
      double inv = 1.0 / f;
      if (yarn) {
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        inv = (1.0 / (s.factor * f)) * ramp + (1.0 / f) * (1.0 - ramp);
      }
      // The engine computes angles in fp32, as the reference does; so does this.
      const double theta = static_cast<double>(static_cast<float>(pos) * static_cast<float>(inv));
      const double cs = std::cos(theta) * m, sn = std::sin(theta) * m;
      for (int64_t h = 0; h < heads; ++h) {
        double& a = v[h * c_.head_dim + i];
        double& b = v[h * c_.head_dim + i + half];
        const double x1 = a, x2 = b;
        a = x1 * cs - x2 * sn;
        b = x2 * cs + x1 * sn;
      }
    }
  }
  // An experts projection's tensors, looked up once per layer: MXFP4 blocks
  // and scales, or the HF dense layout.
  struct ExpertTensors {
    const TensorView* blocks = nullptr;
    const TensorView* scales = nullptr;
    const TensorView* dense = nullptr;
  };
  ExpertTensors Experts(const std::string& prefix) const {
    ExpertTensors t;
    if ((t.blocks = ck_.Find(prefix + "_blocks")) != nullptr) t.scales = &T(prefix + "_scales");
    else t.dense = &T(prefix);
    return t;
  }
  // Expert weight (out row r, in column i).
  double ExpertW(const ExpertTensors& t, int64_t e, int64_t rows, int64_t cols, int64_t r, int64_t i) const {
    static const double kE2M1[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
    if (t.blocks != nullptr) {
      const int64_t groups = cols / 32, g = i / 32, in_group = i % 32;
      const uint8_t byte = static_cast<const uint8_t*>(t.blocks->data)[((e * rows + r) * groups + g) * 16 + in_group / 2];
      const int code = in_group % 2 == 0 ? (byte & 15) : (byte >> 4);
      const int s = static_cast<const uint8_t*>(t.scales->data)[(e * rows + r) * groups + g];
      return std::ldexp(kE2M1[code], s - 127);
    }
    return Elem(*t.dense, (e * cols + i) * rows + r);
  }
  std::vector<double> Moe(const std::string& p, const std::vector<double>& h) {
    const int64_t E = c_.num_local_experts, H = c_.hidden_size, I = c_.intermediate_size;
    std::vector<double> logits = Lin(p + "mlp.router", h);
    std::vector<int> order(E);
    for (int i = 0; i < E; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    const int k = static_cast<int>(c_.num_experts_per_tok);
    double den = 0;
    for (int s = 0; s < k; ++s) den += std::exp(logits[order[s]] - logits[order[0]]);
    std::vector<double> out(H, 0.0);
    const std::string gu = p + "mlp.experts.gate_up_proj", dn = p + "mlp.experts.down_proj";
    const auto gub = Vec(gu + "_bias"), dnb = Vec(dn + "_bias");
    const ExpertTensors gut = Experts(gu), dnt = Experts(dn);
    for (int s = 0; s < k; ++s) {
      const int e = order[s];
      const double w = std::exp(logits[e] - logits[order[0]]) / den;
      std::vector<double> act(I);
      for (int64_t j = 0; j < I; ++j) {
        double g = gub[e * 2 * I + 2 * j], u = gub[e * 2 * I + 2 * j + 1];
        for (int64_t i = 0; i < H; ++i) {
          g += ExpertW(gut, e, 2 * I, H, 2 * j, i) * h[i];
          u += ExpertW(gut, e, 2 * I, H, 2 * j + 1, i) * h[i];
        }
        const double lim = c_.swiglu_limit;
        if (g > lim) ++clamped_gates_;
        if (u > lim || u < -lim) ++clamped_ups_;
        g = std::min(g, lim);
        u = std::clamp(u, -lim, lim);
        act[j] = g / (1.0 + std::exp(-c_.swiglu_alpha * g)) * (u + 1.0);
      }
      for (int64_t r = 0; r < H; ++r) {
        double y = dnb[e * H + r];
        for (int64_t j = 0; j < I; ++j) y += ExpertW(dnt, e, H, I, r, j) * act[j];
        out[r] += w * y;
      }
    }
    return out;
  }

  const ModelConfig& c_;
  const Checkpoint& ck_;
  RefOptions o_;
  int64_t clamped_gates_ = 0, clamped_ups_ = 0;
};

}  // namespace moeserve::testing
