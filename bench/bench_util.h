// Shared by the engine benchmarks (moeserve_bench, moeserve_gpu_bench): the
// flags --model DIR [--pp 512] [--tg 128] [--batches 1,2,4,...] [--sweep-steps 8]
// [--reps 2] (plus benchmark-specific ones through `extra`), and the timed
// decode loops, written once against the Backend interface.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/cpu/cpu_backend.h"

namespace moeserve {

struct BenchFlags {
  std::string dir;
  int pp = 512, tg = 128, reps = 2, sweep_steps = 8;
  std::vector<int> batches = {1, 2, 4, 8, 16, 32, 64};
};

// False (after printing why) on a bad or unknown flag or a missing --model.
inline bool ParseBenchFlags(int argc, char** argv, BenchFlags* f,
                            const std::function<bool(const std::string&, const std::string&)>& extra) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    int n = 0;
    const bool num = absl::SimpleAtoi(v, &n) && n > 0;
    if (k == "--model") f->dir = v;
    else if (k == "--pp" && num) f->pp = n;
    else if (k == "--tg" && num) f->tg = n;
    else if (k == "--reps" && num) f->reps = n;
    else if (k == "--sweep-steps" && num) f->sweep_steps = n;
    else if (k == "--batches") {
      f->batches.clear();
      for (absl::string_view s : absl::StrSplit(v, ',', absl::SkipEmpty())) {
        int b;
        if (!absl::SimpleAtoi(s, &b) || b < 1) {
          std::fprintf(stderr, "bad --batches %s\n", v.c_str());
          return false;
        }
        f->batches.push_back(b);
      }
    } else if (!extra(k, v)) {
      std::fprintf(stderr, "unknown or bad flag %s %s\n", k.c_str(), v.c_str());
      return false;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "flag %s needs a value\n", argv[argc - 1]);
    return false;
  }
  if (f->dir.empty()) {
    std::fprintf(stderr, "--model DIR is required\n");
    return false;
  }
  return true;
}

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Builds sequence i's input: `tokens` at position `pos`, with its block tables.
using InputFn = std::function<SequenceInput(int i, int64_t pos, std::span<const int32_t> tokens)>;

// Batch-1 greedy decode of `tg` tokens; tokens per second, or a negative value on an error.
inline double TimeGreedyDecode(Backend& m, int tg, const InputFn& input) {
  ForwardOutput out;
  int32_t tok = 1;
  const double a = NowSeconds();
  for (int i = 0; i < tg; ++i) {
    SequenceInput in = input(0, i, {&tok, 1});
    if (!m.Forward({&in, 1}, &out).ok()) return -1;
    tok = static_cast<int32_t>(std::max_element(out.logits.begin(), out.logits.begin() + out.vocab_size) -
                               out.logits.begin());
  }
  return tg / (NowSeconds() - a);
}

// `steps` decode steps of `b` sequences at once, best of `reps`: tokens per second (negative on an error).
inline double TimeDecodeBatch(Backend& m, int b, int steps, int reps, const InputFn& input) {
  ForwardOutput out;
  std::vector<int32_t> toks(b);
  for (int i = 0; i < b; ++i) toks[i] = 1 + i;
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double a = NowSeconds();
    for (int step = 0; step < steps; ++step) {
      std::vector<SequenceInput> batch;
      for (int i = 0; i < b; ++i) batch.push_back(input(i, step, {&toks[i], 1}));
      if (!m.Forward(batch, &out).ok()) return -1;
    }
    best = std::max(best, b * steps / (NowSeconds() - a));
  }
  return best;
}

}  // namespace moeserve
