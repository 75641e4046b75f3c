// The public gRPC API's request decoding (router/grpc_api.h) on arbitrary
// bytes: a GenerateRequest parsed as the gRPC server would (protobuf wire
// format), mapped onto a generation spec, then validated and rendered by
// Generation::Prepare as the HTTP APIs' requests are (tools: rendered). Any
// input must give a request within the documented limits or an error with a
// 4xx status; never a crash, an exception or unbounded recursion. A first
// byte with its low bit set picks the Detokenize call instead (its ids
// decoded, as the handler does).
#include <cstdint>

#include "google/protobuf/stubs/logging.h"
#include "moeserve/v1/moeserve.pb.h"
#include "router/grpc_api.h"
#include "tests/fuzz/fuzz_request.h"

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
  const ApiContext& ctx = fuzz::RequestContext();
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
  fuzz::CheckPrepared(err, spec);
  return 0;
}
