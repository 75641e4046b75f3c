// Engine benchmark in the manner of llama-bench: pp (prefill tokens/s),
// tg (batch-1 decode tokens/s) and a decode batch sweep, on a model directory.
// Prints one JSON object per measurement and the peak resident memory against
// the size of the weight files.
//
//   moeserve_bench --model DIR [--pp 512] [--tg 128] [--batches 1,2,4,...,64]
//                  [--sweep-steps 8] [--reps 2] [--threads N]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "bench/bench_util.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/cpu_backend.h"

namespace moeserve {
namespace {

double Now() { return NowSeconds(); }

int64_t PeakRssBytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

struct Seq {
  std::vector<int32_t> table;
  int64_t pos = 0;
};

int Main(int argc, char** argv) {
  BenchFlags flags;
  int threads = 0;
  if (!ParseBenchFlags(argc, argv, &flags, [&](const std::string& k, const std::string& v) {
        return k == "--threads" && absl::SimpleAtoi(v, &threads) && threads >= 0;
      })) {
    std::fprintf(stderr, "usage: moeserve_bench --model DIR [--pp 512] [--tg 128] [--batches 1,2,4] [--reps 2] "
                         "[--sweep-steps 8] [--threads N]\n");
    return 2;
  }
  const std::string dir = flags.dir;
  const int pp = flags.pp, tg = flags.tg, reps = flags.reps, sweep_steps = flags.sweep_steps;
  const std::vector<int> batches = flags.batches;
  const double t0 = Now();
  auto w = LoadModelWeights(dir);
  if (!w.ok()) {
    std::fprintf(stderr, "%s\n", std::string(w.status().message()).c_str());
    return 1;
  }
  const size_t file_bytes = (*w)->checkpoint->total_file_bytes();
  const int max_batch = batches.empty() ? 1 : *std::max_element(batches.begin(), batches.end());
  CpuOptions mo;
  mo.num_threads = threads;
  mo.kv.block_size = 16;
  const int64_t max_ctx = std::max<int64_t>(pp, tg + sweep_steps) + 16;
  const int64_t blocks_per_seq = (max_ctx + 15) / 16;
  mo.kv.num_blocks[0] = mo.kv.num_blocks[1] = blocks_per_seq * std::max(1, max_batch);
  CpuBackend model(std::move(*w), mo);
  const double load_s = Now() - t0;
  std::printf("{\"what\":\"load\",\"seconds\":%.2f,\"kernels\":\"%s\",\"threads\":%d,\"weight_file_bytes\":%zu}\n",
              load_s, cpu::ActiveKernels().name, model.pool().num_threads(), file_bytes);
  std::fflush(stdout);
  const int64_t vocab = model.config().vocab_size;
  auto make_seqs = [&](int n) {
    std::vector<Seq> s(n);
    for (int i = 0; i < n; ++i)
      for (int64_t b = 0; b < blocks_per_seq; ++b) s[i].table.push_back(static_cast<int32_t>(i * blocks_per_seq + b));
    return s;
  };
  auto input = [](Seq& s, std::span<const int32_t> toks) {
    SequenceInput in;
    in.tokens = toks;
    in.start_pos = s.pos;
    in.block_tables[0] = s.table;
    in.block_tables[1] = s.table;
    return in;
  };
  ForwardOutput out;
  std::vector<int32_t> prompt(pp);
  for (int i = 0; i < pp; ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % (vocab - 16));

  // Warm-up: a 64-token prefill routes to (nearly) every expert, so the
  // mapped weight pages are resident before anything is timed.
  {
    auto s = make_seqs(1);
    std::vector<int32_t> t(prompt.begin(), prompt.begin() + std::min(pp, 64));
    SequenceInput in = input(s[0], t);
    (void)model.Forward({&in, 1}, &out);
  }
  auto print_phases = [&](const char* what, const int64_t* before, double tokens) {
    std::printf("{\"what\":\"%s\"", what);
    for (int p = 0; p < CpuBackend::kNumPhases; ++p) {
      std::printf(",\"%s\":%.2f", CpuBackend::PhaseName(p), (model.phase_ns()[p] - before[p]) / 1e6 / tokens);
    }
    std::printf("}\n");
  };
  int64_t before[CpuBackend::kNumPhases];
  std::copy(model.phase_ns(), model.phase_ns() + CpuBackend::kNumPhases, before);
  for (int r = 0; r < reps; ++r) {
    auto s = make_seqs(1);
    SequenceInput in = input(s[0], prompt);
    const double a = Now();
    if (!model.Forward({&in, 1}, &out).ok()) return 1;
    const double dt = Now() - a;
    std::printf("{\"what\":\"pp%d\",\"rep\":%d,\"tokens_per_s\":%.2f}\n", pp, r, pp / dt);
    std::fflush(stdout);
  }
  print_phases("pp_phase_ms_per_token", before, static_cast<double>(reps) * pp);
  std::copy(model.phase_ns(), model.phase_ns() + CpuBackend::kNumPhases, before);
  // Sequence i's blocks: i * blocks_per_seq onwards in both pools.
  auto table_of = [&](int i) {
    std::vector<int32_t> t;
    for (int64_t k = 0; k < blocks_per_seq; ++k) t.push_back(static_cast<int32_t>(i * blocks_per_seq + k));
    return t;
  };
  std::vector<std::vector<int32_t>> tables;
  for (int i = 0; i < std::max(1, max_batch); ++i) tables.push_back(table_of(i));
  const InputFn decode_input = [&](int i, int64_t pos, std::span<const int32_t> toks) {
    SequenceInput in;
    in.tokens = toks;
    in.start_pos = pos;
    in.block_tables[0] = tables[i];
    in.block_tables[1] = tables[i];
    return in;
  };
  for (int r = 0; r < reps; ++r) {
    const double tps = TimeGreedyDecode(model, tg, decode_input);
    if (tps < 0) return 1;
    std::printf("{\"what\":\"tg%d\",\"rep\":%d,\"tokens_per_s\":%.2f}\n", tg, r, tps);
    std::fflush(stdout);
  }
  print_phases("tg_phase_ms_per_token", before, static_cast<double>(reps) * tg);
  for (int b : batches) {
    const double best = TimeDecodeBatch(model, b, sweep_steps, reps, decode_input);
    if (best < 0) return 1;
    std::printf("{\"what\":\"decode_batch\",\"batch\":%d,\"tokens_per_s\":%.2f}\n", b, best);
    std::fflush(stdout);
  }
  const int64_t rss = PeakRssBytes();
  std::printf("{\"what\":\"memory\",\"peak_rss_bytes\":%lld,\"ratio_to_weight_files\":%.3f}\n",
              static_cast<long long>(rss), static_cast<double>(rss) / file_bytes);
  return 0;
}

}  // namespace
}  // namespace moeserve

int main(int argc, char** argv) { return moeserve::Main(argc, argv); }
