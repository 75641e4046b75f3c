// `moeserve`: the command-line entry point.
//
//   moeserve serve           start a worker and the router on loopback (the OpenAI API)
//   moeserve generate        generate text with a model (the demo model by default)
//   moeserve gen-checkpoint  write a random-weight gpt-oss checkpoint (and LoRA adapters: gen-lora, merge-lora)
//   moeserve to-gguf         convert a checkpoint to GGUF for llama.cpp
//   moeserve logits          dump logits of a token sequence (for reference tests)
//   moeserve tokenize        encode text with the o200k_harmony tokenizer
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/sampler.h"
#include "router/text/chat.h"
#include "router/text/harmony.h"
#include "router/text/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/checkpoint_gen.h"
#include "tools/lora_gen.h"
#include "tools/gguf_writer.h"
#ifdef MOESERVE_WITH_CUDA
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/device.h"
#endif

#ifndef MOESERVE_DEMO_MODEL_DIR
#define MOESERVE_DEMO_MODEL_DIR "models/demo"
#endif

namespace moeserve {
namespace {

constexpr char kUsage[] = R"(usage: moeserve COMMAND [flags]

commands:
  serve            start the cluster on this machine: the router and its CPU worker(s)
      --model DIR            model directory (default: the demo model)
      --data-parallel-size N groups, each a replica of the model (default: one per GPU, or per
                             --tensor-parallel-size GPUs, each rank pinned to its GPU; without GPUs 1;
                             CPU threads shared out among all workers)
      --tensor-parallel-size N  ranks per group, each a worker holding 1/N of the model (heads, each
                             expert's intermediate range, vocabulary), joined by Gloo (CPU) (default 1)
      --enable-expert-parallel  the ranks split the experts by expert instead (attention stays split)
      --expert-placement FILE   with expert parallel: balance the experts over the ranks by the selection
                             counts in FILE (a worker's /metrics text)
      --device auto|cpu|cuda --gpu-memory-utilization F   passed to the workers
      --grpc-port N          also serve the public gRPC API (moeserve.v1)
      --port N               HTTP port of the OpenAI, Responses and Ollama APIs (default 8000)
      --ollama-port N        also serve the Ollama API on this port (11434 is Ollama's own)
      --responses-store-size N --responses-ttl S   stored /v1/responses (default 1024, 3600 s)
      --host ADDR            listen address (default 127.0.0.1)
      --kv-cache-memory SIZE --max-model-len N --max-num-seqs N --max-num-batched-tokens N
      --max-num-queued-requests N --api-key KEY --served-model-name NAME --threads N
      --kv-cache-dtype bf16|f32|fp8 --metrics-port N (worker i's metrics on N + i)
      --max-connections N --max-body-bytes N --max-header-bytes N --http-idle-timeout S
      --http-header-timeout S --http-body-timeout S (HTTP limits, docs/limits.md)
      --enable-prefix-caching (default) | --no-enable-prefix-caching
      --lora-modules NAME=PATH ... --max-loras N --max-lora-rank N   LoRA adapters (docs/lora.md)
                             passed to moeserve-worker / moeserve-router
  generate         generate text from a prompt
      --model DIR            model directory (default: the demo model)
      --prompt TEXT          prompt text (default "Hello")
      --prompt-ids IDS       prompt as comma-separated token ids instead
      --max-tokens N         tokens to generate (default 32)
      --temperature F --top-k N --top-p F --min-p F --seed N
      --repetition-penalty F --presence-penalty F --frequency-penalty F
      --threads N            CPU threads (default: all)
  gen-checkpoint   write a random-weight gpt-oss checkpoint
      --out DIR              output directory (required)
      --preset NAME          tiny | mid | demo | 20b | 120b (default tiny)
      --seed N               (default 0)
      --experts KIND         mxfp4 | bf16 | f16 | f32 (default mxfp4)
      --dense KIND           bf16 | f32 (default bf16)
      --expert-scale F       RMS of expert pre-activations (default 1; >3 hits the SwiGLU clamps)
      --layers N --vocab N --sliding-window N --yarn-factor F   override the preset
      --max-shard-mb N       shard size (default 4096)
      --tokenizer FILE       tokenizer.json to copy in
      --lora-out DIR         also write a random PEFT LoRA adapter for the checkpoint (docs/lora.md)
      --lora-layout L        attention (Unsloth's default) | per-expert | fused (default attention)
      --lora-rank N --lora-alpha F --lora-seed N --lora-dtype bf16|f16|f32   (default 8, 16, 1, bf16)
      --lora-rslora          alpha / sqrt(r) scaling      --lora-router   also adapt the router
  gen-lora         write a random PEFT LoRA adapter for an existing checkpoint
      --model DIR --out DIR  and the --lora-* flags of gen-checkpoint without the prefix: --layout L --rank N
                             --alpha F --seed N --dtype bf16|f16|f32 --rslora --router
  merge-lora       write base + adapter as one F32 checkpoint (dense experts): W' = W + scale B A
      --model DIR --lora DIR --out DIR
  to-gguf          convert a checkpoint to GGUF (llama.cpp)
      --model DIR --out FILE --mode f32|native
      --lora DIR             write the PEFT adapter in DIR as a GGUF LoRA for the model instead (llama.cpp --lora)
  tokenize         encode text with the o200k_harmony tokenizer
      --tokenizer FILE       tokenizer.json (default: the demo model's)
      --tiktoken FILE        a .tiktoken ranks file instead (harmony specials added)
      --text TEXT            print the ids of TEXT (special tokens allowed with --specials)
      --jsonl IN --out OUT   encode each JSON string line of IN; write {"ordinary":[..],"special":[..]} lines
  harmony-render   render harmony conversations (openai/harmony JSON form) to prompt ids
      --tokenizer FILE --jsonl IN --out OUT
                             each IN line: {"conversation": {...}, "next_role": "assistant"|null,
                             "auto_drop_analysis": bool} or {"chat": {"messages", "tools", "reasoning_effort",
                             "date"}} (an OpenAI chat request); each OUT line: {"ids": [...]} or {"error": "..."}
  logits           write logits for a token sequence (prefill, then one token per step)
      --model DIR --tokens IDS --prefill N --out FILE [--kv-f32] [--lora DIR (a PEFT adapter)]
      [--rope-ggml]          RoPE/YaRN computed as ggml does (llama.cpp comparisons)
      [--device cpu|cuda]    the backend (default cpu)
)";

using Flags = std::map<std::string, std::string>;

absl::StatusOr<Flags> ParseFlags(int argc, char** argv, int first) {
  static const char* kBool[] = {"--kv-f32", "--rope-ggml", "--help", "--specials", "--enable-expert-parallel",
                                "--enable-prefix-caching", "--no-enable-prefix-caching",
                                "--lora-rslora", "--lora-router", "--rslora", "--router"};
  Flags f;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", a, "\""));
    if (auto eq = a.find('='); eq != std::string::npos) {
      f[a.substr(0, eq)] = a.substr(eq + 1);
      continue;
    }
    bool is_bool = false;
    for (const char* b : kBool) is_bool |= a == b;
    if (is_bool) {
      f[a].assign(1, '1');  // (not = "1": GCC 12 warns falsely, -Wrestrict)
    } else if (a == "--lora-modules") {  // vLLM's list form: NAME=PATH NAME=PATH ...
      std::string& v = f[a];
      for (; i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0; ++i) {
        if (!v.empty()) v += '\n';
        v += argv[i + 1];
      }
      if (v.empty()) return absl::InvalidArgumentError("flag --lora-modules needs a value");
    } else {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("flag ", a, " needs a value"));
      f[a] = argv[++i];
    }
  }
  return f;
}

class FlagReader {
 public:
  explicit FlagReader(Flags f) : f_(std::move(f)) {}
  std::string Str(const std::string& k, const std::string& def) {
    used_.push_back(k);
    auto it = f_.find(k);
    return it == f_.end() ? def : it->second;
  }
  bool Has(const std::string& k) {
    used_.push_back(k);
    return f_.count(k) > 0;
  }
  template <typename T>
  T Num(const std::string& k, T def) {
    used_.push_back(k);
    auto it = f_.find(k);
    if (it == f_.end()) return def;
    T v;
    bool ok;
    if constexpr (std::is_floating_point_v<T>) {
      double d;
      ok = absl::SimpleAtod(it->second, &d);
      v = static_cast<T>(d);
    } else {
      int64_t i;
      ok = absl::SimpleAtoi(it->second, &i);
      v = static_cast<T>(i);
    }
    if (!ok && error_.ok()) error_ = absl::InvalidArgumentError(absl::StrCat("flag ", k, ": \"", it->second, "\" is not a number"));
    return v;
  }
  // Errors for bad numbers and for flags nobody read.
  absl::Status Finish() {
    if (!error_.ok()) return error_;
    for (const auto& [k, v] : f_) {
      if (std::find(used_.begin(), used_.end(), k) == used_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("unknown flag ", k, " (see moeserve --help)"));
      }
    }
    return absl::OkStatus();
  }

 private:
  Flags f_;
  std::vector<std::string> used_;
  absl::Status error_;
};

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipWhitespace())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) return absl::InvalidArgumentError(absl::StrCat("bad token id \"", part, "\""));
    ids.push_back(v);
  }
  return ids;
}

