// Request decoding as the gateway does it, on arbitrary bytes: the nesting
// check, the JSON parse, the API's decoder (OpenAI chat completions or
// completions, Responses, Ollama chat or generate), then the whole
// validation of the generation spec (Generation::Prepare: messages and tools
// rendered, sampling, stop strings, logprobs, n, tool_choice). Any input must
// give a request within the documented limits or an error with a 4xx status;
// never a crash or an exception. First byte: its low 3 bits choose the API.
#include <cmath>
#include <cstdint>
#include <string_view>

#include "router/ollama_api.h"
#include "router/openai_api.h"
#include "router/responses_api.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  using namespace moeserve::router;
  if (size < 1) return 0;
  const int api = data[0] & 7;  // 0 chat, 1 completions, 2 responses, 3 ollama chat, 4 ollama generate; 5-7 chat
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
  static ResponseStore store(16, std::chrono::seconds(60));
  GenerationSpec spec;
  std::optional<ApiError> err;
  if (api == 1 || api == 0 || api > 4) {
    OpenAiOptions o;
    err = DecodeOpenAi(ctx, api != 1, j, &spec, &o);
  } else if (api == 2) {
    ResponsesRequest r;
    err = DecodeResponses(ctx, j, &store, &spec, &r);
  } else {
    OllamaOptions o;
    err = DecodeOllama(ctx, api == 3, j, &spec, &o);
    if (!err && o.load_only) return 0;
  }
  Generation::Prepared d;
  if (!err) err = Generation::Prepare(ctx, spec, kMaxModelLen, &d);
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
  if (spec.n < 1 || spec.n > lim.max_n || d.request.max_tokens < 1) __builtin_trap();
  if (static_cast<int>(spec.stops.size()) > lim.max_stop) __builtin_trap();
  for (const auto& s : spec.stops) {
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
