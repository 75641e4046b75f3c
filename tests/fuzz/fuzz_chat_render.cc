// OpenAI chat requests (messages, tools, reasoning effort) as JSON into the
// harmony renderer: any JSON must render or give a clear error, and never
// crash. Bytes that are not JSON exercise the parser the gateway uses.
#include <cstdint>
#include <string>

#include "nlohmann/json.hpp"
#include "router/text/chat.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  const auto j = nlohmann::ordered_json::parse(data, data + size, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return 0;
  text::ChatRenderOptions o;
  if (j.contains("reasoning_effort") && j["reasoning_effort"].is_string()) {
    o.reasoning_effort = j["reasoning_effort"].get<std::string>();
  }
  const nlohmann::ordered_json none;
  auto ids = text::RenderChatRequest(fuzz::Tok(), j.contains("messages") ? j["messages"] : none,
                                     j.contains("tools") ? j["tools"] : none, o);
  if (ids.ok()) {
    for (int32_t id : *ids) {
      if (id < 0 || id >= 201088) __builtin_trap();
    }
  }
  return 0;
}
