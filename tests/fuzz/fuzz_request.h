// Shared by the request-decoding fuzz targets (fuzz_openai_request,
// fuzz_grpc_request): the API context they decode against, and the checks a
// decoded and prepared request must pass.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include "router/generation.h"
#include "tests/fuzz/fuzz_util.h"

namespace moeserve::fuzz {

// The served model's context, with no backend, adapters or grammar cache.
inline router::ApiContext& RequestContext() {
  static router::ApiContext ctx = [] {
    router::ApiContext c;
    c.tokenizer = &Tok();
    c.served_model_name = "gpt-oss-20b";
    c.current_date = "2026-12-01";
    c.eos_token_ids = {200002, 199999, 200012};
    return c;
  }();
  return ctx;
}
inline constexpr int64_t kMaxModelLen = 4096;

// Prepares a decoded spec (unless decoding failed). An error must be a 4xx
// with a message; a prepared request must lie inside the documented limits
// (docs/limits.md). Traps otherwise.
inline void CheckPrepared(std::optional<router::ApiError> err, const router::GenerationSpec& spec) {
  using namespace moeserve::router;
  const ApiContext& ctx = RequestContext();
  Generation::Prepared d;
  if (!err) err = Generation::Prepare(ctx, spec, kMaxModelLen, &d);
  if (err) {
    if (err->status < 400 || err->status >= 500 || err->message.empty()) __builtin_trap();
    return;
  }
  const RequestLimits& lim = ctx.limits;
  const int64_t vocab = Tok().vocab_size();
  if (d.request.prompt.empty()) __builtin_trap();
  for (int32_t id : d.request.prompt) {
    if (id < 0 || id >= vocab) __builtin_trap();
  }
  for (int32_t id : d.request.stop_token_ids) {
    if (id < 0 || id >= vocab) __builtin_trap();
  }
  if (spec.n < 1 || spec.n > lim.max_n || d.request.max_tokens < 1) __builtin_trap();
  if (static_cast<int>(spec.stops.size()) > lim.max_stop) __builtin_trap();
  for (const auto& s : spec.stops) {
    if (s.empty()) __builtin_trap();
  }
  const auto& sp = d.request.sampling;
  if (!(sp.temperature() >= 0 && sp.temperature() <= 2) || !(sp.top_p() > 0 && sp.top_p() <= 1) ||
      !(sp.min_p() >= 0 && sp.min_p() <= 1) || sp.top_k() < 0 || sp.top_logprobs() < 0 ||
      sp.top_logprobs() > lim.max_top_logprobs || !std::isfinite(sp.presence_penalty()) ||
      !std::isfinite(sp.frequency_penalty()) || !std::isfinite(sp.repetition_penalty())) {
    __builtin_trap();
  }
  for (const auto& [t, b] : sp.logit_bias()) {
    if (t < 0 || t >= vocab || !(b >= -100 && b <= 100)) __builtin_trap();
  }
}

}  // namespace moeserve::fuzz
