// moeserve-worker: serves one engine over gRPC (moeserve.worker.v1).
//
//   moeserve-worker --model DIR [--device auto|cpu|cuda] [--port 0] [--host 127.0.0.1]
//                   [--kv-cache-memory 1GiB | --gpu-memory-utilization 0.9] [--block-size 16]
//                   [--max-num-seqs 64] [--max-model-len 8192] [--threads 0] [--served-model-name NAME]
//                   [--tensor-parallel-size N --rank R [--enable-expert-parallel] [--expert-placement FILE]]
// Prints "listening on HOST:PORT" once ready (port 0 picks a free port).
#include <grpcpp/grpcpp.h>
#include <prometheus/exposer.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/cli_flags.h"
#ifdef MOESERVE_WITH_CUDA
#include "engine/cuda/cuda_backend.h"
#endif
#ifdef MOESERVE_WITH_NCCL
#include "engine/parallel/nccl_communicator.h"
#endif
#include "worker/worker_service.h"

namespace {

constexpr char kUsage[] = R"(usage: moeserve-worker --model DIR [flags]
  --model DIR               model directory (config.json + safetensors)
  --host ADDR               listen address (default 127.0.0.1)
  --port N                  port (default 0: a free one, printed at start)
  --device D                auto (default: CUDA when built with it and a GPU is present), cpu or cuda
  --kv-cache-memory SIZE    CPU: bytes for the KV cache, e.g. 512MiB, 4GiB (default 1GiB)
  --gpu-memory-utilization F  CUDA: fraction of the GPU's memory this worker may use; the KV cache gets
                            what weights and workspace leave (default 0.9)
  --block-size N            tokens per KV block (default 16)
  --kv-cache-dtype T        bf16 (default), f32, or fp8 (E4M3, scale 1: half of bf16; docs/kv-cache.md)
  --max-num-seqs N          sequences the sliding-window pool is sized for, at least (default 64; the pool
                            takes an eighth of the KV budget if that is more, for prefix caching)
  --max-model-len N         longest sequence (default 8192)
  --threads N               CPU threads (default: all)
  --served-model-name NAME  model name reported to the router (default: the directory name)
  --metrics-port N          serve Prometheus metrics at http://HOST:N/metrics (default: off)
  --tensor-parallel-size N  this worker is one rank of a group of N (default 1): it maps only its shard
                            (attention heads, each expert's intermediate range, vocabulary) and steps once
                            the router's Init has joined the group (Gloo on the CPU)
  --rank R                  its rank in the group, 0..N-1 (default 0)
  --n-cpu-moe N|auto        CUDA: the experts of the first N layers stay in host memory and run on the CPU
                            (llama.cpp's flag); auto (default) keeps as many there as the GPU needs to hold
                            the rest and the KV for one --max-model-len sequence (0 when all fits), and
                            prints the split; GPU memory left over caches the host experts routing selects most
  --expert-cache-memory SIZE  CUDA: cap the device cache of host experts (0: none; default: what is left)
  --enable-expert-parallel  the group splits the experts by expert instead (attention stays split by heads)
  --expert-placement FILE   expert parallel: place experts so each rank gets an even share of the selections
                            counted in FILE (a worker's /metrics text); default: contiguous ranges
)";

bool ParseSize(const std::string& s, int64_t* out) {
  static const std::pair<const char*, int64_t> kUnits[] = {{"GiB", 1LL << 30}, {"MiB", 1LL << 20}, {"KiB", 1LL << 10},
                                                           {"G", 1LL << 30},   {"M", 1LL << 20},   {"K", 1LL << 10}};
  for (const auto& [u, m] : kUnits) {
    const size_t n = std::strlen(u);
    if (s.size() > n && s.compare(s.size() - n, n, u) == 0) {
      double v;
      if (!absl::SimpleAtod(s.substr(0, s.size() - n), &v) || v <= 0) return false;
      *out = static_cast<int64_t>(v * m);
      return true;
    }
  }
  return absl::SimpleAtoi(s, out) && *out > 0;
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "moeserve-worker: %s\n", msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moeserve;
  bool help = false;
  auto parsed = ParseFlagPairs(argc, argv, {"--model", "--host", "--port", "--kv-cache-memory", "--block-size", "--max-num-seqs",
                                 "--max-model-len", "--threads", "--served-model-name", "--kv-cache-dtype", "--metrics-port", "--device",
                                 "--gpu-memory-utilization", "--tensor-parallel-size", "--rank", "--expert-placement", "--n-cpu-moe",
                                 "--expert-cache-memory"}, &help,
                          {"--enable-expert-parallel"});
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!parsed.ok()) return Fail(std::string(parsed.status().message()));
  std::map<std::string, std::string> f = std::move(*parsed);
  auto get = [&](const char* k, const std::string& def) { return f.count(k) ? f[k] : def; };
  const std::string dir = get("--model", "");
  if (dir.empty()) return Fail("--model is required");
  int64_t kv_bytes, port, block_size, max_seqs, max_len, threads;
  if (!ParseSize(get("--kv-cache-memory", "1GiB"), &kv_bytes)) return Fail("bad --kv-cache-memory");
  if (!absl::SimpleAtoi(get("--port", "0"), &port) || port < 0 || port > 65535) return Fail("bad --port");
  if (!absl::SimpleAtoi(get("--block-size", "16"), &block_size) || block_size < 1 || block_size > 1024) {
    return Fail("bad --block-size");
  }
  if (!absl::SimpleAtoi(get("--max-num-seqs", "64"), &max_seqs) || max_seqs < 1) return Fail("bad --max-num-seqs");
  if (!absl::SimpleAtoi(get("--max-model-len", "8192"), &max_len) || max_len < 1) return Fail("bad --max-model-len");
  if (!absl::SimpleAtoi(get("--threads", "0"), &threads) || threads < 0) return Fail("bad --threads");

  int64_t tp, rank;
  if (!absl::SimpleAtoi(get("--tensor-parallel-size", "1"), &tp) || tp < 1 || tp > 64) {
    return Fail("--tensor-parallel-size must be in [1, 64]");
  }
  if (!absl::SimpleAtoi(get("--rank", "0"), &rank) || rank < 0 || rank >= tp) {
    return Fail("--rank must be in [0, --tensor-parallel-size)");
  }
  const bool ep = f.count("--enable-expert-parallel") > 0;

  auto weights = LoadModelWeights(dir);
  if (!weights.ok()) return Fail(std::string(weights.status().message()));
  if (tp > 1) {
    const ModelConfig& whole = (*weights)->config;
    std::vector<std::vector<int32_t>> placement;
    if (f.count("--expert-placement")) {
      if (!ep) return Fail("--expert-placement needs --enable-expert-parallel");
      std::ifstream in(f["--expert-placement"]);
      if (!in) return Fail(absl::StrCat("cannot read ", f["--expert-placement"]));
      std::stringstream text;
      text << in.rdbuf();
      auto counts = ParseExpertCounts(text.str(), whole.num_hidden_layers, whole.num_local_experts);
      if (!counts.ok()) return Fail(absl::StrCat(f["--expert-placement"], ": ", counts.status().message()));
      placement = BalancedPlacement(*counts, static_cast<int>(tp));
    }
    auto plan = PlanShard(whole, static_cast<int>(rank), static_cast<int>(tp), ep, placement);
    if (!plan.ok()) return Fail(std::string(plan.status().message()));
    if (absl::Status st = ShardWeights(**weights, *plan); !st.ok()) return Fail(std::string(st.message()));
  }
  const ModelConfig& c = (*weights)->config;
  // Sliding pool: the window plus two blocks for every sequence, or an eighth of the budget; the rest is
  // full-attention (PlanKvBlocks).
  KvDtype kv_dtype;
  if (!ParseKvDtype(get("--kv-cache-dtype", "bf16"), &kv_dtype)) return Fail("--kv-cache-dtype must be bf16, f32 or fp8");
  CpuOptions mo;
  mo.num_threads = static_cast<int>(threads);
  mo.kv.block_size = static_cast<int>(block_size);
  mo.kv.dtype = kv_dtype;
  const std::string device = get("--device", "auto");
  if (device != "auto" && device != "cpu" && device != "cuda") return Fail("--device must be auto, cpu or cuda");
  double utilization = 0.9;
  if (!absl::SimpleAtod(get("--gpu-memory-utilization", "0.9"), &utilization) || !(utilization > 0 && utilization <= 1)) {
    return Fail("--gpu-memory-utilization must be in (0, 1]");
  }
  std::unique_ptr<Backend> backend;
#ifdef MOESERVE_WITH_CUDA
  if (device == "cuda" || (device == "auto" && cuda::DeviceCount() > 0)) {
    cuda::CudaOptions co;
    co.gpu_memory_utilization = utilization;
    co.block_size = mo.kv.block_size;
    co.kv_dtype = mo.kv.dtype;
    co.max_num_seqs = max_seqs;
    co.max_model_len = max_len;
    co.cpu_threads = static_cast<int>(threads);
    const std::string ncm = get("--n-cpu-moe", "auto");
    if (ncm != "auto") {
      int64_t n;
      if (!absl::SimpleAtoi(ncm, &n) || n < 0) return Fail("--n-cpu-moe must be a layer count or auto");
      co.n_cpu_moe = static_cast<int>(n);
    }
    if (f.count("--expert-cache-memory")) {
      int64_t bytes = 0;
      if (f["--expert-cache-memory"] != "0" && !ParseSize(f["--expert-cache-memory"], &bytes)) {
        return Fail("bad --expert-cache-memory");
      }
      co.expert_cache_bytes = bytes;
    }
    auto m = cuda::CudaBackend::Create(std::move(*weights), co);
    if (!m.ok()) return Fail(std::string(m.status().message()));
    backend = std::move(*m);
  }
#else
  if (device == "cuda") return Fail("this build has no CUDA backend (nvcc was not found when it was built)");
#endif
  if (!backend) {
    auto blocks = PlanKvBlocks(c, kv_bytes, mo.kv.block_size, mo.kv.dtype, max_seqs);
    if (!blocks.ok()) return Fail(absl::StrCat("--kv-cache-memory: ", blocks.status().message()));
    mo.kv.num_blocks[kFullGroup] = (*blocks)[kFullGroup];
    mo.kv.num_blocks[kSlidingGroup] = (*blocks)[kSlidingGroup];
  }
  worker::WorkerOptions wo;
  wo.served_model_name = get("--served-model-name", dir.substr(dir.find_last_of('/') + 1));
  wo.max_model_len = max_len;
  wo.gloo_hostname = get("--host", "127.0.0.1");
#ifdef MOESERVE_WITH_NCCL
  if (backend && tp > 1) {  // a GPU rank: the group's collectives are NCCL's, on the backend's stream
    void* stream = backend->stream();
    wo.nccl_unique_id = [] { return parallel::NcclUniqueId(); };
    wo.nccl_join = [stream](const worker::v1::InitRequest& r) {
      return parallel::CreateNcclCommunicator(r.rank(), r.world_size(), r.nccl_unique_id(), stream,
                                              std::chrono::milliseconds(r.timeout_ms() > 0 ? r.timeout_ms() : 60000));
    };
  }
#endif
  if (!backend) backend = std::make_unique<CpuBackend>(std::move(*weights), mo);
  std::fprintf(stderr, "moeserve-worker: %s, KV blocks full %lld sliding %lld of %d tokens\n",
               backend->device().c_str(), static_cast<long long>(backend->kv_options().num_blocks[kFullGroup]),
               static_cast<long long>(backend->kv_options().num_blocks[kSlidingGroup]), backend->kv_options().block_size);
  worker::WorkerService service(std::move(backend), wo);

  std::unique_ptr<prometheus::Exposer> exposer;
  if (f.count("--metrics-port")) {
    int64_t mport;
    if (!absl::SimpleAtoi(f["--metrics-port"], &mport) || mport < 1 || mport > 65535) return Fail("bad --metrics-port");
    // prometheus-cpp writes its response without "Connection: close", so with
    // civetweb's default (no keep-alive) the socket closes right after a
    // response that the client may take as reusable: undici, Python sessions
    // and the like then fail the next request sent on it. Keep-alive makes the
    // server honour the reuse; idle connections close after 5 s, and more
    // threads than scrapers keep one idle client from holding up the others.
    // civetweb writes the headers and the body separately: without TCP_NODELAY
    // Nagle holds the body for the client's delayed ACK, ~40 ms a scrape on an
    // open connection.
    const std::vector<std::string> options = {
        "listening_ports", absl::StrCat(get("--host", "127.0.0.1"), ":", mport),
        "num_threads", "8", "enable_keep_alive", "yes", "keep_alive_timeout_ms", "5000", "tcp_nodelay", "1"};
    try {  // prometheus-cpp reports bind failures by throwing
      exposer = std::make_unique<prometheus::Exposer>(options);
    } catch (const std::exception& e) {
      return Fail(absl::StrCat("cannot serve metrics on port ", mport, ": ", e.what()));
    }
    exposer->RegisterCollectable(service.registry());
  }

  grpc::ServerBuilder builder;
  int selected = 0;
  const std::string host = get("--host", "127.0.0.1");
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(), &selected);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || selected == 0) return Fail(absl::StrCat("cannot listen on ", host, ":", port));
  std::printf("listening on %s:%d\n", host.c_str(), selected);
  std::fflush(stdout);
  server->Wait();
  return 0;
}
