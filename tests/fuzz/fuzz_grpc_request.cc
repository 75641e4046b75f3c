// The public gRPC API's request decoding (router/grpc_api.h) on arbitrary
// bytes: a GenerateRequest parsed as the gRPC server would (protobuf wire
// format), mapped onto a generation spec, then validated and rendered by
// Generation::Prepare as the HTTP APIs' requests are (tools: rendered). Any
// input must give a request within the documented limits or an error with a
// 4xx status; never a crash, an exception or unbounded recursion. A first
// byte with its low bit set picks the Detokenize call instead (its ids
// decoded, as the handler does).
#include <cmath>
#include <cstdint>

#include "google/protobuf/stubs/logging.h"
#include "moeserve/v1/moeserve.pb.h"
#include "router/grpc_api.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  using namespace moeserve::router;
  if (size < 1) return 0;
  // Parse failures (invalid UTF-8 in a string field) are answered, not logged.
  static const bool quiet = (google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int,
                                                                const std::string&) {}),
                             true);
  (void)quiet;
  const text::Tokenizer& tok = fuzz::Tok();
  if (data[0] & 1) {
    v1::DetokenizeRequest d;
    if (!d.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    auto t = tok.Decode(std::vector<int32_t>(d.ids().begin(), d.ids().end()));
    if (t.ok()) (void)text::SanitizeUtf8(*t);
    return 0;
  }
  v1::GenerateRequest r;
  if (!r.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
  static ApiContext ctx = [] {
    ApiContext c;
    c.tokenizer = &fuzz::Tok();
    c.served_model_name = "gpt-oss-20b";
    c.current_date = "2026-12-01";
    c.eos_token_ids = {200002, 199999, 200012};
    return c;
  }();
  constexpr int64_t kMaxModelLen = 4096;
  GenerationSpec spec;
  std::optional<ApiError> err = GenerateRequestToSpec(ctx, r, &spec);
  if (!err && spec.chat) {
    // Prepare refuses tools here (no grammar cache: compiling a reply grammar
    // over the whole vocabulary takes too long per input; fuzz_json_schema
    // covers the compiler), so render them as Prepare would with one.
    text::ChatRenderOptions o;
    o.current_date = ctx.current_date;
    o.reasoning_effort = spec.reasoning_effort;
    auto ids = text::RenderChat(tok, spec.messages, spec.tools, o);
    if (ids.ok()) {
      for (int32_t id : *ids) {
        if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
      }
    }
  }
  Generation::Prepared d;
  if (!err) err = Generation::Prepare(ctx, spec, kMaxModelLen, &d);
  if (err) {
    if (err->status < 400 || err->status >= 500 || err->message.empty()) __builtin_trap();
    return 0;
  }
  const RequestLimits& lim = ctx.limits;
  const int64_t vocab = tok.vocab_size();
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
  return 0;
}
