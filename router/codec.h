// The encoding half of an HTTP API over the generation core (DESIGN §3): one
// encoder per request turns the typed events of a Generation into the bytes
// of its API — SSE chunks (OpenAI chat completions and completions), SSE
// events (Responses), NDJSON lines (Ollama) — or one JSON body when the
// request does not stream. The gateway writes what it returns; an encoder
// knows nothing of sockets.
#pragma once

#include <string>

#include "router/errors.h"
#include "router/generation.h"

namespace moeserve::router {

class HttpEncoder {
 public:
  virtual ~HttpEncoder() = default;
  virtual bool streaming() const = 0;
  virtual const char* stream_content_type() const { return "text/event-stream"; }
  // Streaming: the bytes for the head (every choice submitted), each event,
  // the end, and a failure after the head.
  virtual std::string Head(const Generation&) { return ""; }
  virtual std::string Event(const Generation& g, const GenerationEvent& e) = 0;
  virtual std::string End(const Generation& g) = 0;
  virtual std::string StreamError(const Generation& g, const ApiError& e) = 0;
  // Not streaming: the body of the 200 response, once every choice finished.
  virtual std::string Body(const Generation& g) = 0;
  // A failure before anything was written, in the API's own error shape.
  virtual std::string ErrorBody(const ApiError& e) const { return ErrorJson(e).dump(); }
};

// JSON text for the wire: invalid UTF-8 replaced, never thrown on.
inline std::string Dump(const ordered_json& j) { return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace); }

}  // namespace moeserve::router
