// Helpers shared by the engine tests: generated checkpoints in temp dirs and
// contiguous block tables.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tools/checkpoint_gen.h"

namespace moeserve::testing {

inline std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string d = std::string(base ? base : std::filesystem::temp_directory_path().string()) + "/moeserve_" + name +
                  "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// A tiny checkpoint; `mutate` may change the options before writing.
inline std::string TinyCheckpoint(const std::string& name, const std::string& experts, const std::string& dense,
                                  double expert_scale = 4.0, uint64_t seed = 7) {
  const std::string dir = TempDir(name);
  CheckpointGenOptions o;
  o.config = *PresetConfig("tiny");
  o.experts = experts;
  o.dense = dense;
  o.expert_scale = expert_scale;
  o.seed = seed;
  EXPECT_TRUE(GenerateCheckpoint(dir, o).ok());
  return dir;
}

inline std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    t.push_back(static_cast<int32_t>((seed >> 8) % vocab));
  }
  return t;
}

}  // namespace moeserve::testing
