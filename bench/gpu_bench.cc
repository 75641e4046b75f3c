// GPU engine benchmark: pp (prefill tokens/s), tg (batch-1 decode tokens/s)
// and a decode batch sweep on the CUDA backend, each against the memory
// roofline measured in the same run: the device's copy bandwidth (a 1 GiB
// device-to-device copy: bytes read + written per second) over the weight
// bytes one decode token reads (dense weights, the router, 4 experts per
// layer, one embedding row and lm_head). One JSON object per measurement.
//
//   moeserve_gpu_bench --model DIR [--pp 512] [--tg 128] [--batches 1,2,4,...,256]
//                      [--sweep-steps 8] [--reps 2] [--gpu-memory-utilization 0.9]
//                      [--device-memory SIZE_GIB] [--n-cpu-moe N|auto] [--expert-cache-memory SIZE_GIB]
// --device-memory makes the backend use at most that much of the GPU (a 12 GiB
// card on a bigger one); the experts that do not fit run on the CPU (--n-cpu-moe).
#include "engine/cuda/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "bench/bench_util.h"
#include "engine/cuda/cuda_backend.h"

namespace moeserve {
namespace {

double Now() { return NowSeconds(); }

// Bytes of weights one decode token reads at batch 1.
double BytesPerToken(const ModelConfig& c) {
  const double hs = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), inter = c.intermediate_size;
  const double attn = 2.0 * (hs * qd * 2 + hs * kvd * 2);                      // q, o and k, v in bf16
  const double router = 4.0 * hs * c.num_local_experts;                        // f32
  const double expert = (2 * inter * hs + hs * inter) * (0.5 + 1.0 / 32);     // MXFP4 blocks + scales
  return c.num_hidden_layers * (attn + router + c.num_experts_per_tok * expert) + 2.0 * hs * c.vocab_size + 2.0 * hs;
}

double CopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    const double t = Now();
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
    best = std::max(best, 2.0 * bytes / (Now() - t));
  }
  cudaFree(a);
  cudaFree(b);
  return best;
}

