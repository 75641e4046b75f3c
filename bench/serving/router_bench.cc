// Router overhead without a model (bench/README.md):
//
//   moeserve-router-bench --worker HOST:PORT [--seqs 256] [--seconds 5] [--prompt-len 128]
//
// 1. scheduler: the Scheduler alone (no I/O) with --seqs decoding requests:
//    microseconds per Schedule + UpdateFromOutput.
// 2. loop: a GroupRunner against a worker (use moeserve-fake-worker, which
//    answers at once) with --seqs concurrent requests: microseconds per step
//    as the router runs it (scheduling, StepRequest encoding, the gRPC round
//    trip, results and callbacks).
// 3. peer: the bare gRPC round trip of a step of the same size on the same
//    worker, with no scheduling: what the loop costs on top of the transport.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "router/group_runner.h"
#include "router/scheduler.h"
#include "base/cli_flags.h"

namespace {

using namespace moeserve::router;
namespace v1 = moeserve::worker::v1;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double SchedulerOnly(int seqs, int prompt_len, double seconds) {
  SchedulerConfig sc;
  sc.max_num_seqs = seqs;
  sc.max_num_batched_tokens = 1 << 20;
  sc.max_model_len = 1 << 30;
  KvCacheConfig kv;
  kv.num_blocks = {1 << 22, 1 << 22};
  Scheduler s(sc, kv);
  for (int i = 0; i < seqs; ++i) {
    auto r = std::make_unique<Request>();
    r->id = i + 1;
    r->prompt.assign(prompt_len, 13);
    r->max_tokens = 1 << 20;
    if (!s.AddRequest(std::move(r)).ok()) std::abort();
  }
  std::map<int64_t, int32_t> sampled;
  int64_t steps = 0;
  const auto t0 = Clock::now();
  Clock::time_point t1;
  do {
    for (int k = 0; k < 100; ++k) {
      SchedulerOutput out = s.Schedule();
      sampled.clear();
      for (const auto& q : out.scheduled) {
        if (q.samples) sampled[q.request_id] = 13;
      }
      s.UpdateFromOutput(out, sampled);
      ++steps;
    }
    t1 = Clock::now();
  } while (Seconds(t0, t1) < seconds);
  return 1e6 * Seconds(t0, t1) / static_cast<double>(steps);
}

int main_(int argc, char** argv) {
  bool help = false;
  auto f = moeserve::ParseFlagPairs(argc, argv, {"--worker", "--seqs", "--seconds", "--prompt-len"}, &help);
  if (help || !f.ok() || !f->count("--worker")) {
    std::fputs("usage: moeserve-router-bench --worker HOST:PORT [--seqs 256] [--seconds 5] [--prompt-len 128]\n",
               help ? stdout : stderr);
    return help ? 0 : 2;
  }
  int64_t seqs = 256, prompt_len = 128;
  double seconds = 5;
  if ((f->count("--seqs") && !absl::SimpleAtoi(f->at("--seqs"), &seqs)) ||
      (f->count("--prompt-len") && !absl::SimpleAtoi(f->at("--prompt-len"), &prompt_len)) ||
      (f->count("--seconds") && !absl::SimpleAtod(f->at("--seconds"), &seconds)) || seqs < 1 || prompt_len < 1) {
    std::fputs("moeserve-router-bench: bad flag value\n", stderr);
    return 2;
  }
  const std::string worker = f->at("--worker");

  // 1. The scheduler alone.
  const double sched_us = SchedulerOnly(static_cast<int>(seqs), static_cast<int>(prompt_len), seconds);

  // 2. The loop against the worker.
  SchedulerConfig sc;
  sc.max_num_seqs = static_cast<int32_t>(seqs);
  sc.max_num_batched_tokens = std::max<int64_t>(8192, seqs * prompt_len);
  sc.max_model_len = 1 << 30;
  std::atomic<int64_t> tokens{0}, steps{0};
  RunnerHooks hooks;
  hooks.on_step = [&](double, int64_t, int) { ++steps; };
  GroupRunner runner(worker, sc, hooks);
  if (auto st = runner.Start(); !st.ok()) {
    std::fprintf(stderr, "moeserve-router-bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::vector<int64_t> ids;
  for (int i = 0; i < seqs; ++i) {
    GenerationRequest g;
    g.prompt.assign(prompt_len, 13);
    g.max_tokens = 1 << 19;
    GenerationCallbacks cb;
    cb.on_token = [&](const v1::SampleOutput&) { ++tokens; };
    auto id = runner.Submit(std::move(g), std::move(cb));
    if (!id.ok()) {
      std::fprintf(stderr, "moeserve-router-bench: %s\n", std::string(id.status().message()).c_str());
      return 1;
    }
    ids.push_back(*id);
  }
  // Warm up past the prefill, then measure decode steps.
  while (runner.num_running() < seqs || steps.load() < 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const int64_t s0 = steps.load(), k0 = tokens.load();
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const auto t1 = Clock::now();
  const int64_t s1 = steps.load(), k1 = tokens.load();
  for (int64_t id : ids) runner.Abort(id);
  runner.Stop();
  const double loop_us = 1e6 * Seconds(t0, t1) / static_cast<double>(s1 - s0);
  const double loop_tps = static_cast<double>(k1 - k0) / Seconds(t0, t1);

  // 3. Peer: bare round trips of a decode step of the same size.
  auto stub = v1::Worker::NewStub(grpc::CreateChannel(worker, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto stream = stub->Execute(&ctx);
  v1::StepRequest first;
  first.set_step_id(1);
  for (int i = 0; i < seqs; ++i) {
    v1::NewSequence* n = first.add_new_sequences();
    n->set_id(i + 1);
    for (int t = 0; t < prompt_len; ++t) n->add_tokens(13);
    n->set_num_scheduled(prompt_len);
  }
  v1::StepResult res;
  stream->Write(first);
  stream->Read(&res);
  v1::StepRequest decode;
  for (int i = 0; i < seqs; ++i) {
    v1::RunningSequence* r = decode.add_running();
    r->set_id(i + 1);
    r->set_num_scheduled(1);
  }
  int64_t peer_steps = 0;
  const auto p0 = Clock::now();
  Clock::time_point p1;
  do {
    decode.set_step_id(2 + peer_steps);
    if (!stream->Write(decode) || !stream->Read(&res)) {
      std::fputs("moeserve-router-bench: the worker's step stream broke\n", stderr);
      return 1;
    }
    ++peer_steps;
    p1 = Clock::now();
  } while (Seconds(p0, p1) < seconds);
  stream->WritesDone();
  stream->Finish();
  const double peer_us = 1e6 * Seconds(p0, p1) / static_cast<double>(peer_steps);

  std::printf("{\"seqs\": %lld, \"scheduler_us_per_step\": %.2f, \"loop_us_per_step\": %.2f, "
              "\"loop_tokens_per_s\": %.0f, \"peer_grpc_round_trip_us\": %.2f, \"loop_over_peer\": %.3f}\n",
              static_cast<long long>(seqs), sched_us, loop_us, loop_tps, peer_us, loop_us / peer_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return main_(argc, argv); }