// Runs prefill then decode with a contiguous block table per sequence.
struct SingleSequence {
  std::vector<int32_t> table;
  explicit SingleSequence(Backend& m, int64_t max_len) {
    const int bs = m.kv_options().block_size;
    const int64_t blocks = (max_len + bs - 1) / bs;
    for (int64_t i = 0; i < blocks; ++i) table.push_back(static_cast<int32_t>(i));
  }
  SequenceInput Input(std::span<const int32_t> tokens, int64_t pos, bool all) const {
    SequenceInput in;
    in.tokens = tokens;
    in.start_pos = pos;
    in.block_tables[kFullGroup] = table;
    in.block_tables[kSlidingGroup] = table;
    in.all_logits = all;
    return in;
  }
};

absl::StatusOr<std::unique_ptr<CpuBackend>> OpenModel(const std::string& dir, int threads, int64_t max_len, bool kv_f32,
                                                 bool rope_ggml) {
  ASSIGN_OR_RETURN(auto w, LoadModelWeights(dir));
  CpuOptions mo;
  mo.num_threads = threads;
  mo.rope_ggml = rope_ggml;
  mo.kv.dtype = kv_f32 ? KvDtype::kF32 : KvDtype::kBf16;
  const int64_t blocks = (max_len + mo.kv.block_size - 1) / mo.kv.block_size;
  mo.kv.num_blocks[kFullGroup] = blocks;
  mo.kv.num_blocks[kSlidingGroup] = blocks;
  return std::make_unique<CpuBackend>(std::move(w), mo);
}

