// Flags shared by the engine benchmarks (moeserve_bench, moeserve_gpu_bench):
//   --model DIR [--pp 512] [--tg 128] [--batches 1,2,4,...] [--sweep-steps 8] [--reps 2]
// plus benchmark-specific ones through `extra` (return false for an unknown flag).
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

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

}  // namespace moeserve
