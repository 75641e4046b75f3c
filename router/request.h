// One generation request, as the router tracks it: the one record per request
// (DESIGN §3). The scheduler owns it from AddRequest to Release; everything
// about the request lives here, so failover and preemption rebuild from it:
//   - what to generate: prompt, output so far, limits, stop tokens, sampling;
//   - scheduling state: status, num_computed, preemptions;
//   - what the worker already holds: whether it knows the sequence and how
//     many block-table entries per cache group it has been sent (the step
//     codec sends running sequences as diffs against these);
//   - prefix caching: the chained hashes of its full blocks and how many of
//     its prompt tokens came from the cache;
//   - structured output: its grammar and the grammar state of its output;
//   - the caller's callbacks and timing.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moeserve/worker/v1/worker.pb.h"
#include "router/adapters.h"
#include "router/block_hash.h"
#include "router/grammar/matcher.h"

namespace moeserve::router {

// Ordered: everything after kPreempted is finished (vLLM v1's convention).
enum class RequestStatus {
  kWaiting,
  kRunning,
  kPreempted,
  kFinishedStopped,  // a stop token or a stop string
  kFinishedLength,   // max_tokens or max_model_len
  kFinishedAborted,  // the client went away or the request was cancelled
  kFinishedError,    // the worker failed
};

inline bool IsFinished(RequestStatus s) { return s > RequestStatus::kPreempted; }

// The OpenAI finish_reason of a finished status ("" while not finished).
inline const char* FinishReason(RequestStatus s) {
  switch (s) {
    case RequestStatus::kFinishedStopped: return "stop";
    case RequestStatus::kFinishedLength: return "length";
    case RequestStatus::kFinishedAborted: return "abort";
    case RequestStatus::kFinishedError: return "error";
    default: return "";
  }
}

// What the caller of a generation hears, on the loop thread of its group.
struct GenerationCallbacks {
  // The request was scheduled for the first time; `cached_tokens` of its
  // prompt came from the prefix cache (OpenAI's usage.prompt_tokens_details.cached_tokens).
  std::function<void(int64_t cached_tokens)> on_scheduled;
  // A sampled token (with its logprob info when requested).
  std::function<void(const worker::v1::SampleOutput&)> on_token;
  // Logprobs of prompt tokens (sampling.prompt_logprobs), a chunk at a time,
  // before the tokens of the same step; a recomputed prompt sends them again.
  std::function<void(const worker::v1::PromptLogprobs&)> on_prompt_logprobs;
  // The request ended: its status (stop, length, abort, error) and a message for errors.
  std::function<void(RequestStatus, const std::string&)> on_finish;
};

constexpr int kNumCacheGroups = 2;  // full attention, sliding window (kv_cache_manager.h)

struct Request {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
  int64_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  worker::v1::SamplingParams sampling;
  // Part of every block hash: requests with different keys (LoRA adapters) never share blocks.
  int64_t cache_key = 0;
  // The LoRA adapter it runs with (null: the base model); held, it stays loaded.
  std::shared_ptr<const Adapter> adapter;
  // Structured output: the reply's grammar and where the output so far left it
  // (advanced by every sampled token; its mask goes with each step that samples).
  std::shared_ptr<const grammar::CompiledGrammar> grammar;
  std::unique_ptr<grammar::GrammarMatcher> matcher;

  RequestStatus status = RequestStatus::kWaiting;
  // Tokens whose K/V the worker holds. Tokens [num_computed, num_tokens()) are still to compute.
  int64_t num_computed = 0;
  int64_t num_preemptions = 0;

  // What the worker holds: it knows the sequence (else the next step sends it
  // whole), and the leading block-table entries per cache group it was sent.
  bool known_to_worker = false;
  std::array<size_t, kNumCacheGroups> blocks_sent = {0, 0};

  // Prefix caching: hashes of the full blocks of the known tokens, in order
  // (extended as tokens arrive), and the prompt tokens found cached when the
  // request was first scheduled (-1 before that).
  std::vector<BlockHash> block_hashes;
  int64_t num_cached_tokens = -1;

  GenerationCallbacks callbacks;
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();

  int64_t num_tokens() const { return static_cast<int64_t>(prompt.size() + output.size()); }
  int32_t token_at(int64_t i) const {
    return i < static_cast<int64_t>(prompt.size()) ? prompt[i] : output[i - prompt.size()];
  }
};

}  // namespace moeserve::router