absl::Status Generate(FlagReader& f) {
  const std::string dir = f.Str("--model", MOESERVE_DEMO_MODEL_DIR);
  const std::string prompt = f.Str("--prompt", "Hello");
  const std::string prompt_ids = f.Str("--prompt-ids", "");
  const int max_tokens = f.Num<int>("--max-tokens", 32);
  const int threads = f.Num<int>("--threads", 0);
  SamplingParams sp;
  sp.temperature = f.Num<float>("--temperature", 1.0f);
  sp.top_k = f.Num<int>("--top-k", 0);
  sp.top_p = f.Num<float>("--top-p", 1.0f);
  sp.min_p = f.Num<float>("--min-p", 0.0f);
  sp.repetition_penalty = f.Num<float>("--repetition-penalty", 1.0f);
  sp.presence_penalty = f.Num<float>("--presence-penalty", 0.0f);
  sp.frequency_penalty = f.Num<float>("--frequency-penalty", 0.0f);
  sp.has_seed = f.Has("--seed");
  sp.seed = f.Num<uint64_t>("--seed", 0);
  RETURN_IF_ERROR(f.Finish());
  RETURN_IF_ERROR(sp.Validate());
  if (max_tokens < 1 || max_tokens > 1 << 20) return absl::InvalidArgumentError("--max-tokens must be in [1, 2^20]");

  ASSIGN_OR_RETURN(auto cfg, LoadModelConfig(dir));
  std::unique_ptr<text::Tokenizer> tok;
  if (auto t = text::Tokenizer::FromTokenizerJson(dir + "/tokenizer.json", cfg.vocab_size); t.ok()) tok = std::move(*t);
  std::vector<int32_t> ids;
  if (!prompt_ids.empty()) {
    ASSIGN_OR_RETURN(ids, ParseIds(prompt_ids));
  } else if (tok) {
    ids = tok->EncodeWithSpecials(prompt);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(dir, " has no tokenizer.json: pass --prompt-ids"));
  }
  if (ids.empty()) return absl::InvalidArgumentError("empty prompt");
  sp.stop_token_ids.assign(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end());
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(auto model, OpenModel(dir, threads, static_cast<int64_t>(ids.size()) + max_tokens, false, false));
  const auto t1 = std::chrono::steady_clock::now();
  SingleSequence seq(*model, static_cast<int64_t>(ids.size()) + max_tokens);
  Sampler sampler(sp, ids);
  ForwardOutput out;
  std::vector<int32_t> step = ids;
  int64_t pos = 0;
  int generated = 0;
  std::fprintf(stderr, "model %s loaded in %.2fs; prompt %zu tokens\n", dir.c_str(),
               std::chrono::duration<double>(t1 - t0).count(), ids.size());
  std::fputs(prompt_ids.empty() ? prompt.c_str() : "", stdout);
  std::unique_ptr<text::IncrementalDecoder> detok;
  if (tok) detok = std::make_unique<text::IncrementalDecoder>(*tok);
  const auto t2 = std::chrono::steady_clock::now();
  double prefill_s = 0;
  while (generated < max_tokens) {
    SequenceInput in = seq.Input(step, pos, false);
    RETURN_IF_ERROR(model->Forward({&in, 1}, &out));
    if (generated == 0) prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
    pos += static_cast<int64_t>(step.size());
    SampleResult r = sampler.Sample(out.Row(0), out.vocab_size);
    ++generated;
    if (detok) {
      ASSIGN_OR_RETURN(std::string piece, detok->Add(r.token));
      std::fputs(piece.c_str(), stdout);
    } else {
      std::fputs(absl::StrCat(" ", r.token).c_str(), stdout);
    }
    std::fflush(stdout);
    if (r.stop) break;
    step.assign(1, r.token);
  }
  if (detok) std::fputs(detok->Flush().c_str(), stdout);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
  std::fprintf(stderr, "\n%d tokens; prefill %.1f tok/s, decode %.1f tok/s (%s kernels, %d threads)\n", generated,
               ids.size() / prefill_s, generated > 1 ? (generated - 1) / (total - prefill_s) : 0.0,
               "cpu", model->pool().num_threads());
  return absl::OkStatus();
}

