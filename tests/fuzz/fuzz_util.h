// Shared by the fuzz targets (libFuzzer): the gpt-oss tokenizer, loaded once.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>

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

}  // namespace moeserve::fuzz
