// Tensor and expert parallel on the CPU against one process, and the
// --n-cpu-moe memory plans of the deployments the project targets.
//
//   moeserve_parallel_bench --model DIR [--pp 128] [--tg 32] [--batches 1,8] [--threads 2] [--reps 2]
//   moeserve_parallel_bench --plans
//
// The first form runs the same steps (a prefill of --pp tokens, then --tg
// decode steps at each batch size) on one CpuBackend with all --threads, and
// on groups of 2 ranks (TP=2, EP=2) over real Gloo on loopback, one thread
// each (the threads shared out as `moeserve serve` does), one rank per thread
// of this process; it prints JSON lines with tokens/s, the ratio to one
// process, and the collectives' time per step on rank 0.
// --plans prints the split CudaBackend::PlanMemory picks for gpt-oss-20b on a
// 12 GiB card and gpt-oss-120b on two 24 GiB cards (TP=2 and EP=2), from the
// shapes alone.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/parallel/gloo_communicator.h"
#include "engine/parallel/shard.h"
#include "tools/checkpoint_gen.h"

namespace moeserve {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Figures {
  double pp_tps = 0;
  std::vector<double> decode_tps;        // per batch size
  std::vector<double> comm_ms_per_step;  // rank 0, per batch size
};

// Prefill one sequence, then decode batches; every rank runs the same steps.
Figures Drive(Backend& m, int pp, int tg, const std::vector<int>& batches, int reps) {
  Figures f;
  const int vocab = static_cast<int>(m.config().vocab_size);
  const int64_t per_seq = (std::max(pp, tg + 1) + 15) / 16 + 1;
  auto table = [&](int s) {
    std::vector<int32_t> t;
    for (int64_t b = 0; b < per_seq; ++b) t.push_back(static_cast<int32_t>(s * per_seq + b));
    return t;
  };
  std::vector<int32_t> prompt(pp);
  for (int i = 0; i < pp; ++i) prompt[i] = (i * 7919) % vocab;
  const auto tab0 = table(0);
  ForwardOutput out;
  for (int r = 0; r < reps; ++r) {
    SequenceInput in;
    in.tokens = prompt;
    in.block_tables[0] = in.block_tables[1] = tab0;
    const double t0 = Now();
    if (!m.Forward({&in, 1}, &out).ok()) return f;
    f.pp_tps = std::max(f.pp_tps, pp / (Now() - t0));
  }
  parallel::Communicator* comm = m.communicator();
  for (int b : batches) {
    std::vector<std::vector<int32_t>> tables(b), tokens(b);
    for (int s = 0; s < b; ++s) tables[s] = table(s), tokens[s] = {static_cast<int32_t>((s * 31) % vocab)};
    double best = 0, comm_ms = 0;
    for (int r = 0; r < reps; ++r) {
      const int64_t c0 = comm ? comm->busy_ns() : 0;
      const double t0 = Now();
      for (int step = 0; step < tg; ++step) {
        std::vector<SequenceInput> batch(b);
        for (int s = 0; s < b; ++s) {
          batch[s].tokens = tokens[s];
          batch[s].start_pos = step;
          batch[s].block_tables[0] = batch[s].block_tables[1] = tables[s];
        }
        if (!m.Forward(batch, &out).ok()) return f;
      }
      const double tps = static_cast<double>(b) * tg / (Now() - t0);
      if (tps > best) {
        best = tps;
        comm_ms = comm ? (comm->busy_ns() - c0) * 1e-6 / tg : 0;
      }
    }
    f.decode_tps.push_back(best);
    f.comm_ms_per_step.push_back(comm_ms);
  }
  return f;
}

std::unique_ptr<CpuBackend> Open(const std::string& dir, int rank, int world, bool ep, int threads, int blocks) {
  auto w = LoadModelWeights(dir);
  if (!w.ok()) {
    std::fprintf(stderr, "%s\n", std::string(w.status().message()).c_str());
    std::exit(1);
  }
  if (world > 1) {
    auto plan = PlanShard((*w)->config, rank, world, ep);
    if (!plan.ok() || !ShardWeights(**w, *plan).ok()) {
      std::fprintf(stderr, "cannot shard: %s\n", std::string(plan.status().message()).c_str());
      std::exit(1);
    }
  }
  CpuOptions o;
  o.num_threads = threads;
  o.kv.block_size = 16;
  o.kv.num_blocks[0] = o.kv.num_blocks[1] = blocks;
  return std::make_unique<CpuBackend>(std::move(*w), o);
}

void Print(const char* mode, const Figures& f, const Figures& base, const std::vector<int>& batches) {
  std::printf("{\"mode\":\"%s\",\"what\":\"prefill\",\"tokens_per_s\":%.2f,\"vs_one_process\":%.2f}\n", mode, f.pp_tps,
              base.pp_tps > 0 ? f.pp_tps / base.pp_tps : 0.0);
  for (size_t i = 0; i < f.decode_tps.size(); ++i) {
    std::printf("{\"mode\":\"%s\",\"what\":\"decode\",\"batch\":%d,\"tokens_per_s\":%.2f,\"vs_one_process\":%.2f,"
                "\"collectives_ms_per_step\":%.2f}\n",
                mode, batches[i], f.decode_tps[i], base.decode_tps.size() > i ? f.decode_tps[i] / base.decode_tps[i] : 0,
                f.comm_ms_per_step[i]);
  }
  std::fflush(stdout);
}

int Plans() {
  struct Case {
    const char* name;
    const char* preset;
    int world;
    bool ep;
    double gib;
  } cases[] = {{"gpt-oss-20b, one 12 GiB card", "20b", 1, false, 12},
               {"gpt-oss-20b, one 24 GiB card", "20b", 1, false, 24},
               {"gpt-oss-120b, two 24 GiB cards, TP=2 (per rank)", "120b", 2, false, 24},
               {"gpt-oss-120b, two 24 GiB cards, EP=2 (per rank)", "120b", 2, true, 24},
               {"gpt-oss-120b, one 80 GiB card", "120b", 1, false, 80}};
  for (const Case& k : cases) {
    ModelConfig c = *PresetConfig(k.preset);
    auto shard = PlanShard(c, 0, k.world, k.ep);
    if (!shard.ok()) return 1;
    ModelConfig local = c;
    local.num_attention_heads = shard->head_end - shard->head_begin;
    local.num_key_value_heads = shard->kv_head_end - shard->kv_head_begin;
    local.intermediate_size = shard->inter_end - shard->inter_begin;
    if (k.ep) local.num_local_experts = c.num_local_experts / k.world;  // the rank's experts
    cuda::CudaOptions o;
    o.max_model_len = 8192;
    o.max_num_seqs = 16;
    auto p = cuda::CudaBackend::PlanMemory(local, *shard, o, static_cast<int64_t>(k.gib * (1LL << 30)));
    if (!p.ok()) {
      std::printf("{\"case\":\"%s\",\"error\":\"%s\"}\n", k.name, std::string(p.status().message()).c_str());
      continue;
    }
    std::printf("{\"case\":\"%s\",\"n_cpu_moe\":%d,\"layers\":%lld,\"device_weights_gib\":%.2f,"
                "\"host_experts_gib\":%.2f,\"expert_cache_slots\":%lld,\"expert_cache_gib\":%.2f,\"kv_gib\":%.2f}\n",
                k.name, p->n_cpu_moe, static_cast<long long>(c.num_hidden_layers), p->device_weight_bytes / 1073741824.0,
                p->host_expert_bytes / 1073741824.0, static_cast<long long>(p->cache_slots),
                p->cache_bytes / 1073741824.0, p->kv_bytes / 1073741824.0);
  }
  return 0;
}

int Main(int argc, char** argv) {
  std::string dir;
  int pp = 128, tg = 32, threads = 2, reps = 2;
  std::vector<int> batches = {1, 8};
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--plans") return Plans();
    if (i + 1 >= argc) {
      std::fprintf(stderr, "flag %s needs a value\n", k.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    bool ok = true;
    if (k == "--model") dir = v;
    else if (k == "--pp") ok = absl::SimpleAtoi(v, &pp) && pp > 0;
    else if (k == "--tg") ok = absl::SimpleAtoi(v, &tg) && tg > 0;
    else if (k == "--threads") ok = absl::SimpleAtoi(v, &threads) && threads > 0;
    else if (k == "--reps") ok = absl::SimpleAtoi(v, &reps) && reps > 0;
    else if (k == "--batches") {
      batches.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) {
        int b;
        ok &= absl::SimpleAtoi(s, &b) && b > 0;
        batches.push_back(b);
      }
    } else ok = false;
    if (!ok) {
      std::fprintf(stderr, "bad flag %s %s\n", k.c_str(), v.c_str());
      return 2;
    }
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: moeserve_parallel_bench --model DIR [--pp 128] [--tg 32] [--batches 1,8] "
                         "[--threads 2] [--reps 2] | --plans\n");
    return 2;
  }
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  const int blocks = (max_batch + 1) * ((std::max(pp, tg + 1) + 15) / 16 + 1);
  Figures base;
  {
    auto m = Open(dir, 0, 1, false, threads, blocks);
    base = Drive(*m, pp, tg, batches, reps);
  }
  Print("one process", base, base, batches);
  for (const bool ep : {false, true}) {
    parallel::InMemoryStore store;
    std::vector<Figures> figures(2);
    std::vector<std::thread> ranks;
    for (int r = 0; r < 2; ++r) {
      ranks.emplace_back([&, r] {
        auto m = Open(dir, r, 2, ep, std::max(1, threads / 2), blocks);
        parallel::GlooOptions go;
        go.prefix = ep ? "ep" : "tp";
        auto comm = parallel::CreateGlooCommunicator(r, 2, store, go);
        if (!comm.ok()) {
          std::fprintf(stderr, "%s\n", std::string(comm.status().message()).c_str());
          std::exit(1);
        }
        m->SetCommunicator(std::move(*comm));
        figures[r] = Drive(*m, pp, tg, batches, reps);
      });
    }
    for (auto& t : ranks) t.join();
    Print(ep ? "EP=2" : "TP=2", figures[0], base, batches);
  }
  return 0;
}

}  // namespace
}  // namespace moeserve

int main(int argc, char** argv) { return moeserve::Main(argc, argv); }