int Main(int argc, char** argv) {
  BenchFlags flags;
  flags.batches = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  double util = 0.9, device_gib = 0, cache_gib = -1;
  int n_cpu_moe = -1;
  if (!ParseBenchFlags(argc, argv, &flags, [&](const std::string& k, const std::string& v) {
        if (k == "--gpu-memory-utilization") return absl::SimpleAtod(v, &util) && util > 0 && util <= 1;
        if (k == "--device-memory") return absl::SimpleAtod(v, &device_gib) && device_gib > 0;
        if (k == "--expert-cache-memory") return absl::SimpleAtod(v, &cache_gib) && cache_gib >= 0;
        if (k == "--n-cpu-moe") return v == "auto" || (absl::SimpleAtoi(v, &n_cpu_moe) && n_cpu_moe >= 0);
        return false;
      })) {
    std::fprintf(stderr, "usage: moeserve_gpu_bench --model DIR [--pp 512] [--tg 128] [--batches 1,...,256] "
                         "[--sweep-steps 8] [--reps 2] [--gpu-memory-utilization 0.9] [--device-memory GIB] "
                         "[--n-cpu-moe N|auto] [--expert-cache-memory GIB]\n");
    return 2;
  }
  const std::string dir = flags.dir;
  const int pp = flags.pp, tg = flags.tg, reps = flags.reps, sweep_steps = flags.sweep_steps;
  const std::vector<int> batches = flags.batches;
  auto w = LoadModelWeights(dir);
  if (!w.ok()) {
    std::fprintf(stderr, "%s\n", std::string(w.status().message()).c_str());
    return 1;
  }
  const ModelConfig config = (*w)->config;
  const int max_batch = batches.empty() ? 1 : *std::max_element(batches.begin(), batches.end());
  cuda::CudaOptions co;
  co.gpu_memory_utilization = util;
  co.max_num_seqs = std::max(64, max_batch);
  co.device_memory_limit = static_cast<int64_t>(device_gib * (1LL << 30));
  co.n_cpu_moe = n_cpu_moe;
  co.max_model_len = std::max<int64_t>(flags.pp, flags.tg + flags.sweep_steps) + 16;
  if (cache_gib >= 0) co.expert_cache_bytes = static_cast<int64_t>(cache_gib * (1LL << 30));
  const double t0 = Now();
  auto created = cuda::CudaBackend::Create(std::move(*w), co);
  if (!created.ok()) {
    std::fprintf(stderr, "%s\n", std::string(created.status().message()).c_str());
    return 1;
  }
  cuda::CudaBackend& model = **created;
  const double bw = CopyBandwidth(), bpt = BytesPerToken(config);
  int driver = 0;
  cudaDriverGetVersion(&driver);
  const HybridPlan& hp = model.hybrid_plan();
  std::printf("{\"what\":\"device\",\"name\":\"%s\",\"driver\":%d,\"load_s\":%.2f,\"weight_bytes\":%lld,"
              "\"copy_bandwidth_gb_s\":%.1f,\"bytes_per_token\":%.0f,\"roofline_tok_s\":%.1f,\"n_cpu_moe\":%d,"
              "\"host_expert_bytes\":%lld,\"expert_cache_slots\":%lld,\"kv_blocks\":%lld}\n",
              model.device().c_str(), driver, Now() - t0, static_cast<long long>(model.weight_bytes()), bw / 1e9,
              bpt, bw / bpt, hp.n_cpu_moe, static_cast<long long>(hp.host_expert_bytes),
              static_cast<long long>(hp.cache_slots), static_cast<long long>(model.kv_options().num_blocks[0]));
  std::fflush(stdout);
  const int64_t max_ctx = std::max<int64_t>(pp, tg + sweep_steps) + 16;
  const int64_t blocks_per_seq = (max_ctx + 15) / 16;
  if (model.kv_options().num_blocks[0] < blocks_per_seq * max_batch) {
    std::fprintf(stderr, "the KV pool (%lld blocks) is too small for batch %d\n",
                 static_cast<long long>(model.kv_options().num_blocks[0]), max_batch);
    return 1;
  }
  const int64_t sliding_per_seq = model.kv_options().num_blocks[1] / std::max(1, max_batch);
  std::vector<std::vector<int32_t>> full_tables(max_batch);
  for (int i = 0; i < max_batch; ++i)
    for (int64_t b = 0; b < blocks_per_seq; ++b) full_tables[i].push_back(static_cast<int32_t>(i * blocks_per_seq + b));
  // The sliding pool is smaller: each sequence gets its own ring of blocks.
  std::vector<std::vector<int32_t>> sliding(max_batch);
  for (int i = 0; i < max_batch; ++i)
    for (int64_t b = 0; b < blocks_per_seq; ++b)
      sliding[i].push_back(static_cast<int32_t>(i * sliding_per_seq + b % sliding_per_seq));
  ForwardOutput out;
  const int64_t vocab = config.vocab_size;
  std::vector<int32_t> prompt(pp);
  for (int i = 0; i < pp; ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % (vocab - 16));
  // The prefill writes every position at once: its sliding table must not wrap.
  std::vector<int32_t> prefill_sliding(blocks_per_seq);
  for (int64_t b = 0; b < blocks_per_seq; ++b) prefill_sliding[b] = static_cast<int32_t>(b);
  if (model.kv_options().num_blocks[1] < blocks_per_seq) {
    std::fprintf(stderr, "the sliding pool is too small for a %d-token prefill\n", pp);
    return 1;
  }
  for (int r = 0; r <= reps; ++r) {  // the first run warms up
    SequenceInput in;
    in.tokens = prompt;
    in.block_tables[0] = full_tables[0];
    in.block_tables[1] = prefill_sliding;
    const double a = Now();
    if (absl::Status st = model.Forward({&in, 1}, &out); !st.ok()) {
      std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
      return 1;
    }
    if (r > 0) std::printf("{\"what\":\"pp%d\",\"rep\":%d,\"tokens_per_s\":%.1f}\n", pp, r, pp / (Now() - a));
  }
  const InputFn decode_input = [&](int i, int64_t pos, std::span<const int32_t> toks) {
    SequenceInput in;
    in.tokens = toks;
    in.start_pos = pos;
    in.block_tables[0] = full_tables[i];
    in.block_tables[1] = sliding[i];
    return in;
  };
  for (int r = 0; r < reps; ++r) {
    const double tps = TimeGreedyDecode(model, tg, decode_input);
    if (tps < 0) return 1;
    std::printf("{\"what\":\"tg%d\",\"rep\":%d,\"tokens_per_s\":%.1f,\"roofline_pct\":%.1f}\n", tg, r, tps,
                100.0 * tps / (bw / bpt));
    std::fflush(stdout);
  }
  for (int b : batches) {
    const double best = TimeDecodeBatch(model, b, sweep_steps, reps, decode_input);
    if (best < 0) return 1;
    std::printf("{\"what\":\"decode_batch\",\"batch\":%d,\"tokens_per_s\":%.1f}\n", b, best);
    std::fflush(stdout);
  }
  if (hp.n_cpu_moe > 0) {
    const ExpertCacheStats st = model.expert_cache_stats();
    std::printf("{\"what\":\"expert_cache\",\"slots\":%lld,\"hits\":%lld,\"misses\":%lld,\"loads\":%lld}\n",
                static_cast<long long>(st.slots), static_cast<long long>(st.hits), static_cast<long long>(st.misses),
                static_cast<long long>(st.loads));
  }
  return 0;
}

}  // namespace
}  // namespace moeserve

int main(int argc, char** argv) { return moeserve::Main(argc, argv); }
