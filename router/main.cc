// moeserve-router: the OpenAI-compatible gateway in front of one worker group.
//
//   moeserve-router --worker HOST:PORT --model DIR [--host 127.0.0.1] [--port 8000]
//                   [--api-key KEY] [--served-model-name NAME] [--max-model-len N]
//                   [--max-num-seqs N] [--max-num-batched-tokens N] [--max-num-queued-requests N]
// Prints "listening on HOST:PORT" once ready (port 0 picks a free port).
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tools/cli_flags.h"
#include "router/gateway.h"

namespace {

constexpr char kUsage[] = R"(usage: moeserve-router --worker HOST:PORT --model DIR [flags]
  --worker HOST:PORT             the worker of the group (moeserve-worker)
  --model DIR                    model directory (its tokenizer.json is used)
  --host ADDR                    listen address (default 127.0.0.1)
  --port N                       port (default 8000; 0 picks a free one)
  --api-key KEY                  require "Authorization: Bearer KEY"
  --served-model-name NAME       the model name of the API (default: the directory name)
  --max-model-len N              longest prompt + output (default: the worker's)
  --max-num-seqs N               running sequences per step (default 64)
  --max-num-batched-tokens N     tokens per step (default 2048)
  --max-num-queued-requests N    waiting requests before 429 (default 1024)
)";

int Fail(const std::string& m) {
  std::fprintf(stderr, "moeserve-router: %s\n", m.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moeserve;
  bool help = false;
  auto parsed = ParseFlagPairs(argc, argv, {"--worker", "--model", "--host", "--port", "--api-key", "--served-model-name",
                                 "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens",
                                 "--max-num-queued-requests"}, &help);
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
  auto tok = text::Tokenizer::FromTokenizerJson(dir + "/tokenizer.json");
  if (!tok.ok()) return Fail(std::string(tok.status().message()));
  router::GroupRunner runner(worker, sc);
  if (absl::Status st = runner.Start(); !st.ok()) return Fail(std::string(st.message()));
  router::GatewayOptions go;
  go.host = get("--host", "127.0.0.1");
  go.port = static_cast<int>(port);
  go.api_key = get("--api-key", "");
  std::string name = dir;
  while (!name.empty() && name.back() == '/') name.pop_back();
  go.served_model_name = get("--served-model-name", name.substr(name.find_last_of('/') + 1));
  const std::time_t now = std::time(nullptr);
  char date[16];
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  go.current_date = date;
  router::Gateway gw(go, &runner, tok->get());
  auto bound = gw.Start();
  if (!bound.ok()) return Fail(std::string(bound.status().message()));
  std::printf("listening on %s:%d\n", go.host.c_str(), *bound);
  std::fflush(stdout);
  gw.Wait();
  return 0;
}
