// moeserve-fake-worker: speaks moeserve.worker.v1 but computes nothing. Every
// sequence due to sample gets a token at once (a fixed cycle of ordinary
// tokens, never a stop token), so a router in front of it runs at the speed
// of its own scheduling, gRPC and HTTP layers: the router-overhead benchmark.
// --step-ms N makes every step take N ms, as a model's would (the overload
// benchmark: a server whose capacity is known). --script IDS makes every
// sequence sample these token ids first, in order (then the cycle): the API
// tests replay a known harmony reply (reasoning, a tool call) through the
// whole router.
//
//   moeserve-fake-worker [--port 0] [--vocab 201088] [--blocks 1000000] [--block-size 16] [--step-ms 0]
//                        [--script ID,ID,...]
// Prints "listening on HOST:PORT" once ready.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "base/cli_flags.h"
#include "base/harmony_tokens.h"
#include "moeserve/worker/v1/worker.grpc.pb.h"

namespace {

namespace v1 = moeserve::worker::v1;

// " the", " of", " and", ".", " a": plain text whatever the tokenizer does with it.
constexpr int32_t kCycle[] = {290, 328, 326, 13, 261};

class FakeWorker final : public v1::Worker::Service {
 public:
  FakeWorker(int64_t vocab, int32_t blocks, int32_t block_size, int64_t step_ms, std::vector<int32_t> script)
      : vocab_(vocab), blocks_(blocks), block_size_(block_size), step_ms_(step_ms), script_(std::move(script)) {}

  grpc::Status Describe(grpc::ServerContext*, const v1::DescribeRequest*, v1::DescribeResponse* d) override {
    d->set_model("fake");
    d->set_vocab_size(vocab_);
    d->set_num_layers(24);
    d->set_max_model_len(1 << 20);
    d->set_block_size(block_size_);
    d->set_sliding_window(128);
    d->mutable_full()->set_num_blocks(blocks_);
    d->mutable_full()->set_num_layers(12);
    d->mutable_sliding()->set_num_blocks(blocks_);
    d->mutable_sliding()->set_num_layers(12);
    d->set_world_size(1);
    d->set_device("fake");
    d->add_eos_token_ids(moeserve::harmony::kReturn);
    return grpc::Status::OK;
  }
  grpc::Status Init(grpc::ServerContext*, const v1::InitRequest*, v1::InitResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Health(grpc::ServerContext*, const v1::HealthRequest*, v1::HealthResponse* out) override {
    out->set_ok(true);
    return grpc::Status::OK;
  }
  grpc::Status Execute(grpc::ServerContext*, grpc::ServerReaderWriter<v1::StepResult, v1::StepRequest>* stream) override {
    // Per sequence: tokens known, so a sequence samples when its step reaches the end.
    std::unordered_map<int64_t, std::pair<int64_t, int64_t>> seqs;  // id -> (known, computed)
    std::unordered_map<int64_t, int64_t> prompt_len;                 // id -> tokens when first seen
    v1::StepRequest req;
    while (stream->Read(&req)) {
      v1::StepResult res;
      res.set_step_id(req.step_id());
      for (int64_t id : req.finished_ids()) {
        seqs.erase(id);
        prompt_len.erase(id);
      }
      auto step = [&](int64_t id, int64_t known, int64_t computed, int64_t n) {
        computed += n;
        if (computed >= known) {
          v1::SampleOutput* s = res.add_samples();
          s->set_id(id);
          const int64_t out = known - prompt_len[id];
          s->set_token(out >= 0 && out < static_cast<int64_t>(script_.size()) ? script_[out] : kCycle[known % 5]);
          ++known;
        }
        seqs[id] = {known, computed};
      };
      for (const v1::NewSequence& n : req.new_sequences()) {
        prompt_len.emplace(n.id(), n.tokens_size());
        step(n.id(), n.tokens_size(), n.num_computed(), n.num_scheduled());
      }
      for (const v1::RunningSequence& r : req.running()) {
        auto it = seqs.find(r.id());
        if (it == seqs.end()) continue;
        step(r.id(), it->second.first, it->second.second, r.num_scheduled());
      }
      if (step_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms_));
      // Token masks, sent after the step (this worker samples its script regardless).
      if (v1::StepRequest masks; req.masks_follow() && !stream->Read(&masks)) break;
      if (!stream->Write(res)) break;
    }
    return grpc::Status::OK;
  }

 private:
  int64_t vocab_;
  int32_t blocks_, block_size_;
  int64_t step_ms_;
  std::vector<int32_t> script_;
};

}  // namespace

int main(int argc, char** argv) {
  bool help = false;
  auto f = moeserve::ParseFlagPairs(argc, argv, {"--port", "--vocab", "--blocks", "--block-size", "--step-ms", "--script"},
                                 &help);
  if (help) {
    std::puts("usage: moeserve-fake-worker [--port 0] [--vocab 201088] [--blocks 1000000] [--block-size 16] [--step-ms 0]"
              " [--script ID,ID,...]");
    return 0;
  }
  if (!f.ok()) {
    std::fprintf(stderr, "moeserve-fake-worker: %s\n", std::string(f.status().message()).c_str());
    return 2;
  }
  auto num = [&](const char* k, int64_t d) {
    int64_t v = d;
    if (f->count(k) && (!absl::SimpleAtoi(f->at(k), &v) || v < 0)) {
      std::fprintf(stderr, "moeserve-fake-worker: bad %s\n", k);
      std::exit(2);
    }
    return v;
  };
  std::vector<int32_t> script;
  if (f->count("--script")) {
    for (absl::string_view t : absl::StrSplit(f->at("--script"), ',', absl::SkipEmpty())) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(t, &id) || id < 0) {
        std::fprintf(stderr, "moeserve-fake-worker: bad --script token '%s'\n", std::string(t).c_str());
        return 2;
      }
      script.push_back(id);
    }
  }
  FakeWorker w(num("--vocab", 201088), static_cast<int32_t>(num("--blocks", 1000000)),
               static_cast<int32_t>(num("--block-size", 16)), num("--step-ms", 0), std::move(script));
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:" + std::to_string(num("--port", 0)), grpc::InsecureServerCredentials(), &port);
  b.RegisterService(&w);
  b.SetMaxReceiveMessageSize(64 << 20);
  auto server = b.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "moeserve-fake-worker: cannot listen\n");
    return 1;
  }
  std::printf("listening on 127.0.0.1:%d\n", port);
  std::fflush(stdout);
  server->Wait();
  return 0;
}
