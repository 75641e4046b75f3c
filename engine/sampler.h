// Token sampling from logits: greedy, temperature, top-k, top-p, min-p,
// repetition / presence / frequency penalties, logit bias, a per-request
// seed, logprobs.
//
// The pipeline follows vLLM's order: penalties -> logit bias -> temperature -> top-k ->
// top-p -> min-p -> draw. Logprobs are of the raw model distribution
// (log-softmax of the logits before any of the above), as vLLM and OpenAI
// report them. Given the same seed and inputs the draws are identical on every
// platform (own PRNG, no std distributions).
//
// Thread-safety: a Sampler is per sequence; distinct sequences may sample
// concurrently.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/status.h"

namespace moeserve {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  int top_k = 0;             // 0 or < 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;  // HF-style, over prompt and output tokens
  float presence_penalty = 0.0f;    // OpenAI-style, over output tokens
  float frequency_penalty = 0.0f;   // OpenAI-style, over output tokens
  uint64_t seed = 0;
  bool has_seed = false;  // without a seed the sampler seeds itself from the clock
  int logprobs = -1;      // -1: none; 0: only the sampled token; N: plus top N
  std::vector<int32_t> stop_token_ids;
  // Added to the logits after the penalties (OpenAI's logit_bias): -100 bans
  // a token, +100 all but forces it.
  std::vector<std::pair<int32_t, float>> logit_bias;

  absl::Status Validate() const;
};

struct TokenLogprob {
  int32_t token;
  float logprob;
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;               // of the sampled token (if logprobs >= 0)
  std::vector<TokenLogprob> top;      // top N (if logprobs > 0), best first
  bool stop = false;                  // the token is one of stop_token_ids
};

// The raw logprob (log-softmax of `logits` [vocab], nothing applied) of
// `token`, and the `top` most likely tokens (best first, ties to the lower id):
// what logprobs report, for sampled and prompt tokens.
SampleResult TokenLogprobs(const float* logits, int64_t vocab, int32_t token, int top);

class Sampler {
 public:
  Sampler(const SamplingParams& params, std::vector<int32_t> prompt_tokens);

  // Records tokens generated earlier (a sequence recomputed after preemption)
  // so penalties see them.
  void AddOutputHistory(const std::vector<int32_t>& tokens);
  // Samples the next token from `logits` [vocab] and records it as output.
  SampleResult Sample(const float* logits, int64_t vocab);
  const SamplingParams& params() const { return params_; }
  const std::vector<int32_t>& output_tokens() const { return output_; }

 private:
  double NextUniform();  // [0, 1)

  SamplingParams params_;
  uint64_t state_[4];
  std::vector<int32_t> prompt_, output_;
  std::unordered_map<int32_t, int> output_counts_;
};

}  // namespace moeserve
