// JSON Schema -> grammar -> token masks. The input is a schema (JSON text), a
// NUL byte, then a document (its first 64 bytes) fed one byte-token at a
// time. A schema the compiler takes must give a grammar whose mask agrees
// with Accept at every step (a token is in the mask exactly when the matcher
// takes it), and a document the grammar accepts whole must be JSON. Nothing
// may crash, hang or grow without bound; refused schemas just end the run.
#include <cstdint>
#include <memory>
#include <string>

#include "nlohmann/json.hpp"
#include "router/grammar/json_schema.h"
#include "router/grammar/matcher.h"

namespace {

// Every byte as a token, some multi-byte pieces, and two special tokens.
std::shared_ptr<const moeserve::grammar::TokenTable> Vocab() {
  static const auto v = [] {
    std::vector<std::string> bytes;
    for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
    for (const char* p : {"{\"", "\":", "\",", "\"}", "null", "true", "false", "12", "-1", ".5", "e+", " \"", "\\u00",
                          "]}", "[{", "é", "\xe4\xb8", "ab", ", "}) {
      bytes.push_back(p);
    }
    std::vector<bool> special(bytes.size(), false);
    bytes.push_back(""), special.push_back(true);
    bytes.push_back(""), special.push_back(true);
    return std::make_shared<const moeserve::grammar::TokenTable>(bytes, special);
  }();
  return v;
}

constexpr size_t kMaxNodes = 20'000;
constexpr size_t kMaxDocument = 64;  // bytes of document fed, one mask each

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve::grammar;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  if (nul == std::string::npos || nul > 4096) return 0;
  const nlohmann::ordered_json schema = nlohmann::ordered_json::parse(input.substr(0, nul), nullptr, false);
  if (schema.is_discarded()) return 0;
  // Refused, or too big to fuzz quickly: every input compiles its own grammar
  // and computes a mask per document byte, so both are kept small, and the
  // compiler stops at kMaxNodes (the e2e and unit tests cover large schemas).
  absl::StatusOr<Grammar> g = JsonSchemaGrammar(schema, kMaxNodes);
  if (!g.ok()) return 0;
  auto compiled = std::make_shared<CompiledGrammar>(std::move(*g), Vocab());
  GrammarMatcher m(compiled);
  std::string doc;
  for (size_t i = nul + 1; i < size && i < nul + 1 + kMaxDocument; ++i) {
    const int32_t token = data[i];
    const bool in_mask = MaskHas(m.Mask(), token);
    const bool taken = m.Accept(token);
    if (in_mask != taken) __builtin_trap();  // the mask and the matcher disagree
    if (!taken) break;
    doc += static_cast<char>(token);
  }
  if (m.can_end() && !doc.empty() && !nlohmann::json::accept(doc)) __builtin_trap();  // accepted but not JSON
  return 0;
}
