// The OpenAI-compatible HTTP gateway (DESIGN §3), on Boost.Beast.
//
//   GET  /health /ready /v1/models
//   POST /v1/chat/completions   (stream or not; harmony rendering and parsing)
//   POST /v1/completions        (text or token-id prompts)
//
// Every error is OpenAI-shaped JSON with a precise status. Streams are SSE
// ending in "data: [DONE]"; a client that goes away has its request aborted.
//
// Limits (docs/limits.md): a body over max_body_bytes gets 413, a header over
// max_header_bytes 431, a request whose header (body) is not complete within
// header_timeout (body_timeout) 408, malformed HTTP 400, a connection beyond
// max_connections 503 (after its request is read, so the client sees it). A
// keep-alive connection idle for idle_timeout with no request begun is closed
// without a response, as HTTP allows.
// Thread-safety: the server runs its own I/O threads; generation callbacks
// arrive on the group loop threads and are posted to each connection's strand,
// where its Completion (router/api.h) runs.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "router/api.h"

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
};

class Gateway {
 public:
  Gateway(GatewayOptions options, ApiContext* api);
  ~Gateway();
  // Binds and starts serving; returns the port.
  absl::StatusOr<int> Start();
  void Stop();
  // Blocks until Stop().
  void Wait();

  struct Impl;  // the server state (public so connection objects can reach it)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moeserve::router
