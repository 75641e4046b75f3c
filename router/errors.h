// Errors of every API from one table (DESIGN §3). An error starts as an
// absl::Status (InvalidArgument, ResourceExhausted, ...) or as an HTTP status
// the gateway itself decides (405, 408, 413, 431); the table gives each its
// HTTP status, OpenAI error type and gRPC code, and the codecs write it in
// their API's own shape: OpenAI's {"error": {"message", "type", "param",
// "code"}}, Ollama's {"error": "..."}, a gRPC status.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace moeserve::router {

using ordered_json = nlohmann::ordered_json;

struct ApiError {
  int status = 400;  // HTTP status
  std::string message;
  std::string type = "invalid_request_error";  // OpenAI's error type
  std::string param;
  std::string code;
  int retry_after = 0;  // seconds, for 429 and 503
};

// A 400 naming the request field at fault.
ApiError BadRequest(std::string message, std::string param = "");
// The table, from a status: HTTP status, OpenAI type (429 with Retry-After 1).
ApiError FromStatus(const absl::Status& st);
// The table, the other way: the status code of an error (gRPC's codes are absl's).
absl::StatusCode StatusCodeOf(const ApiError& e);

// OpenAI's error object.
ordered_json ErrorJson(const ApiError& e);
// Ollama's: {"error": "message"}.
ordered_json OllamaErrorJson(const ApiError& e);

}  // namespace moeserve::router
