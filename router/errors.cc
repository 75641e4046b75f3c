#include "router/errors.h"

#include <iterator>

namespace moeserve::router {
namespace {

struct ErrorClass {
  absl::StatusCode code;
  int http;
  const char* openai_type;
};

// The one table. Rows are searched in order; the first match wins in either
// direction, so each HTTP status appears first beside its natural code.
constexpr ErrorClass kErrorTable[] = {
    {absl::StatusCode::kInvalidArgument, 400, "invalid_request_error"},
    {absl::StatusCode::kUnauthenticated, 401, "invalid_request_error"},
    {absl::StatusCode::kPermissionDenied, 403, "invalid_request_error"},
    {absl::StatusCode::kNotFound, 404, "invalid_request_error"},
    {absl::StatusCode::kFailedPrecondition, 405, "invalid_request_error"},  // method not allowed
    {absl::StatusCode::kDeadlineExceeded, 408, "invalid_request_error"},    // request not received in time
    {absl::StatusCode::kAlreadyExists, 409, "invalid_request_error"},
    {absl::StatusCode::kInvalidArgument, 413, "invalid_request_error"},     // body too large
    {absl::StatusCode::kInvalidArgument, 431, "invalid_request_error"},     // header too large
    {absl::StatusCode::kResourceExhausted, 429, "rate_limit_error"},
    {absl::StatusCode::kCancelled, 499, "invalid_request_error"},           // the client went away
    {absl::StatusCode::kInternal, 500, "server_error"},
    {absl::StatusCode::kUnimplemented, 501, "invalid_request_error"},
    {absl::StatusCode::kUnavailable, 503, "server_error"},
    {absl::StatusCode::kOutOfRange, 400, "invalid_request_error"},
    {absl::StatusCode::kFailedPrecondition, 400, "invalid_request_error"},
};

}  // namespace

ApiError BadRequest(std::string message, std::string param) {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

ApiError FromStatus(const absl::Status& st) {
  ApiError e;
  e.message = std::string(st.message());
  e.status = 500;
  e.type = "server_error";
  for (const ErrorClass& c : kErrorTable) {
    if (c.code == st.code()) {
      e.status = c.http;
      e.type = c.openai_type;
      break;
    }
  }
  if (e.status == 429 || e.status == 503) e.retry_after = 1;
  return e;
}

absl::StatusCode StatusCodeOf(const ApiError& e) {
  for (const ErrorClass& c : kErrorTable) {
    if (c.http == e.status) return c.code;
  }
  return e.status >= 500 ? absl::StatusCode::kInternal : absl::StatusCode::kInvalidArgument;
}

ordered_json ErrorJson(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? ordered_json(nullptr) : ordered_json(e.param)},
            {"code", e.code.empty() ? ordered_json(nullptr) : ordered_json(e.code)}}}};
}

ordered_json OllamaErrorJson(const ApiError& e) {
  return {{"error", e.param.empty() || e.message.find(e.param) != std::string::npos
                        ? e.message
                        : e.message + " (" + e.param + ")"}};
}

}  // namespace moeserve::router
