// A whole model directory, as the worker opens it: config.json, the
// safetensors index (model.safetensors.index.json) and its shards. The input
// is the config text, 0xff, the index text, 0xff, then up to four shards, each
// a 3-byte little-endian length and that many bytes (the last takes what is
// left). Shard i of n is written as model-0000i-of-0000n.safetensors; an empty
// index writes no index file and the first shard as model.safetensors.
// Loading must give a clear error or weights that keep the index's promises
// (every tensor it lists is in the file it names) and whose views lie inside
// the mapped files; never a crash, an out-of-bounds read or a huge allocation.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/weights.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr size_t kMaxShards = 4;

void Touch(const void* p, size_t bytes) {
  if (!p || bytes == 0) return;
  volatile uint8_t first = static_cast<const uint8_t*>(p)[0];
  volatile uint8_t last = static_cast<const uint8_t*>(p)[bytes - 1];
  (void)first, (void)last;
}

void TouchMatrix(const moeserve::Matrix& m) {
  if (m.dtype != moeserve::DType::kF32 && m.dtype != moeserve::DType::kBF16) __builtin_trap();  // what matmuls take
  if (!m.owned.empty() || !m.owned_raw.empty()) return;
  Touch(m.data, static_cast<size_t>(m.rows * m.cols) * moeserve::DTypeSize(m.dtype));
}

void TouchExperts(const moeserve::ExpertMatrix& x) {
  const size_t n = static_cast<size_t>(x.num_experts * x.rows * x.cols);
  if (x.mxfp4) {
    Touch(x.blocks, n / 2);
    Touch(x.scales, n / 32);
  } else if (x.dtype != moeserve::DType::kF32 && x.dtype != moeserve::DType::kBF16) {
    __builtin_trap();
  } else if (x.owned.empty()) {
    Touch(x.dense, n * moeserve::DTypeSize(x.dtype));
  }
}

void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  namespace fs = std::filesystem;
  const uint8_t* end = data + size;
  const uint8_t* cut1 = static_cast<const uint8_t*>(std::memchr(data, 0xff, size));
  if (!cut1) return 0;
  const uint8_t* cut2 = static_cast<const uint8_t*>(std::memchr(cut1 + 1, 0xff, end - cut1 - 1));
  if (!cut2) return 0;
  std::vector<std::pair<const uint8_t*, size_t>> shards;
  for (const uint8_t* p = cut2 + 1; p + 3 <= end && shards.size() < kMaxShards;) {
    size_t len = p[0] | (size_t{p[1]} << 8) | (size_t{p[2]} << 16);
    p += 3;
    if (shards.size() + 1 == kMaxShards || len > static_cast<size_t>(end - p)) len = end - p;
    shards.emplace_back(p, len);
    p += len;
  }
  if (shards.empty()) return 0;

  static const std::string dir = fuzz::ScratchDir("checkpoint");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) fs::remove(e.path(), ec);
  WriteFile(dir + "/config.json", data, cut1 - data);
  const std::string index_text(reinterpret_cast<const char*>(cut1 + 1), cut2 - cut1 - 1);
  if (index_text.empty()) {
    WriteFile(dir + "/model.safetensors", shards[0].first, shards[0].second);
  } else {
    WriteFile(dir + "/model.safetensors.index.json", cut1 + 1, cut2 - cut1 - 1);
    for (size_t i = 0; i < shards.size(); ++i) {
      WriteFile(absl::StrFormat("%s/model-%05d-of-%05d.safetensors", dir, i + 1, shards.size()), shards[i].first,
                shards[i].second);
    }
  }

  auto w = LoadModelWeights(dir);
  if (!w.ok()) return 0;
  const ModelWeights& m = **w;
  // The index's promise, read here on its own: each listed tensor is in its file.
  if (!index_text.empty()) {
    const nlohmann::json idx = nlohmann::json::parse(index_text, nullptr, false);
    if (idx.is_discarded() || !idx.contains("weight_map")) __builtin_trap();  // loaded from a bad index
    for (const auto& [name, file] : idx["weight_map"].items()) {
      const TensorView* v = m.checkpoint->Find(name);
      if (!v || !file.is_string() || v->file != dir + "/" + file.get<std::string>()) __builtin_trap();
    }
  }
  for (const auto& f : m.checkpoint->files()) {
    for (const auto& [name, t] : f->tensors()) {
      Touch(t.data, t.nbytes);
      if (static_cast<size_t>(t.numel()) * DTypeSize(t.dtype) != t.nbytes) __builtin_trap();
    }
  }
  // Every weight has the shape the config asks for, inside its mapping.
  const ModelConfig& c = m.config;
  if (m.layers.size() != static_cast<size_t>(c.num_hidden_layers)) __builtin_trap();
  if (m.embed.rows != c.vocab_size || m.embed.cols != c.hidden_size) __builtin_trap();
  TouchMatrix(m.embed);
  TouchMatrix(m.lm_head);
  for (const LayerWeights& L : m.layers) {
    if (L.q.rows != c.q_dim() || L.k.rows != c.kv_dim() || L.gate_up.rows != 2 * c.intermediate_size) __builtin_trap();
    for (const Matrix* x : {&L.q, &L.k, &L.v, &L.o}) TouchMatrix(*x);
    TouchExperts(L.gate_up);
    TouchExperts(L.down);
  }
  return 0;
}
