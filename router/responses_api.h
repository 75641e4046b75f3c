// OpenAI's Responses API (/v1/responses) over the generation core.
//
// Input is a string or a list of items — messages (text parts), function
// calls, function call outputs, reasoning — rendered in harmony like a chat;
// the reply is a list of output items (reasoning, message, function_call),
// streamed as the documented typed SSE events with sequence numbers
// (response.created ... response.completed / response.incomplete /
// response.failed). `previous_response_id` continues a stored conversation,
// its function calls and their outputs included; the store is bounded and
// its entries expire (ResponseStore). GET and DELETE /v1/responses/{id} read
// and remove stored responses.
#pragma once

#include <chrono>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "router/codec.h"
#include "router/generation.h"

namespace moeserve::router {

// Stored responses: the conversation that led to each (for
// previous_response_id) and the response object (for GET). Bounded: beyond
// `capacity` entries the oldest goes; an entry lives `ttl`. Thread-safe.
class ResponseStore {
 public:
  ResponseStore(size_t capacity, std::chrono::seconds ttl) : capacity_(capacity), ttl_(ttl) {}
  struct Entry {
    std::vector<text::ChatTurn> conversation;  // input (without instructions) and output, as turns
    ordered_json response;
  };
  void Put(const std::string& id, Entry entry);
  std::optional<Entry> Get(const std::string& id);
  bool Delete(const std::string& id);
  size_t size();

 private:
  void Expire();
  struct Slot {
    Entry entry;
    std::chrono::steady_clock::time_point expires;
    std::list<std::string>::iterator order;
  };
  size_t capacity_;
  std::chrono::seconds ttl_;
  std::mutex mu_;
  std::list<std::string> order_;  // oldest first
  std::unordered_map<std::string, Slot> slots_;
};

struct ResponsesRequest {
  std::string id;  // "resp_..."
  bool stream = false;
  bool store = true;
  std::vector<text::ChatTurn> conversation;  // previous conversation + this input (without instructions)
  ordered_json echo;  // the request fields the response object repeats (model, instructions, tools, ...)
};

// Decodes a /v1/responses body (reading `store` for previous_response_id).
std::optional<ApiError> DecodeResponses(const ApiContext& ctx, const ordered_json& body, ResponseStore* store,
                                        GenerationSpec* spec, ResponsesRequest* request);

std::unique_ptr<HttpEncoder> MakeResponsesEncoder(const ApiContext& ctx, ResponsesRequest request,
                                                  ResponseStore* store);

}  // namespace moeserve::router
