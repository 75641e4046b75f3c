#include "engine/sampler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace moeserve {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || temperature > 100.0f) return absl::InvalidArgumentError("temperature must be in [0, 100]");
  if (!(top_p > 0.0f && top_p <= 1.0f)) return absl::InvalidArgumentError("top_p must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return absl::InvalidArgumentError("min_p must be in [0, 1]");
  if (!(repetition_penalty > 0.0f) || repetition_penalty > 100.0f) {
    return absl::InvalidArgumentError("repetition_penalty must be in (0, 100]");
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) return absl::InvalidArgumentError("presence_penalty must be in [-2, 2]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) return absl::InvalidArgumentError("frequency_penalty must be in [-2, 2]");
  if (logprobs > 20) return absl::InvalidArgumentError("logprobs must be at most 20");
  for (const auto& [t, b] : logit_bias) {
    if (t < 0 || !(b >= -100.0f && b <= 100.0f)) {
      return absl::InvalidArgumentError("logit_bias: token ids must be non-negative and biases in [-100, 100]");
    }
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params, std::vector<int32_t> prompt_tokens)
    : params_(params), prompt_(std::move(prompt_tokens)) {
  uint64_t s = params.has_seed ? params.seed
                               : static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  for (auto& w : state_) w = SplitMix64(s);
}

void Sampler::AddOutputHistory(const std::vector<int32_t>& tokens) {
  for (int32_t t : tokens) {
    output_.push_back(t);
    ++output_counts_[t];
  }
}

double Sampler::NextUniform() {
  // xoshiro256**
  const uint64_t result = Rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = Rotl(state_[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

SampleResult TokenLogprobs(const float* raw, int64_t vocab, int32_t token, int top) {
  SampleResult res;
  res.token = token;
  // Raw log-softmax.
  double raw_max = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) raw_max = std::max<double>(raw_max, raw[i]);
  double raw_sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) raw_sum += std::exp(static_cast<double>(raw[i]) - raw_max);
  const double raw_lse = raw_max + std::log(raw_sum);
  res.logprob = static_cast<float>(raw[token] - raw_lse);
  if (top > 0) {
    std::vector<int32_t> ids(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    const int n = static_cast<int>(std::min<int64_t>(top, vocab));
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                      [&](int32_t a, int32_t b) { return raw[a] > raw[b] || (raw[a] == raw[b] && a < b); });
    for (int i = 0; i < n; ++i) res.top.push_back({ids[i], static_cast<float>(raw[ids[i]] - raw_lse)});
  }
  return res;
}

SampleResult Sampler::Sample(const float* raw, int64_t vocab) {
  SampleResult res;
  const SamplingParams& p = params_;

  std::vector<float> logits(raw, raw + vocab);
  // Penalties.
  if (p.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(prompt_.begin(), prompt_.end());
    seen.insert(output_.begin(), output_.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= vocab) continue;
      logits[t] = logits[t] > 0 ? logits[t] / p.repetition_penalty : logits[t] * p.repetition_penalty;
    }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    for (const auto& [t, n] : output_counts_) {
      if (t < 0 || t >= vocab) continue;
      logits[t] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
    }
  }
  for (const auto& [t, b] : p.logit_bias) {
    if (t >= 0 && t < vocab) logits[t] += b;
  }

  int32_t chosen;
  if (p.temperature == 0.0f || p.top_k == 1) {
    chosen = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  } else {
    // Candidates by descending logit. Without top-k, tokens more than 40 nats
    // below the best carry < e^-40 each and are dropped before sorting.
    const float best = *std::max_element(logits.begin(), logits.end());
    std::vector<int32_t> cand;
    for (int64_t i = 0; i < vocab; ++i) {
      if ((logits[i] - best) / p.temperature > -40.0f) cand.push_back(static_cast<int32_t>(i));
    }
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    // Order matters only to top-k, top-p and min-p: plain temperature
    // sampling draws over the candidates in id order (no sort of a flat
    // distribution's whole vocabulary).
    if (p.top_k > 0 && static_cast<size_t>(p.top_k) < cand.size()) {
      std::partial_sort(cand.begin(), cand.begin() + p.top_k, cand.end(), by_logit);
      cand.resize(p.top_k);
    } else if (p.top_p < 1.0f || p.min_p > 0.0f) {
      std::sort(cand.begin(), cand.end(), by_logit);
    }
    std::vector<double> prob(cand.size());
    double sum = 0.0;
    for (size_t i = 0; i < cand.size(); ++i) sum += prob[i] = std::exp((logits[cand[i]] - best) / p.temperature);
    for (double& x : prob) x /= sum;
    size_t keep = cand.size();
    if (p.top_p < 1.0f) {
      double cum = 0.0;
      for (size_t i = 0; i < cand.size(); ++i) {
        cum += prob[i];
        if (cum >= p.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    if (p.min_p > 0.0f) {
      const double floor = p.min_p * prob[0];
      size_t i = 1;
      while (i < keep && prob[i] >= floor) ++i;
      keep = i;
    }
    double kept = 0.0;
    for (size_t i = 0; i < keep; ++i) kept += prob[i];
    const double u = NextUniform() * kept;
    double cum = 0.0;
    chosen = cand[keep - 1];
    for (size_t i = 0; i < keep; ++i) {
      cum += prob[i];
      if (u < cum) {
        chosen = cand[i];
        break;
      }
    }
  }

  res.token = chosen;
  if (p.logprobs >= 0) {
    SampleResult lp = TokenLogprobs(raw, vocab, chosen, p.logprobs);
    res.logprob = lp.logprob;
    res.top = std::move(lp.top);
  }
  res.stop = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), chosen) != p.stop_token_ids.end();
  output_.push_back(chosen);
  ++output_counts_[chosen];
  return res;
}

}  // namespace moeserve
