// One generation request as the scheduler tracks it.
#pragma once

#include <cstdint>
#include <vector>

namespace moeserve::router {

// Ordered: everything after kPreempted is finished (vLLM v1's convention).
enum class RequestStatus {
  kWaiting,
  kRunning,
  kPreempted,
  kFinishedStopped,  // a stop token
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

struct Request {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
  int64_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  RequestStatus status = RequestStatus::kWaiting;
  // Tokens whose K/V the worker holds. Tokens [num_computed, num_tokens()) are still to compute.
  int64_t num_computed = 0;
  int64_t num_preemptions = 0;

  int64_t num_tokens() const { return static_cast<int64_t>(prompt.size() + output.size()); }
  int32_t token_at(int64_t i) const {
    return i < static_cast<int64_t>(prompt.size()) ? prompt[i] : output[i - prompt.size()];
  }
};

}  // namespace moeserve::router
