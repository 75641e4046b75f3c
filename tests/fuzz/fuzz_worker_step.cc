// The worker's step validation and execution: a StepRequest (protobuf bytes)
// runs on a tiny model's WorkerService exactly as over gRPC. Whatever the
// message says (unknown sequences, block ids outside the pools, tokens outside
// the vocabulary, scheduled counts past the known tokens, bad sampling
// parameters), the step must answer (samples or an error), never crash; then
// the sequences it named are dropped so each input starts from a clean worker.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "engine/cpu/cpu_backend.h"
#include "tools/checkpoint_gen.h"
#include "worker/worker_service.h"

namespace {

moeserve::worker::WorkerService& Service() {
  using namespace moeserve;
  static std::unique_ptr<worker::WorkerService> service = [] {
    static const std::string dir =
        std::filesystem::temp_directory_path() / ("moeserve_fuzz_tiny_" + std::to_string(getpid()));
    std::atexit([] { std::filesystem::remove_all(dir); });
    CheckpointGenOptions o;
    o.config = *PresetConfig("tiny");
    if (!GenerateCheckpoint(dir, o).ok()) std::abort();
    auto w = LoadModelWeights(dir);
    if (!w.ok()) std::abort();
    CpuOptions co;
    co.num_threads = 1;
    co.kv.block_size = 4;
    co.kv.num_blocks[0] = co.kv.num_blocks[1] = 64;
    worker::WorkerOptions wo;
    wo.max_model_len = 256;
    return std::make_unique<worker::WorkerService>(std::make_unique<CpuBackend>(std::move(*w), co), wo);
  }();
  return *service;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace v1 = moeserve::worker::v1;
  v1::StepRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  // Keep each input quick: a few hundred tokens at most.
  int64_t tokens = 0;
  for (const auto& n : req.new_sequences()) tokens += n.tokens_size() + std::max<int64_t>(0, n.num_scheduled());
  for (const auto& r : req.running()) tokens += std::max<int64_t>(0, r.num_scheduled());
  if (tokens > 512 || req.new_sequences_size() + req.running_size() > 16) return 0;
  // With masks_follow, the follow-up is the input's own step_id and masks.
  v1::StepRequest follow_up;
  follow_up.set_step_id(req.step_id());
  *follow_up.mutable_masks() = req.masks();
  const v1::StepResult res = Service().Step(req, [&](v1::StepRequest* m) {
    *m = follow_up;
    return true;
  });
  if (res.error().empty() && res.samples_size() > req.new_sequences_size() + req.running_size()) __builtin_trap();
  v1::StepRequest drop;
  for (const auto& n : req.new_sequences()) drop.add_finished_ids(n.id());
  for (const auto& r : req.running()) drop.add_finished_ids(r.id());
  (void)Service().Step(drop);
  return 0;
}