// The directory of this executable, to find the worker and router binaries
// beside it (build tree: ../worker, ../router; installed: the same directory).
std::string SelfDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string p(buf, n);
  return p.substr(0, p.find_last_of('/'));
}

std::string FindBinary(const std::string& name, const std::string& sub) {
  const std::string dir = SelfDir();
  for (const std::string& c : {dir + "/" + name, dir + "/../" + sub + "/" + name}) {
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return name;  // from PATH
}

// Starts `args` as a child that ends with this process; `stdout_fd` >= 0
// becomes its standard output and `close_fd` >= 0 is closed in the child.
pid_t Spawn(std::vector<std::string>& args, int stdout_fd, int close_fd, const std::string& gpu = "") {
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (!gpu.empty()) setenv("CUDA_VISIBLE_DEVICES", gpu.c_str(), 1);
    if (stdout_fd >= 0) dup2(stdout_fd, STDOUT_FILENO);
    if (close_fd >= 0) close(close_fd);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    std::fprintf(stderr, "moeserve: cannot run %s\n", argv[0]);
    _exit(127);
  }
  return pid;
}

int NumGpus() {
#ifdef MOESERVE_WITH_CUDA
  return cuda::DeviceCount();
#else
  return 0;
#endif
}

// Starts one worker; returns its pid and the address from its "listening on" line.
// `gpu` non-empty: the worker sees only that GPU (CUDA_VISIBLE_DEVICES).
absl::StatusOr<std::pair<pid_t, std::string>> StartWorker(std::vector<std::string> args, const std::string& gpu) {
  int out[2];
  if (pipe(out) != 0) return absl::InternalError("pipe failed");
  const pid_t pid = Spawn(args, out[1], out[0], gpu);
  close(out[1]);
  FILE* wf = fdopen(out[0], "r");
  char line[256] = {};
  std::string address;
  if (wf && fgets(line, sizeof(line), wf)) {
    std::string s(line);
    if (s.rfind("listening on ", 0) == 0) address = s.substr(13, s.find('\n') - 13);
  }
  if (wf) fclose(wf);
  if (address.empty()) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return absl::UnavailableError("the worker did not start (see its message above)");
  }
  return std::make_pair(pid, address);
}

