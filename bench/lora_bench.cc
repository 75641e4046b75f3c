// LoRA serving cost on the CPU backend: decode throughput of one batch in
// which 0 (the base model alone), 1, 4 or 8 distinct adapters are active,
// at each rank, against the base model in the same run; and the memory each
// adapter takes. Adapters are generated (tools/lora_gen.h) for the model.
// Prints one JSON object per measurement.
//
//   moeserve_lora_bench --model DIR [--batch 8] [--steps 16] [--reps 3] [--ranks 16,64]
//                       [--adapters 0,1,4,8] [--layout fused] [--threads N]
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/lora.h"
#include "tools/lora_gen.h"

namespace moeserve {
namespace {

std::vector<int> Ints(const std::string& s) {
  std::vector<int> v;
  for (absl::string_view x : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int n = 0;
    if (absl::SimpleAtoi(x, &n)) v.push_back(n);
  }
  return v;
}

int Main(int argc, char** argv) {
  std::string dir, layout = "fused";
  int batch = 8, steps = 16, reps = 3, threads = 0;
  std::vector<int> ranks = {16, 64}, counts = {0, 1, 4, 8};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") dir = v;
    else if (k == "--layout") layout = v;
    else if (k == "--batch") absl::SimpleAtoi(v, &batch);
    else if (k == "--steps") absl::SimpleAtoi(v, &steps);
    else if (k == "--reps") absl::SimpleAtoi(v, &reps);
    else if (k == "--threads") absl::SimpleAtoi(v, &threads);
    else if (k == "--ranks") ranks = Ints(v);
    else if (k == "--adapters") counts = Ints(v);
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (dir.empty() || batch < 1 || steps < 1 || reps < 1) {
    std::fprintf(stderr, "usage: moeserve_lora_bench --model DIR [--batch 8] [--steps 16] [--reps 3] "
                         "[--ranks 16,64] [--adapters 0,1,4,8] [--layout attention|per-expert|fused] [--threads N]\n");
    return 2;
  }
  auto w = LoadModelWeights(dir);
  if (!w.ok()) {
    std::fprintf(stderr, "%s\n", std::string(w.status().message()).c_str());
    return 1;
  }
  const ModelConfig config = (*w)->config;
  CpuOptions mo;
  mo.num_threads = threads;
  mo.kv.block_size = 16;
  const int prompt = 16;
  const int64_t blocks_per_seq = (prompt + steps * reps * 2 + 16) / 16 + 1;
  mo.kv.num_blocks[0] = mo.kv.num_blocks[1] = blocks_per_seq * batch;
  CpuBackend model(std::move(*w), mo);
  std::printf("{\"what\":\"setup\",\"kernels\":\"%s\",\"threads\":%d,\"batch\":%d,\"steps\":%d,\"layout\":\"%s\"}\n",
              cpu::ActiveKernels().name, model.pool().num_threads(), batch, steps, layout.c_str());
  const std::string tmp = std::filesystem::temp_directory_path() / ("moeserve_lora_bench_" + std::to_string(getpid()));

  // One timed run: `n` adapters (0: the base model) spread over the batch's rows.
  auto run = [&](int n) {
    std::vector<std::vector<int32_t>> tables(batch), tokens(batch);
    for (int i = 0; i < batch; ++i) {
      for (int64_t b = 0; b < blocks_per_seq; ++b) tables[i].push_back(static_cast<int32_t>(i * blocks_per_seq + b));
      for (int t = 0; t < prompt; ++t) tokens[i].push_back((i * 131 + t * 17) % static_cast<int>(config.vocab_size));
    }
    ForwardOutput out;
    auto step = [&](int64_t pos, int len) {
      std::vector<SequenceInput> in(batch);
      for (int i = 0; i < batch; ++i) {
        in[i].tokens = std::span<const int32_t>(tokens[i]).subspan(pos, len);
        in[i].start_pos = pos;
        in[i].block_tables[0] = in[i].block_tables[1] = tables[i];
        in[i].adapter = n == 0 ? -1 : i % n;
      }
      if (!model.Forward(in, &out).ok()) std::abort();
      for (int i = 0; i < batch; ++i) tokens[i].push_back((tokens[i].back() * 7 + 1) % static_cast<int>(config.vocab_size));
    };
    step(0, prompt);
    const double t0 = NowSeconds();
    for (int s = 0; s < steps; ++s) step(prompt + s, 1);
    return batch * steps / (NowSeconds() - t0);
  };

  for (int rank : ranks) {
    // Adapters of this rank in slots 0..7.
    int64_t bytes = 0;
    const int most = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
    for (int a = 0; a < most; ++a) {
      LoraGenOptions lo;
      lo.layout = layout;
      lo.rank = rank;
      lo.alpha = 2.0 * rank;
      lo.seed = static_cast<uint64_t>(100 + a);
      const std::string d = tmp + "/" + std::to_string(rank) + "_" + std::to_string(a);
      if (!GenerateLoraAdapter(d, config, lo).ok()) std::abort();
      auto ad = LoadLoraAdapter(d, config);
      if (!ad.ok()) {
        std::fprintf(stderr, "%s\n", std::string(ad.status().message()).c_str());
        return 1;
      }
      bytes = static_cast<int64_t>((*ad)->bytes());
      if (!model.SetLoraAdapter(a, *ad).ok()) std::abort();
    }
    std::printf("{\"what\":\"adapter\",\"rank\":%d,\"layout\":\"%s\",\"bytes\":%lld}\n", rank, layout.c_str(),
                static_cast<long long>(bytes));
    // Interleaved repetitions, best of each, so machine drift hits every count alike.
    std::vector<double> best(counts.size(), 0.0);
    for (int r = 0; r < reps; ++r)
      for (size_t c = 0; c < counts.size(); ++c) best[c] = std::max(best[c], run(counts[c]));
    double base = 0;
    for (size_t c = 0; c < counts.size(); ++c)
      if (counts[c] == 0) base = best[c];
    for (size_t c = 0; c < counts.size(); ++c) {
      std::printf("{\"what\":\"decode\",\"rank\":%d,\"adapters\":%d,\"tok_s\":%.2f,\"vs_base\":%.3f}\n", rank,
                  counts[c], best[c], base > 0 ? best[c] / base : 0.0);
    }
    std::fflush(stdout);
    for (int a = 0; a < most; ++a) (void)model.SetLoraAdapter(a, nullptr);
  }
  std::filesystem::remove_all(tmp);
  return 0;
}

}  // namespace
}  // namespace moeserve

int main(int argc, char** argv) { return moeserve::Main(argc, argv); }
