// Request decoding as the gateway does it, on arbitrary bytes: the nesting
// check, the JSON parse, the API's decoder (OpenAI chat completions or
// completions, Responses, Ollama chat or generate), then the whole
// validation of the generation spec (Generation::Prepare: messages and tools
// rendered, sampling, stop strings, logprobs, n, tool_choice). Any input must
// give a request within the documented limits or an error with a 4xx status;
// never a crash or an exception. First byte: its low 3 bits choose the API.
#include <cstdint>
#include <string_view>

#include "router/ollama_api.h"
#include "router/openai_api.h"
#include "router/responses_api.h"
#include "tests/fuzz/fuzz_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  using namespace moeserve::router;
  if (size < 1) return 0;
  const int api = data[0] & 7;  // 0 chat, 1 completions, 2 responses, 3 ollama chat, 4 ollama generate; 5-7 chat
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  if (JsonDepth(body, kMaxJsonDepth + 1) > kMaxJsonDepth) return 0;
  const auto j = ordered_json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return 0;
  const ApiContext& ctx = fuzz::RequestContext();
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
  fuzz::CheckPrepared(err, spec);
  return 0;
}