// The router and its workers on loopback: --data-parallel-size groups of
// --tensor-parallel-size ranks. A worker that dies takes its group with it:
// the group's other ranks are stopped and the whole group is started again on
// its addresses (the router moves its requests meanwhile and takes the group
// back when every rank answers); the router ending ends everything.
absl::Status Serve(FlagReader& f) {
  const std::string dir = f.Str("--model", MOESERVE_DEMO_MODEL_DIR);
  const int gpus = NumGpus();
  const int tp = f.Num<int>("--tensor-parallel-size", 1);
  if (tp < 1 || tp > 64) return absl::InvalidArgumentError("--tensor-parallel-size must be in [1, 64]");
  // One group per GPU (or per tp GPUs) by default, each rank pinned to its own; else one CPU group.
  const int dp = f.Num<int>("--data-parallel-size", std::max(1, gpus / tp));
  if (dp < 1 || dp > 64) return absl::InvalidArgumentError("--data-parallel-size must be in [1, 64]");
  const int n = dp * tp;
  std::vector<std::string> worker_args = {FindBinary("moeserve-worker", "worker"), "--model", dir};
  std::vector<std::string> router_args = {FindBinary("moeserve-router", "router"), "--model", dir,
                                          "--port", f.Str("--port", "8000"), "--host", f.Str("--host", "127.0.0.1")};
  for (const char* k : {"--kv-cache-memory", "--max-model-len", "--kv-cache-dtype", "--max-num-seqs", "--device",
                        "--gpu-memory-utilization", "--expert-placement"}) {
    if (f.Has(k)) worker_args.insert(worker_args.end(), {k, f.Str(k, "")});
  }
  if (f.Has("--enable-expert-parallel")) worker_args.push_back("--enable-expert-parallel");
  // CPU threads are shared out among the workers.
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = f.Has("--threads") ? f.Num<int>("--threads", 0) : std::max(1, hw / n);
  worker_args.insert(worker_args.end(), {"--threads", std::to_string(threads)});
  if (tp > 1) worker_args.insert(worker_args.end(), {"--tensor-parallel-size", std::to_string(tp)});
  const int metrics_port = f.Has("--metrics-port") ? f.Num<int>("--metrics-port", 0) : -1;
  for (const char* k : {"--max-model-len", "--max-num-seqs", "--max-num-batched-tokens", "--max-num-queued-requests",
                        "--api-key", "--served-model-name", "--grpc-port", "--max-connections", "--max-body-bytes",
                        "--max-header-bytes", "--http-idle-timeout", "--http-header-timeout", "--http-body-timeout",
                        "--ollama-port", "--responses-store-size", "--responses-ttl", "--lora-modules",
                        "--max-loras", "--max-lora-rank"}) {
    if (f.Has(k)) router_args.insert(router_args.end(), {k, f.Str(k, "")});
  }
  for (const char* k : {"--enable-prefix-caching", "--no-enable-prefix-caching"}) {
    if (f.Has(k)) router_args.push_back(k);
  }
  RETURN_IF_ERROR(f.Finish());
  // Worker i is rank i % tp of group i / tp.
  auto args_of = [&](int i, const std::string& port) {
    std::vector<std::string> a = worker_args;
    a.insert(a.end(), {"--port", port});
    if (tp > 1) a.insert(a.end(), {"--rank", std::to_string(i % tp)});
    if (metrics_port >= 0) a.insert(a.end(), {"--metrics-port", std::to_string(metrics_port + i)});
    return a;
  };
  const bool pin = gpus > 1 && std::getenv("CUDA_VISIBLE_DEVICES") == nullptr;
  auto gpu_of = [&](int i) { return pin ? std::to_string(i % gpus) : std::string(); };
  std::vector<pid_t> pids(n, -1);
  std::vector<std::string> addresses(n);
  auto stop_all = [&] {
    for (pid_t p : pids) {
      if (p > 0) kill(p, SIGTERM);
    }
  };
  for (int i = 0; i < n; ++i) {
    auto w = StartWorker(args_of(i, "0"), gpu_of(i));
    if (!w.ok()) {
      stop_all();
      return w.status();
    }
    std::tie(pids[i], addresses[i]) = *w;
  }
  router_args.insert(router_args.end(), {"--worker", absl::StrJoin(addresses, ",")});
  if (tp > 1) router_args.insert(router_args.end(), {"--tensor-parallel-size", std::to_string(tp)});
  const pid_t router = Spawn(router_args, -1, -1);
  std::fprintf(stderr, "moeserve: %d group(s) of %d rank(s) on %s; OpenAI API on http://%s:%s/v1 (model %s)\n", dp, tp,
               absl::StrJoin(addresses, ", ").c_str(), f.Str("--host", "127.0.0.1").c_str(),
               f.Str("--port", "8000").c_str(), dir.c_str());
  auto port_of = [&](int i) { return addresses[i].substr(addresses[i].rfind(':') + 1); };
  while (true) {
    int status = 0;
    const pid_t done = wait(&status);
    if (done < 0) return absl::UnavailableError("lost the serving processes");
    if (done == router) {
      stop_all();
      while (wait(nullptr) > 0) {
      }
      return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? absl::OkStatus()
                                                           : absl::UnavailableError("the router ended");
    }
    const int i = static_cast<int>(std::find(pids.begin(), pids.end(), done) - pids.begin());
    if (i >= n) continue;  // a rank stopped below
    pids[i] = -1;
    const int g = i / tp;
    // The group's other ranks are out of step without it: stop them too, then start the group again.
    for (int r = g * tp; r < (g + 1) * tp; ++r) {
      if (pids[r] <= 0) continue;
      kill(pids[r], SIGKILL);
      waitpid(pids[r], nullptr, 0);
      pids[r] = -1;
    }
    std::fprintf(stderr, "moeserve: worker %d (%s) ended; starting %s again\n", i, addresses[i].c_str(),
                 tp > 1 ? absl::StrCat("its group ", g).c_str() : "it");
    for (int r = g * tp; r < (g + 1) * tp; ++r) {
      for (int attempt = 0; attempt < 30 && pids[r] < 0; ++attempt) {
        sleep(1);
        auto w = StartWorker(args_of(r, port_of(r)), gpu_of(r));
        if (w.ok()) pids[r] = w->first;
      }
      if (pids[r] < 0) std::fprintf(stderr, "moeserve: worker %d does not start again; serving without it\n", r);
    }
  }
}

