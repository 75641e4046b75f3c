// OpenAI request decoding as the gateway does it, on arbitrary bytes: the
// nesting check, the JSON parse, then the whole validation of a chat or
// completions request (Completion::Decode: messages and tools rendered,
// sampling, stop strings, logprobs, n, tool_choice). Any input must give a
// request within the documented limits or an OpenAI error with a 4xx status;
// never a crash or an exception. First byte: bit 0 chooses chat or completions.
#include <cmath>
#include <cstdint>
#include <string_view>

#include "router/api.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  using namespace moeserve::router;
  if (size < 1) return 0;
  const bool chat = (data[0] & 1) == 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  if (JsonDepth(body, kMaxJsonDepth + 1) > kMaxJsonDepth) return 0;
  const auto j = ordered_json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return 0;
  static ApiContext ctx = [] {
    ApiContext c;
    c.tokenizer = &fuzz::Tok();
    c.served_model_name = "gpt-oss-20b";
    c.current_date = "2026-12-01";
    c.eos_token_ids = {200002, 199999, 200012};
    return c;
  }();
  constexpr int64_t kMaxModelLen = 4096;
  Completion::Decoded d;
  const auto err = Completion::Decode(&ctx, chat, j, kMaxModelLen, &d);
  if (err) {
    if (err->status < 400 || err->status >= 500 || err->message.empty()) __builtin_trap();
    return 0;
  }
  const RequestLimits& lim = ctx.limits;
  const int64_t vocab = fuzz::Tok().vocab_size();
  for (int32_t id : d.request.prompt) {
    if (id < 0 || id >= vocab) __builtin_trap();
  }
  for (int32_t id : d.request.stop_token_ids) {
    if (id < 0 || id >= vocab) __builtin_trap();
  }
  if (d.n < 1 || d.n > lim.max_n || d.request.max_tokens < 1) __builtin_trap();
  if (static_cast<int>(d.stops.size()) > lim.max_stop) __builtin_trap();
  for (const auto& s : d.stops) {
    if (s.empty()) __builtin_trap();
  }
  const auto& sp = d.request.sampling;
  if (!(sp.temperature() >= 0 && sp.temperature() <= 2) || !(sp.top_p() > 0 && sp.top_p() <= 1) ||
      !(sp.min_p() >= 0 && sp.min_p() <= 1) || sp.top_logprobs() < 0 || sp.top_logprobs() > lim.max_top_logprobs ||
      !std::isfinite(sp.presence_penalty()) || !std::isfinite(sp.frequency_penalty())) {
    __builtin_trap();
  }
  return 0;
}
