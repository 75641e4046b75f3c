// moeserve-router: the OpenAI-compatible HTTP gateway and the public gRPC API
// in front of one or more worker groups (data-parallel replicas).
//
//   moeserve-router --worker HOST:PORT[,HOST:PORT...] --model DIR [flags, see kUsage]
// Prints "listening on HOST:PORT" (HTTP) and, with --grpc-port, "grpc listening
// on HOST:PORT" once ready (port 0 picks a free port).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "router/gateway.h"
#include "router/grpc_api.h"
#include "router/metrics.h"
#include "router/worker_pool.h"
#include "base/cli_flags.h"

namespace {

constexpr char kUsage[] = R"(usage: moeserve-router --worker HOST:PORT[,HOST:PORT...] --model DIR [flags]
  --worker LIST                  the workers (moeserve-worker), comma-separated: one per data-parallel group,
                                 or with --tensor-parallel-size N, N consecutive ones per group (ranks 0..N-1)
  --tensor-parallel-size N       ranks per group (default 1); each rank is a worker started with the same N
  --model DIR                    model directory (its tokenizer.json is used)
  --host ADDR                    listen address (default 127.0.0.1)
  --port N                       port (default 8000; 0 picks a free one)
  --api-key KEY                  require "Authorization: Bearer KEY"
  --served-model-name NAME       the model name of the API (default: the directory name)
  --max-model-len N              longest prompt + output (default: the worker's)
  --max-num-seqs N               running sequences per step (default 64)
  --max-num-batched-tokens N     tokens per step (default 2048)
  --max-num-queued-requests N    waiting requests per group before 429 (default 1024)
  --enable-prefix-caching        reuse the K/V of prompt prefixes seen before (the default)
  --no-enable-prefix-caching     compute every prompt whole
  --grpc-port N                  also serve the public gRPC API (moeserve.v1) on this port (0 picks one)
  --ollama-port N                also serve the Ollama API on this port (11434 is Ollama's; 0 picks one); it is
                                 always served under /api/ on --port too
  --responses-store-size N       /v1/responses kept for previous_response_id and GET (default 1024; 0 keeps none)
  --responses-ttl S              how long a stored response is kept, in seconds (default 3600)
  --health-check-interval-ms N   how often workers are checked (default 1000)
LoRA adapters (docs/lora.md):
  --lora-modules NAME=PATH ...   PEFT adapters served beside the model, chosen by `model` = NAME; also
                                 comma-separated, or vLLM's JSON form {"name": ..., "path": ...}
  --max-loras N                  adapters loaded at once (default 8, or the number of --lora-modules)
  --max-lora-rank N              adapters of higher rank are refused (default 512)
  POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter {"lora_name"} change
  them at run time (behind --api-key when one is set)
HTTP limits (docs/limits.md):
  --max-connections N            open connections; beyond them requests get 503 (default 4096)
  --max-body-bytes N             request body; beyond it 413 (default 8388608)
  --max-header-bytes N           request header; beyond it 431 (default 32768)
  --http-idle-timeout S          a keep-alive connection with no request begun is closed after S seconds (default 60)
  --http-header-timeout S        a request's header must arrive within S seconds of its first byte, else 408 (default 30)
  --http-body-timeout S          its body within S seconds of the header, else 408 (default 60)
)";

int Fail(const std::string& m) {
  std::fprintf(stderr, "moeserve-router: %s\n", m.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moeserve;
  // Every SSE stream holds a socket: allow as many as the hard limit permits.
  if (rlimit rl; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  bool help = false;
  auto parsed = ParseFlagPairs(argc, argv, {"--worker", "--model", "--host", "--port", "--api-key", "--served-model-name",
                                 "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens",
                                 "--max-num-queued-requests", "--grpc-port", "--health-check-interval-ms",
                                 "--tensor-parallel-size", "--max-connections", "--max-body-bytes",
                                 "--max-header-bytes", "--http-idle-timeout", "--http-header-timeout",
                                 "--http-body-timeout", "--ollama-port", "--responses-store-size", "--responses-ttl",
                                 "--lora-modules", "--max-loras", "--max-lora-rank"}, &help,
                                {"--enable-prefix-caching", "--no-enable-prefix-caching"}, {"--lora-modules"});
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!parsed.ok()) return Fail(std::string(parsed.status().message()));
  std::map<std::string, std::string> f = std::move(*parsed);
  auto get = [&](const char* k, const std::string& d) { return f.count(k) ? f[k] : d; };
  const std::string worker = get("--worker", ""), dir = get("--model", "");
  if (worker.empty() || dir.empty()) return Fail("--worker and --model are required");
  router::SchedulerConfig sc;
  int64_t port, v;
  if (!absl::SimpleAtoi(get("--port", "8000"), &port) || port < 0 || port > 65535) return Fail("bad --port");
  if (!absl::SimpleAtoi(get("--max-num-seqs", "64"), &v) || v < 1) return Fail("bad --max-num-seqs");
  sc.max_num_seqs = static_cast<int32_t>(v);
  if (!absl::SimpleAtoi(get("--max-num-batched-tokens", "2048"), &sc.max_num_batched_tokens) ||
      sc.max_num_batched_tokens < 1) {
    return Fail("bad --max-num-batched-tokens");
  }
  if (!absl::SimpleAtoi(get("--max-num-queued-requests", "1024"), &v) || v < 0) return Fail("bad --max-num-queued-requests");
  sc.max_num_queued_requests = static_cast<int32_t>(v);
  if (!absl::SimpleAtoi(get("--max-model-len", "1000000000"), &sc.max_model_len) || sc.max_model_len < 1) {
    return Fail("bad --max-model-len");
  }
  if (f.count("--enable-prefix-caching") && f.count("--no-enable-prefix-caching")) {
    return Fail("--enable-prefix-caching and --no-enable-prefix-caching contradict each other");
  }
  sc.enable_prefix_caching = !f.count("--no-enable-prefix-caching");
  int64_t grpc_port = -1, health_ms;
  if (f.count("--grpc-port") && (!absl::SimpleAtoi(f["--grpc-port"], &grpc_port) || grpc_port < 0 || grpc_port > 65535)) {
    return Fail("bad --grpc-port");
  }
  if (!absl::SimpleAtoi(get("--health-check-interval-ms", "1000"), &health_ms) || health_ms < 10) {
    return Fail("bad --health-check-interval-ms");
  }
  std::vector<std::string> workers = absl::StrSplit(worker, ',', absl::SkipEmpty());
  if (workers.empty()) return Fail("--worker needs at least one HOST:PORT");
  int64_t tp;
  if (!absl::SimpleAtoi(get("--tensor-parallel-size", "1"), &tp) || tp < 1 || tp > 64) {
    return Fail("--tensor-parallel-size must be in [1, 64]");
  }
  if (workers.size() % tp != 0) {
    return Fail(absl::StrCat("--worker lists ", workers.size(), " workers, not a multiple of --tensor-parallel-size ", tp));
  }
  std::vector<std::vector<std::string>> groups;
  for (size_t i = 0; i < workers.size(); i += tp) groups.emplace_back(workers.begin() + i, workers.begin() + i + tp);
  auto tok = text::Tokenizer::FromTokenizerJson(dir + "/tokenizer.json");
  if (!tok.ok()) return Fail(std::string(tok.status().message()));

  // LoRA adapters: NAME=PATH entries (space- or comma-separated) or vLLM's JSON objects.
  std::vector<std::pair<std::string, std::string>> loras;
  for (const std::string& arg : std::vector<std::string>(absl::StrSplit(get("--lora-modules", ""), '\n', absl::SkipEmpty()))) {
    if (arg.front() == '{') {
      const nlohmann::json j = nlohmann::json::parse(arg, nullptr, false);
      if (!j.is_object() || !j.contains("name") || !j["name"].is_string() || !j.contains("path") ||
          !j["path"].is_string()) {
        return Fail(absl::StrCat("--lora-modules: ", arg, " is not {\"name\": ..., \"path\": ...}"));
      }
      loras.emplace_back(j["name"].get<std::string>(), j["path"].get<std::string>());
      continue;
    }
    for (absl::string_view e : absl::StrSplit(arg, absl::ByAnyChar(", \t"), absl::SkipEmpty())) {
      const size_t eq = e.find('=');
      if (eq == absl::string_view::npos || eq == 0 || eq + 1 == e.size()) {
        return Fail(absl::StrCat("--lora-modules: \"", e, "\" is not NAME=PATH"));
      }
      loras.emplace_back(std::string(e.substr(0, eq)), std::string(e.substr(eq + 1)));
    }
  }
  int64_t max_loras = std::max<int64_t>(8, static_cast<int64_t>(loras.size())), max_lora_rank = 512;
  if (f.count("--max-loras") && (!absl::SimpleAtoi(f["--max-loras"], &max_loras) || max_loras < 1 || max_loras > 254)) {
    return Fail("--max-loras must be in [1, 254]");
  }
  if (static_cast<int64_t>(loras.size()) > max_loras) {
    return Fail(absl::StrCat("--lora-modules names ", loras.size(), " adapters, over --max-loras ", max_loras));
  }
  if (f.count("--max-lora-rank") &&
      (!absl::SimpleAtoi(f["--max-lora-rank"], &max_lora_rank) || max_lora_rank < 1 || max_lora_rank > 4096)) {
    return Fail("--max-lora-rank must be in [1, 4096]");
  }

  router::RouterMetrics metrics;
  router::WorkerPoolOptions po;
  po.scheduler = sc;
  po.health_check_interval_ms = static_cast<int>(health_ms);
  po.hooks = metrics.Hooks();
  std::string name = dir;
  while (!name.empty() && name.back() == '/') name.pop_back();
  const std::string served_name = get("--served-model-name", name.substr(name.find_last_of('/') + 1));
  router::AdapterRegistry adapters(served_name, static_cast<int>(max_loras), max_lora_rank);
  po.adapters = &adapters;
  router::WorkerPool pool(groups, po);
  if (absl::Status st = pool.Start(); !st.ok()) return Fail(std::string(st.message()));
  for (const auto& [lora_name, lora_path] : loras) {
    auto a = pool.LoadAdapter(lora_name, lora_path);
    if (!a.ok()) return Fail(absl::StrCat("LoRA adapter ", lora_name, ": ", a.status().message()));
    std::fprintf(stderr, "moeserve-router: LoRA adapter %s (rank %lld, %.1f MB per worker) from %s\n",
                 lora_name.c_str(), static_cast<long long>(a->rank), a->bytes / 1e6, lora_path.c_str());
  }

  router::ApiContext api;
  api.pool = &pool;
  api.backend = &pool;
  api.tokenizer = tok->get();
  api.metrics = &metrics;
  grammar::ReplyGrammarCache grammars(**tok);
  api.grammars = &grammars;
  metrics.SetQueueLimit(sc.max_num_queued_requests);
  api.eos_token_ids.assign(pool.description().eos_token_ids().begin(), pool.description().eos_token_ids().end());
  api.served_model_name = served_name;
  api.adapters = &adapters;
  const std::time_t now = std::time(nullptr);
  char date[16];
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  api.current_date = date;

  router::GatewayOptions go;
  go.host = get("--host", "127.0.0.1");
  go.port = static_cast<int>(port);
  go.api_key = get("--api-key", "");
  struct Limit {
    const char* flag;
    int64_t lo, hi;
    int64_t* out;
  };
  int64_t idle_s = 60, header_s = 30, body_s = 60, ollama_port = -1, store_size = 1024, store_ttl = 3600;
  for (const Limit& l : {Limit{"--ollama-port", 0, 65535, &ollama_port},
                         Limit{"--responses-store-size", 0, 1 << 24, &store_size},
                         Limit{"--responses-ttl", 1, 86400 * 365, &store_ttl},
                         Limit{"--max-connections", 1, 1 << 20, &go.max_connections},
                         Limit{"--max-body-bytes", 1024, int64_t{1} << 32, &go.max_body_bytes},
                         Limit{"--max-header-bytes", 1024, 1 << 24, &go.max_header_bytes},
                         Limit{"--http-idle-timeout", 1, 86400, &idle_s}, Limit{"--http-header-timeout", 1, 86400, &header_s},
                         Limit{"--http-body-timeout", 1, 86400, &body_s}}) {
    if (f.count(l.flag) && (!absl::SimpleAtoi(f[l.flag], l.out) || *l.out < l.lo || *l.out > l.hi)) {
      return Fail(absl::StrCat(l.flag, " must be an integer in [", l.lo, ", ", l.hi, "]"));
    }
  }
  go.idle_timeout = std::chrono::seconds(idle_s);
  go.header_timeout = std::chrono::seconds(header_s);
  go.body_timeout = std::chrono::seconds(body_s);
  go.ollama_port = static_cast<int>(ollama_port);
  go.responses_store_size = static_cast<size_t>(store_size);
  go.responses_ttl = std::chrono::seconds(store_ttl);
  router::Gateway gw(go, &api);
  auto bound = gw.Start();
  if (!bound.ok()) return Fail(std::string(bound.status().message()));
  std::unique_ptr<router::GrpcApi> grpc_api;
  if (grpc_port >= 0) {
    grpc_api = std::make_unique<router::GrpcApi>(&api, go.api_key);
    auto gp = grpc_api->Start(absl::StrCat(go.host, ":", grpc_port));
    if (!gp.ok()) return Fail(std::string(gp.status().message()));
    std::printf("grpc listening on %s:%d\n", go.host.c_str(), *gp);
  }
  if (gw.ollama_port() >= 0) std::printf("ollama listening on %s:%d\n", go.host.c_str(), gw.ollama_port());
  std::printf("listening on %s:%d\n", go.host.c_str(), *bound);
  std::fflush(stdout);
  gw.Wait();
  return 0;
}
