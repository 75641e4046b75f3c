// OpenAI chat completions and completions over the generation core: request
// bodies decoded into a GenerationSpec, events encoded as OpenAI's chunks
// (SSE, "data: [DONE]" last) or one response object.
#pragma once

#include <memory>
#include <optional>

#include "router/codec.h"
#include "router/generation.h"

namespace moeserve::router {

// What the encoder needs from a chat completions / completions request
// beyond the generation itself.
struct OpenAiOptions {
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  bool return_token_ids = false;  // vLLM's extension
  bool echo = false;              // completions: the prompt text comes first
  std::string echo_text;
};

// Decodes a /v1/chat/completions (`chat`) or /v1/completions body. Every JSON
// type error is a 400 naming the cause, never an exception.
std::optional<ApiError> DecodeOpenAi(const ApiContext& ctx, bool chat, const ordered_json& body, GenerationSpec* spec,
                                     OpenAiOptions* options);

std::unique_ptr<HttpEncoder> MakeOpenAiEncoder(const ApiContext& ctx, bool chat, const OpenAiOptions& options);

// "chatcmpl-N" / "cmpl-N": response ids unique within the process.
std::string NextResponseId(const char* prefix);

// One OpenAI logprob entry: {token, logprob, bytes, top_logprobs}.
ordered_json LogprobJson(const text::Tokenizer& tok, const TokenLogprob& lp);
// OpenAI's usage object (with cached and reasoning token details).
ordered_json UsageJson(const GenerationUsage& u);

}  // namespace moeserve::router