// gen-lora's flags (prefix "--") and gen-checkpoint's (prefix "--lora-").
LoraGenOptions LoraFlags(FlagReader& f, const std::string& p) {
  LoraGenOptions lo;
  lo.layout = f.Str(p + "layout", lo.layout);
  lo.rank = f.Num<int64_t>(p + "rank", lo.rank);
  lo.alpha = f.Num<double>(p + "alpha", lo.alpha);
  lo.seed = f.Num<uint64_t>(p + "seed", lo.seed);
  lo.dtype = f.Str(p + "dtype", lo.dtype);
  lo.rslora = f.Has(p + "rslora");
  lo.router = f.Has(p + "router");
  return lo;
}

absl::Status GenCheckpoint(FlagReader& f) {
  const std::string out = f.Str("--out", "");
  ASSIGN_OR_RETURN(ModelConfig c, PresetConfig(f.Str("--preset", "tiny")));
  CheckpointGenOptions o;
  o.seed = f.Num<uint64_t>("--seed", 0);
  o.experts = f.Str("--experts", "mxfp4");
  o.dense = f.Str("--dense", "bf16");
  o.expert_scale = f.Num<double>("--expert-scale", 1.0);
  o.max_shard_bytes = f.Num<int64_t>("--max-shard-mb", 4096) << 20;
  o.tokenizer_json = f.Str("--tokenizer", "");
  if (f.Has("--layers")) {
    c.num_hidden_layers = f.Num<int64_t>("--layers", 0);
    c.layer_types.clear();
    for (int64_t i = 0; i < c.num_hidden_layers && i < 4096; ++i) {
      c.layer_types.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
    }
  }
  const std::string lora_out = f.Str("--lora-out", "");
  const LoraGenOptions lo = LoraFlags(f, "--lora-");
  c.vocab_size = f.Num<int64_t>("--vocab", c.vocab_size);
  c.sliding_window = f.Num<int64_t>("--sliding-window", c.sliding_window);
  if (f.Has("--yarn-factor")) {
    const double factor = f.Num<double>("--yarn-factor", 1.0);
    c.has_rope_scaling = factor > 1.0;
    c.rope_scaling.factor = factor;
  }
  RETURN_IF_ERROR(f.Finish());
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  if (o.max_shard_bytes <= 0) return absl::InvalidArgumentError("--max-shard-mb must be positive");
  o.config = c;
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(GenerateCheckpoint(out, o));
  std::fprintf(stderr, "wrote %s in %.1fs\n", out.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (!lora_out.empty()) {
    RETURN_IF_ERROR(GenerateLoraAdapter(lora_out, c, lo));
    std::fprintf(stderr, "wrote %s (LoRA, %s, rank %lld)\n", lora_out.c_str(), lo.layout.c_str(),
                 static_cast<long long>(lo.rank));
  }
  return absl::OkStatus();
}

absl::Status GenLora(FlagReader& f) {
  const std::string dir = f.Str("--model", ""), out = f.Str("--out", "");
  const LoraGenOptions lo = LoraFlags(f, "--");
  RETURN_IF_ERROR(f.Finish());
  if (dir.empty() || out.empty()) return absl::InvalidArgumentError("--model and --out are required");
  ASSIGN_OR_RETURN(const ModelConfig c, LoadModelConfig(dir));
  return GenerateLoraAdapter(out, c, lo);
}

absl::Status MergeLora(FlagReader& f) {
  const std::string dir = f.Str("--model", ""), lora = f.Str("--lora", ""), out = f.Str("--out", "");
  RETURN_IF_ERROR(f.Finish());
  if (dir.empty() || lora.empty() || out.empty()) return absl::InvalidArgumentError("--model, --lora and --out are required");
  return MergeLoraIntoCheckpoint(dir, lora, out);
}

absl::Status ToGguf(FlagReader& f) {
  const std::string dir = f.Str("--model", ""), out = f.Str("--out", ""), mode = f.Str("--mode", "f32");
  const std::string lora = f.Str("--lora", "");
  RETURN_IF_ERROR(f.Finish());
  if (dir.empty() || out.empty()) return absl::InvalidArgumentError("--model and --out are required");
  if (!lora.empty()) return WriteGgufLora(dir, lora, out);
  if (mode != "f32" && mode != "native") return absl::InvalidArgumentError("--mode must be f32 or native");
  return WriteGguf(dir, out, mode == "f32" ? GgufMode::kF32 : GgufMode::kNative);
}

absl::Status Tokenize(FlagReader& f) {
  const std::string path = f.Str("--tokenizer", std::string(MOESERVE_DEMO_MODEL_DIR) + "/tokenizer.json");
  const std::string tiktoken = f.Str("--tiktoken", "");
  const std::string text = f.Str("--text", ""), in_path = f.Str("--jsonl", ""), out_path = f.Str("--out", "");
  const bool specials = f.Has("--specials");
  RETURN_IF_ERROR(f.Finish());
  ASSIGN_OR_RETURN(auto tok, tiktoken.empty() ? text::Tokenizer::FromTokenizerJson(path)
                                               : text::Tokenizer::FromTiktoken(tiktoken));
  if (in_path.empty()) {
    const auto ids = specials ? tok->EncodeWithSpecials(text) : tok->EncodeOrdinary(text);
    std::string line;
    for (int32_t id : ids) absl::StrAppend(&line, line.empty() ? "" : " ", id);
    std::printf("%s\n", line.c_str());
    return absl::OkStatus();
  }
  std::ifstream in(in_path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", in_path));
  std::ofstream out(out_path.empty() ? "/dev/stdout" : out_path);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(in_path, ":", n, ": not a JSON string"));
    }
    const std::string s = j.get<std::string>();
    nlohmann::json o = {{"ordinary", tok->EncodeOrdinary(s)}, {"special", tok->EncodeWithSpecials(s)}};
    out << o.dump() << "\n";
  }
  return absl::OkStatus();
}

