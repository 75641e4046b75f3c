// The HTTP gateway (DESIGN §3), on Boost.Beast: the router's HTTP APIs over
// the generation core (router/generation.h), each with its codec.
//
//   GET  /health /ready /metrics /v1/models
//   POST /v1/chat/completions   OpenAI (router/openai_api.h)
//   POST /v1/completions        OpenAI, text or token-id prompts
//   POST /v1/responses          OpenAI Responses; GET, DELETE /v1/responses/{id}
//                               (router/responses_api.h)
//   POST /api/chat /api/generate, GET /api/tags /api/ps /api/version,
//   POST /api/show ...          Ollama (router/ollama_api.h), also on ollama_port
//
// Errors are in each API's own shape with a precise status. Streams are SSE
// (NDJSON for Ollama); a client that goes away has its request aborted.
//
// Limits (docs/limits.md): a body over max_body_bytes gets 413, a header over
// max_header_bytes 431, a request whose header (body) is not complete within
// header_timeout (body_timeout) 408, malformed HTTP 400, a connection beyond
// max_connections 503 (after its request is read, so the client sees it). A
// keep-alive connection idle for idle_timeout with no request begun is closed
// without a response, as HTTP allows.
// Thread-safety: the server runs its own I/O threads; generation callbacks
// arrive on the group loop threads and are posted to each connection's strand,
// where its Generation runs.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "router/generation.h"

namespace moeserve::router {

struct GatewayOptions {
  std::string host = "127.0.0.1";
  int port = 0;                      // 0: pick a free port
  std::string api_key;               // empty: no authentication
  int64_t max_body_bytes = 8 << 20;
  int64_t max_header_bytes = 32 << 10;
  int64_t max_connections = 4096;
  std::chrono::milliseconds idle_timeout{60000};    // between requests on a keep-alive connection
  std::chrono::milliseconds header_timeout{30000};  // from a request's first byte to its header's end
  std::chrono::milliseconds body_timeout{60000};    // from the header's end to the body's end
  int io_threads = 2;
  // The Ollama API is served on `port`; also on this one when >= 0 (0: pick
  // a free port), where "/" answers "Ollama is running" as Ollama does.
  int ollama_port = -1;
  // /v1/responses: stored responses (previous_response_id, GET) kept at most
  // this many, each at most this long.
  size_t responses_store_size = 1024;
  std::chrono::seconds responses_ttl{3600};
};

class Gateway {
 public:
  Gateway(GatewayOptions options, ApiContext* api);
  ~Gateway();
  // Binds and starts serving; returns the port.
  absl::StatusOr<int> Start();
  // The bound Ollama port, or -1.
  int ollama_port() const;
  void Stop();
  // Blocks until Stop().
  void Wait();

  struct Impl;  // the server state (public so connection objects can reach it)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moeserve::router
