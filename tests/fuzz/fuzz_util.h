// Shared by the fuzz targets (libFuzzer): the gpt-oss tokenizer, loaded once,
// and a scratch directory for targets whose subject reads files.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "router/text/tokenizer.h"

namespace moeserve::fuzz {

// The tokenizer.json the build found (MOESERVE_TOKENIZER_JSON), or the path in
// $MOESERVE_TOKENIZER_JSON.
inline const text::Tokenizer& Tok() {
  static const std::unique_ptr<text::Tokenizer> tok = [] {
    const char* env = std::getenv("MOESERVE_TOKENIZER_JSON");
    auto t = text::Tokenizer::FromTokenizerJson(env ? env : MOESERVE_TOKENIZER_JSON);
    if (!t.ok()) {
      std::fprintf(stderr, "fuzz: %s\n", std::string(t.status().message()).c_str());
      std::abort();
    }
    return std::move(*t);
  }();
  return *tok;
}

// A fresh directory for this process's files (removed at exit), in memory
// (/dev/shm) where there is one: targets that write their input to a file
// each run would otherwise spend much of their time in the disk's writeback.
inline std::string ScratchDir(const std::string& name) {
  std::error_code ec;
  const std::filesystem::path base = std::filesystem::is_directory("/dev/shm", ec) && access("/dev/shm", W_OK) == 0
                                         ? std::filesystem::path("/dev/shm")
                                         : std::filesystem::temp_directory_path();
  const std::string dir = base / ("moeserve_fuzz_" + name + "_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  static std::vector<std::string>* dirs = [] {
    auto* v = new std::vector<std::string>;
    std::atexit([] {
      std::error_code e;
      for (const std::string& d : *dirs) std::filesystem::remove_all(d, e);
    });
    return v;
  }();
  dirs->push_back(dir);
  return dir;
}

}  // namespace moeserve::fuzz