absl::Status HarmonyRender(FlagReader& f) {
  const std::string path = f.Str("--tokenizer", std::string(MOESERVE_DEMO_MODEL_DIR) + "/tokenizer.json");
  const std::string in_path = f.Str("--jsonl", ""), out_path = f.Str("--out", "");
  RETURN_IF_ERROR(f.Finish());
  ASSIGN_OR_RETURN(auto tok, text::Tokenizer::FromTokenizerJson(path));
  std::ifstream in(in_path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", in_path));
  std::ofstream out(out_path.empty() ? "/dev/stdout" : out_path);
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(line, nullptr, false);
    nlohmann::json o;
    auto result = [&]() -> absl::StatusOr<std::vector<int32_t>> {
      if (j.is_discarded()) return absl::InvalidArgumentError("not JSON");
      if (j.contains("chat")) {  // an OpenAI chat request
        const auto& c = j["chat"];
        text::ChatRenderOptions o;
        o.reasoning_effort = c.value("reasoning_effort", "medium");
        o.current_date = c.value("date", "");
        return text::RenderChatRequest(*tok, c["messages"], c.contains("tools") ? c["tools"] : nlohmann::ordered_json(),
                                       o);
      }
      ASSIGN_OR_RETURN(auto msgs, text::MessagesFromHarmonyJson(j["conversation"]));
      text::RenderConfig cfg;
      cfg.auto_drop_analysis = j.value("auto_drop_analysis", false);
      if (j.contains("next_role") && j["next_role"].is_string()) {
        return text::RenderForCompletion(*tok, msgs, j["next_role"].get<std::string>(), cfg);
      }
      return text::RenderConversation(*tok, msgs, cfg);
    }();
    if (result.ok()) o["ids"] = *result;
    else o["error"] = std::string(result.status().message());
    out << o.dump() << "\n";
  }
  return absl::OkStatus();
}

