// Ollama's API over the generation core, so that Ollama's clients (its
// JavaScript and Python libraries, Open WebUI, LangChain's ChatOllama) work
// unchanged: /api/chat and /api/generate (NDJSON streaming by default, the
// final object with done_reason, token counts and durations in nanoseconds),
// /api/tags, /api/show, /api/ps, /api/version; /api/embed says the model has
// no embeddings; the routes that manage models answer 501. Errors are
// {"error": "..."} with Ollama's status codes. docs/api.md has every field.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "router/codec.h"
#include "router/generation.h"

namespace moeserve::router {

struct OllamaOptions {
  bool chat = true;           // /api/chat (message objects) or /api/generate (response text)
  bool stream = true;         // Ollama streams unless "stream": false
  bool show_thinking = true;  // "think": false hides the reasoning
  bool load_only = false;     // no messages / empty prompt: Ollama's "load the model" request
  std::string model;          // the name the client asked for, echoed back
};

// Decodes an /api/chat (`chat`) or /api/generate body.
std::optional<ApiError> DecodeOllama(const ApiContext& ctx, bool chat, const ordered_json& body, GenerationSpec* spec,
                                     OllamaOptions* options);

std::unique_ptr<HttpEncoder> MakeOllamaEncoder(const ApiContext& ctx, const OllamaOptions& options);

// The reply to a load-only request (OllamaOptions::load_only).
std::string OllamaLoadReply(const ApiContext& ctx, const OllamaOptions& options);

// The routes that are not generation: /api/tags, /api/show, /api/ps,
// /api/version, /api/embed(dings) and the model-management ones. nullopt
// when `path` is none of them. `get` says the method is GET (else POST/DELETE).
struct HttpReply {
  int status = 200;
  std::string body;
};
std::optional<HttpReply> OllamaInfoRoute(const ApiContext& ctx, const std::string& method, const std::string& path,
                                         const std::string& body);

// Whether `name` names the served model the way Ollama clients write it
// ("gpt-oss", "gpt-oss:latest").
bool IsServedModel(const ApiContext& ctx, const std::string& name);
// "" for the served model (name or name:latest), an adapter's name for a LoRA
// adapter (with or without :latest), nothing for an unknown model.
std::optional<std::string> ResolveOllamaModel(const ApiContext& ctx, const std::string& name);

}  // namespace moeserve::router
