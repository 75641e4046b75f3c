// The public gRPC API (proto/moeserve/v1/moeserve.proto) on the router.
//
// A thin codec over the generation core (router/generation.h): a request maps
// onto a GenerationSpec and the typed events onto GenerateResponse messages,
// with no JSON in between; validation, errors (their gRPC codes from the one
// table in router/errors.h) and generation are the HTTP APIs'. A synchronous
// gRPC server: a Generate call's handler thread is the executor its
// generation runs on.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "moeserve/v1/moeserve.grpc.pb.h"
#include "router/generation.h"

namespace moeserve::router {

// A GenerateRequest as a generation spec; nothing is translated through JSON.
// Checks what only this codec sees (one input, tools' parameters_json as a
// JSON object within kMaxJsonDepth); Generation::Prepare checks the rest.
std::optional<ApiError> GenerateRequestToSpec(const ApiContext& ctx, const moeserve::v1::GenerateRequest& r,
                                              GenerationSpec* spec);

class GrpcApi final : public moeserve::v1::Moeserve::Service {
 public:
  GrpcApi(ApiContext* api, std::string api_key);
  ~GrpcApi() override;
  // Listens on address ("HOST:PORT", port 0 picks one); returns the port.
  absl::StatusOr<int> Start(const std::string& address);
  void Stop();

  grpc::Status Generate(grpc::ServerContext* ctx, const moeserve::v1::GenerateRequest* req,
                        grpc::ServerWriter<moeserve::v1::GenerateResponse>* writer) override;
  grpc::Status GenerateUnary(grpc::ServerContext* ctx, const moeserve::v1::GenerateRequest* req,
                             moeserve::v1::GenerateResponse* res) override;
  grpc::Status Tokenize(grpc::ServerContext* ctx, const moeserve::v1::TokenizeRequest* req,
                        moeserve::v1::TokenizeResponse* res) override;
  grpc::Status Detokenize(grpc::ServerContext* ctx, const moeserve::v1::DetokenizeRequest* req,
                          moeserve::v1::DetokenizeResponse* res) override;
  grpc::Status ListModels(grpc::ServerContext* ctx, const moeserve::v1::ListModelsRequest* req,
                          moeserve::v1::ListModelsResponse* res) override;
  grpc::Status Health(grpc::ServerContext* ctx, const moeserve::v1::HealthRequest* req,
                      moeserve::v1::HealthResponse* res) override;

 private:
  grpc::Status Authorize(grpc::ServerContext* ctx) const;
  // Runs one generation to its end; `on_output` gets each streamed piece, or the whole response.
  grpc::Status Run(grpc::ServerContext* ctx, const moeserve::v1::GenerateRequest& req, bool stream,
                   const std::function<bool(const moeserve::v1::GenerateResponse&)>& on_output);

  ApiContext* api_;
  std::string api_key_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace moeserve::router