absl::Status Logits(FlagReader& f) {
  const std::string dir = f.Str("--model", ""), out_path = f.Str("--out", "");
  const std::string tokens = f.Str("--tokens", "");
  const int64_t prefill = f.Num<int64_t>("--prefill", 0);
  const int threads = f.Num<int>("--threads", 0);
  const bool kv_f32 = f.Has("--kv-f32"), rope_ggml = f.Has("--rope-ggml");
  const std::string device = f.Str("--device", "cpu");
  const std::string lora = f.Str("--lora", "");
  RETURN_IF_ERROR(f.Finish());
  ASSIGN_OR_RETURN(auto ids, ParseIds(tokens));
  if (ids.empty() || prefill < 1 || prefill > static_cast<int64_t>(ids.size())) {
    return absl::InvalidArgumentError("--tokens must be non-empty and 1 <= --prefill <= its length");
  }
  std::unique_ptr<Backend> model;
  if (device == "cuda") {
#ifdef MOESERVE_WITH_CUDA
    if (rope_ggml) return absl::InvalidArgumentError("--rope-ggml is a CPU-only comparison switch");
    ASSIGN_OR_RETURN(auto w, LoadModelWeights(dir));
    cuda::CudaOptions co;
    co.kv_dtype = kv_f32 ? KvDtype::kF32 : KvDtype::kBf16;
    // Enough sliding blocks for the one sequence's whole table.
    co.max_num_seqs = static_cast<int64_t>(ids.size()) / co.block_size + 1;
    co.gpu_memory_utilization = 0.8;
    ASSIGN_OR_RETURN(model, cuda::CudaBackend::Create(std::move(w), co));
#else
    return absl::UnimplementedError("this build has no CUDA backend");
#endif
  } else if (device == "cpu") {
    ASSIGN_OR_RETURN(model, OpenModel(dir, threads, static_cast<int64_t>(ids.size()), kv_f32, rope_ggml));
  } else {
    return absl::InvalidArgumentError("--device must be cpu or cuda");
  }
  if (!lora.empty()) {
    ASSIGN_OR_RETURN(auto adapter, LoadLoraAdapter(lora, model->config()));
    RETURN_IF_ERROR(model->SetLoraAdapter(0, std::move(adapter)));
  }
  SingleSequence seq(*model, static_cast<int64_t>(ids.size()));
  std::ofstream o(out_path, std::ios::binary | std::ios::trunc);
  if (!o) return absl::PermissionDeniedError(absl::StrCat("cannot write ", out_path));
  ForwardOutput out;
  SequenceInput in = seq.Input(std::span(ids).subspan(0, prefill), 0, true);
  if (!lora.empty()) in.adapter = 0;
  RETURN_IF_ERROR(model->Forward({&in, 1}, &out));
  o.write(reinterpret_cast<const char*>(out.logits.data()), static_cast<std::streamsize>(out.logits.size() * 4));
  for (size_t p = prefill; p < ids.size(); ++p) {
    in = seq.Input(std::span(ids).subspan(p, 1), static_cast<int64_t>(p), true);
    if (!lora.empty()) in.adapter = 0;
    RETURN_IF_ERROR(model->Forward({&in, 1}, &out));
    o.write(reinterpret_cast<const char*>(out.logits.data()), static_cast<std::streamsize>(out.logits.size() * 4));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moeserve

int main(int argc, char** argv) {
  using namespace moeserve;
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  auto flags = ParseFlags(argc, argv, 2);
  absl::Status st;
  if (!flags.ok()) {
    st = flags.status();
  } else if (flags->count("--help")) {
    std::fputs(kUsage, stdout);
    return 0;
  } else {
    FlagReader f(*flags);
    if (cmd == "serve") st = Serve(f);
    else if (cmd == "generate") st = Generate(f);
    else if (cmd == "gen-checkpoint") st = GenCheckpoint(f);
    else if (cmd == "merge-lora") st = MergeLora(f);
    else if (cmd == "gen-lora") st = GenLora(f);
    else if (cmd == "to-gguf") st = ToGguf(f);
    else if (cmd == "logits") st = Logits(f);
    else if (cmd == "tokenize") st = Tokenize(f);
    else if (cmd == "harmony-render") st = HarmonyRender(f);
    else st = absl::InvalidArgumentError(absl::StrCat("unknown command \"", cmd, "\" (see moeserve --help)"));
  }
  if (!st.ok()) {
    std::fprintf(stderr, "moeserve: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
