// LoRA adapters (engine/lora.h) served by the CPU backend against the merged
// checkpoint: the adapter merged into the weights (W' = W + scale B A, by
// tools/lora_gen.cc's own reading of the PEFT layouts) and run by the engine
// and by the scalar reference written from the spec. Every layout, rsLoRA,
// rank/alpha patterns, F32/F16/BF16 factors; mixed batches; unloading; and
// adapters the loader must refuse.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>

#include "engine/cpu/cpu_backend.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "engine/lora.h"
#include "nlohmann/json.hpp"
#include "tests/reference_model.h"
#include "tests/test_util.h"
#include "tools/lora_gen.h"

namespace moeserve {
namespace {

using testing::RandomTokens;
using testing::TempDir;
using testing::TinyCheckpoint;
using json = nlohmann::json;

std::unique_ptr<CpuBackend> Open(const std::string& dir) {
  auto w = LoadModelWeights(dir);
  EXPECT_TRUE(w.ok()) << w.status();
  CpuOptions o;
  o.num_threads = 2;
  o.kv.dtype = KvDtype::kF32;
  o.kv.block_size = 4;
  o.kv.num_blocks[0] = o.kv.num_blocks[1] = 96;
  return std::make_unique<CpuBackend>(std::move(*w), o);
}

std::vector<int32_t> Iota(int n, int start = 0, int stride = 1) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = start + i * stride;
  return v;
}

using Rows = std::vector<std::vector<float>>;

// All-position logits of one sequence, prefilled in chunks of `chunk`.
Rows RunAlone(CpuBackend& m, const std::vector<int32_t>& tokens, int chunk, int adapter,
              const std::vector<int32_t>& table) {
  Rows rows;
  ForwardOutput out;
  for (size_t p = 0; p < tokens.size(); p += chunk) {
    const size_t n = std::min<size_t>(chunk, tokens.size() - p);
    SequenceInput in;
    in.tokens = std::span(tokens).subspan(p, n);
    in.start_pos = static_cast<int64_t>(p);
    in.block_tables[0] = in.block_tables[1] = table;
    in.all_logits = true;
    in.adapter = adapter;
    const absl::Status st = m.Forward({&in, 1}, &out);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return rows;
    for (size_t i = 0; i < n; ++i) {
      rows.emplace_back(out.Row(0, static_cast<int>(i)), out.Row(0, static_cast<int>(i)) + out.vocab_size);
    }
  }
  return rows;
}

template <typename T>
double MaxDiff(const Rows& a, const std::vector<std::vector<T>>& b) {
  double d = 0;
  EXPECT_EQ(a.size(), b.size());
  for (size_t p = 0; p < a.size() && p < b.size(); ++p)
    for (size_t t = 0; t < a[p].size(); ++t) d = std::max<double>(d, std::abs(a[p][t] - b[p][t]));
  return d;
}

// Greedy continuation of `prompt` for `n` tokens.
std::vector<int32_t> Greedy(CpuBackend& m, std::vector<int32_t> tokens, int n, int adapter) {
  const auto table = Iota(64);
  ForwardOutput out;
  size_t done = 0;
  for (int i = 0; i < n; ++i) {
    SequenceInput in;
    in.tokens = std::span(tokens).subspan(done);
    in.start_pos = static_cast<int64_t>(done);
    in.block_tables[0] = in.block_tables[1] = table;
    in.adapter = adapter;
    EXPECT_TRUE(m.Forward({&in, 1}, &out).ok());
    done = tokens.size();
    const float* row = out.Row(0);
    tokens.push_back(static_cast<int32_t>(std::max_element(row, row + out.vocab_size) - row));
  }
  return tokens;
}

struct Case {
  std::string name;
  LoraGenOptions options;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

LoraGenOptions Opts(const std::string& layout, std::function<void(LoraGenOptions&)> f = nullptr) {
  LoraGenOptions o;
  o.layout = layout;
  o.rank = 8;
  o.alpha = 16;
  if (f) f(o);
  return o;
}

class LayoutTest : public ::testing::TestWithParam<Case> {};

// Serving the adapter equals the engine and the scalar reference on the merged checkpoint.
TEST_P(LayoutTest, AdapterEqualsMergedWeights) {
  const Case& c = GetParam();
  const std::string base = TinyCheckpoint("lora_base_" + c.name, "mxfp4", "bf16", /*expert_scale=*/1.0);
  const std::string adir = TempDir("lora_adapter_" + c.name), mdir = TempDir("lora_merged_" + c.name);
  auto cfg = LoadModelConfig(base);
  ASSERT_TRUE(cfg.ok());
  ASSERT_TRUE(GenerateLoraAdapter(adir, *cfg, c.options).ok());
  const absl::Status merged = MergeLoraIntoCheckpoint(base, adir, mdir);
  ASSERT_TRUE(merged.ok()) << merged;

  auto adapter = LoadLoraAdapter(adir, *cfg);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto served = Open(base);
  ASSERT_TRUE(served->SetLoraAdapter(0, *adapter).ok());
  auto plain = Open(mdir);

  const auto tokens = RandomTokens(24, static_cast<int>(cfg->vocab_size), 11);
  const auto table = Iota(64);
  const Rows got = RunAlone(*served, tokens, 24, 0, table);
  const Rows want = RunAlone(*plain, tokens, 24, -1, table);
  EXPECT_LT(MaxDiff(got, want), 1e-4) << "prefill";
  EXPECT_LT(MaxDiff(RunAlone(*served, tokens, 1, 0, table), want), 1e-4) << "token by token";

  // The scalar reference on the merged checkpoint.
  auto ck = Checkpoint::Open(mdir);
  ASSERT_TRUE(ck.ok());
  testing::ReferenceModel ref(*cfg, **ck);
  EXPECT_LT(MaxDiff(got, ref.Forward(tokens)), 1e-4) << "scalar reference";

  // The adapter changes the model (so the comparisons above can fail).
  EXPECT_GT(MaxDiff(RunAlone(*served, tokens, 24, -1, table), want), 0.05) << "the adapter changes nothing";

  EXPECT_EQ(Greedy(*served, tokens, 8, 0), Greedy(*plain, tokens, 8, -1));
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, LayoutTest,
    ::testing::Values(
        Case{"attention", Opts("attention")},
        Case{"per_expert", Opts("per-expert", [](LoraGenOptions& o) { o.skip_expert = 3; })},
        Case{"fused", Opts("fused")},
        Case{"fused_router_rslora", Opts("fused", [](LoraGenOptions& o) {
               o.router = true;
               o.rslora = true;
               o.rank = 16;
             })},
        Case{"attention_patterns_f32", Opts("attention", [](LoraGenOptions& o) {
               o.patterns = true;
               o.dtype = "f32";
             })},
        Case{"per_expert_f16_router", Opts("per-expert", [](LoraGenOptions& o) {
               o.dtype = "f16";
               o.router = true;
             })}),
    [](const auto& info) { return info.param.name; });

// One step holding the base model and three adapters equals each alone.
TEST(LoraTest, MixedBatchEqualsEachAlone) {
  const std::string base = TinyCheckpoint("lora_mixed", "mxfp4", "bf16", 1.0);
  auto cfg = LoadModelConfig(base);
  ASSERT_TRUE(cfg.ok());
  auto m = Open(base);
  const std::vector<std::string> layouts = {"attention", "per-expert", "fused"};
  for (int a = 0; a < 3; ++a) {
    const std::string dir = TempDir("lora_mixed_" + std::to_string(a));
    ASSERT_TRUE(GenerateLoraAdapter(dir, *cfg, Opts(layouts[a], [&](LoraGenOptions& o) { o.seed = 10 + a; })).ok());
    auto ad = LoadLoraAdapter(dir, *cfg);
    ASSERT_TRUE(ad.ok()) << ad.status();
    ASSERT_TRUE(m->SetLoraAdapter(a + 1, *ad).ok());  // slots 1..3; slot 0 stays empty
  }
  const int vocab = static_cast<int>(cfg->vocab_size);
  const std::vector<std::vector<int32_t>> seqs = {RandomTokens(17, vocab, 1), RandomTokens(9, vocab, 2),
                                                  RandomTokens(21, vocab, 3), RandomTokens(13, vocab, 4)};
  const std::vector<int> adapters = {-1, 1, 2, 3};
  std::vector<std::vector<int32_t>> tables(4);
  for (int s = 0; s < 4; ++s) tables[s] = Iota(20, s, 4);
  std::vector<Rows> alone(4);
  for (int s = 0; s < 4; ++s) alone[s] = RunAlone(*m, seqs[s], 64, adapters[s], tables[s]);

  // Steps mixing prefill chunks and decode tokens of all four.
  std::vector<size_t> done(4, 0);
  std::vector<Rows> got(4);
  const std::vector<std::vector<size_t>> plan = {{5, 9, 7, 1}, {1, 0, 6, 12}, {11, 0, 8, 0}};
  for (const auto& step : plan) {
    std::vector<SequenceInput> batch;
    std::vector<int> which;
    for (int s = 0; s < 4; ++s) {
      if (step[s] == 0) continue;
      SequenceInput in;
      in.tokens = std::span(seqs[s]).subspan(done[s], step[s]);
      in.start_pos = static_cast<int64_t>(done[s]);
      in.block_tables[0] = in.block_tables[1] = tables[s];
      in.all_logits = true;
      in.adapter = adapters[s];
      batch.push_back(in);
      which.push_back(s);
    }
    ForwardOutput out;
    ASSERT_TRUE(m->Forward(batch, &out).ok());
    for (size_t i = 0; i < batch.size(); ++i) {
      const int s = which[i];
      for (size_t j = 0; j < step[s]; ++j) {
        got[s].emplace_back(out.Row(static_cast<int>(i), static_cast<int>(j)),
                            out.Row(static_cast<int>(i), static_cast<int>(j)) + out.vocab_size);
      }
      done[s] += step[s];
    }
  }
  for (int s = 0; s < 4; ++s) EXPECT_LT(MaxDiff(got[s], alone[s]), 2e-5) << "sequence " << s;
  // And the adapters differ from each other.
  EXPECT_GT(MaxDiff(RunAlone(*m, seqs[0], 64, 1, tables[0]), alone[0]), 0.05);
}

TEST(LoraTest, UnloadLetsGoOfTheAdapter) {
  const std::string base = TinyCheckpoint("lora_unload", "mxfp4", "bf16", 1.0);
  auto cfg = LoadModelConfig(base);
  const std::string dir = TempDir("lora_unload_adapter");
  ASSERT_TRUE(GenerateLoraAdapter(dir, *cfg, Opts("fused")).ok());
  auto ad = LoadLoraAdapter(dir, *cfg);
  ASSERT_TRUE(ad.ok());
  EXPECT_GT((*ad)->bytes(), 0u);
  std::weak_ptr<const LoraAdapter> weak = *ad;
  auto m = Open(base);
  ASSERT_TRUE(m->SetLoraAdapter(5, std::move(*ad)).ok());
  const auto tokens = RandomTokens(6, 512, 5);
  EXPECT_EQ(RunAlone(*m, tokens, 6, 5, Iota(8)).size(), 6u);
  ASSERT_TRUE(m->SetLoraAdapter(5, nullptr).ok());
  EXPECT_TRUE(weak.expired()) << "the backend still holds the adapter";
  SequenceInput in;
  in.tokens = tokens;
  const auto table = Iota(8);
  in.block_tables[0] = in.block_tables[1] = table;
  in.adapter = 5;
  ForwardOutput out;
  const absl::Status st = m->Forward({&in, 1}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("slot 5"), std::string::npos) << st;
  EXPECT_FALSE(m->SetLoraAdapter(-1, nullptr).ok());
  EXPECT_FALSE(m->SetLoraAdapter(kMaxLoraSlots, nullptr).ok());
}

// ---- adapters the loader refuses ----

struct RawTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<RawTensor> ReadAll(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok());
  std::vector<RawTensor> out;
  for (const auto& [name, t] : (*f)->tensors()) {
    out.push_back({name, DTypeName(t.dtype), t.shape, std::string(static_cast<const char*>(t.data), t.nbytes)});
  }
  return out;
}

void WriteAll(const std::string& path, const std::vector<RawTensor>& ts) {
  json h = json::object();
  size_t off = 0;
  for (const RawTensor& t : ts) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string hs = h.dump();
  const uint64_t n = hs.size();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << hs;
  for (const RawTensor& t : ts) f << t.bytes;
}

class RefusalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = *PresetConfig("tiny");
    dir_ = TempDir("lora_refusal");
    ASSERT_TRUE(GenerateLoraAdapter(dir_, cfg_, Opts("fused")).ok());
    path_ = dir_ + "/adapter_model.safetensors";
    tensors_ = ReadAll(path_);
    std::ifstream in(dir_ + "/adapter_config.json");
    config_ = nlohmann::ordered_json::parse(in);
  }
  // Loads after writing the (mutated) config and tensors; returns the error.
  std::string Error(int64_t max_rank = 0) {
    std::ofstream(dir_ + "/adapter_config.json") << config_.dump();
    WriteAll(path_, tensors_);
    auto a = LoadLoraAdapter(dir_, cfg_, {max_rank});
    EXPECT_FALSE(a.ok()) << "loaded";
    return a.ok() ? "" : std::string(a.status().message());
  }
  bool Loads() {
    std::ofstream(dir_ + "/adapter_config.json") << config_.dump();
    WriteAll(path_, tensors_);
    auto a = LoadLoraAdapter(dir_, cfg_, {});
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok();
  }
  RawTensor* Find(const std::string& suffix) {
    for (RawTensor& t : tensors_)
      if (absl::EndsWith(t.name, suffix)) return &t;
    return nullptr;
  }
  ModelConfig cfg_;
  std::string dir_, path_;
  std::vector<RawTensor> tensors_;
  nlohmann::ordered_json config_;
};

TEST_F(RefusalTest, TheUnmodifiedAdapterLoads) {
  auto a = LoadLoraAdapter(dir_, cfg_);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->max_rank, 8);
  EXPECT_EQ((*a)->summary, "q_proj k_proj v_proj o_proj experts.gate_up experts.down");
}

TEST_F(RefusalTest, AnotherBaseModel) {
  ModelConfig mid = *PresetConfig("mid");
  ASSERT_TRUE(GenerateLoraAdapter(dir_, mid, Opts("attention")).ok());
  tensors_ = ReadAll(path_);
  const std::string e = Error();
  EXPECT_NE(e.find("layers.0.self_attn."), std::string::npos) << e;
  EXPECT_NE(e.find("another base model"), std::string::npos) << e;
}

TEST_F(RefusalTest, ConfigFeatures) {
  config_["modules_to_save"] = {"lm_head"};
  EXPECT_NE(Error().find("modules_to_save"), std::string::npos);
  config_["modules_to_save"] = nullptr;
  config_["use_dora"] = true;
  EXPECT_NE(Error().find("DoRA"), std::string::npos);
  config_["use_dora"] = false;
  config_["peft_type"] = "IA3";
  EXPECT_NE(Error().find("not LORA"), std::string::npos);
  config_["peft_type"] = "LORA";
  config_["bias"] = "all";
  EXPECT_NE(Error().find("bias"), std::string::npos);
  config_["bias"] = "none";
  config_["target_parameters"] = {"self_attn.sinks"};
  EXPECT_NE(Error().find("self_attn.sinks"), std::string::npos);
  config_["target_parameters"] = nullptr;
  config_["r"] = 16;
  const std::string e = Error();
  EXPECT_NE(e.find("rank 8, but adapter_config.json gives this module r = 16"), std::string::npos) << e;
  config_["r"] = 8;
  config_["rank_pattern"] = {{"(", 4}};
  EXPECT_NE(Error().find("not a valid regex"), std::string::npos);
  // Patterns a backtracking matcher could take exponential time on are refused
  // before they are compiled; plain names and simple expressions are not.
  for (const char* slow : {"(a+)+", "(q|qq)*_proj", "((o+_proj))*", "(x*){2,}"}) {
    config_["rank_pattern"] = {{slow, 4}};
    EXPECT_NE(Error().find("slow to match"), std::string::npos) << slow;
  }
  config_["rank_pattern"] = {{std::string(300, '.'), 4}};
  EXPECT_NE(Error().find("longer than 256 characters"), std::string::npos);
  // A regex key that matches every q_proj gives them rank 4, which the file's
  // rank-8 factors contradict; a literal key that matches nothing changes nothing.
  config_["rank_pattern"] = {{"layers\\.[0-9]+\\.self_attn\\.(q|k)_proj", 4}};
  EXPECT_NE(Error().find("r = 4"), std::string::npos) << Error();
  config_["rank_pattern"] = {{"self_attn.q_proj", 4}};
  EXPECT_NE(Error().find("r = 4"), std::string::npos) << Error();
  config_["rank_pattern"] = {{"attn.q_proj", 4}};
  EXPECT_TRUE(Loads());
  config_["rank_pattern"] = {{"q_proj", 8}, {"(q)+_proj", 4}};
  EXPECT_TRUE(Loads()) << "the first key that matches, in the file's order, decides";
  config_["rank_pattern"] = {{"(q)+_proj", 4}, {"q_proj", 8}};
  EXPECT_NE(Error().find("r = 4"), std::string::npos);
  config_["rank_pattern"] = nullptr;
}

TEST_F(RefusalTest, RankOverTheServerLimit) {
  const std::string e = Error(/*max_rank=*/4);
  EXPECT_NE(e.find("rank 8 is over the server's --max-lora-rank 4"), std::string::npos) << e;
  EXPECT_NE(e.find(".lora_A.weight"), std::string::npos) << e;
}

TEST_F(RefusalTest, UnknownTargets) {
  RawTensor t = *Find("layers.0.self_attn.q_proj.lora_A.weight");
  t.name = "base_model.model.model.layers.0.mlp.shared_expert.lora_A.weight";
  tensors_.push_back(t);
  std::string e = Error();
  EXPECT_NE(e.find("unknown LoRA target \"mlp.shared_expert\""), std::string::npos) << e;
  tensors_.back().name = "base_model.model.model.embed_tokens.lora_A.weight";
  e = Error();
  EXPECT_NE(e.find("embed_tokens"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown LoRA target"), std::string::npos) << e;
  tensors_.back().name = "base_model.model.model.embed_tokens.lora_embedding_A";
  EXPECT_NE(Error().find("embeddings"), std::string::npos);
  tensors_.back().name = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
  EXPECT_NE(Error().find("DoRA"), std::string::npos);
  tensors_.back().name = "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight";
  e = Error();
  EXPECT_NE(e.find("layer 9 of a model with 4 layers"), std::string::npos) << e;
  tensors_.back().name = "base_model.model.model.layers.0.mlp.experts.gate_up_projs.8.lora_A.weight";
  e = Error();
  EXPECT_NE(e.find("outside this model's 8 experts"), std::string::npos) << e;
}

TEST_F(RefusalTest, BrokenPairsAndShapes) {
  // A lora_A without its lora_B.
  std::vector<RawTensor> all = tensors_;
  std::erase_if(tensors_, [](const RawTensor& t) { return absl::EndsWith(t.name, "layers.1.self_attn.v_proj.lora_B.weight"); });
  std::string e = Error();
  EXPECT_NE(e.find("layers.1.self_attn.v_proj.lora_A.weight has no lora_B partner"), std::string::npos) << e;
  // lora_B whose rank does not match lora_A's.
  tensors_ = all;
  RawTensor* b = Find("layers.2.self_attn.k_proj.lora_B.weight");
  b->shape[1] = 4;
  b->bytes.resize(b->bytes.size() / 2);
  e = Error();
  EXPECT_NE(e.find("layers.2.self_attn.k_proj.lora_B.weight"), std::string::npos) << e;
  // Fused experts whose lora_B fits neither projection.
  tensors_ = all;
  b = Find("layers.0.mlp.experts.lora_B.weight");
  b->shape[0] = 96;
  b->bytes.resize(b->bytes.size() / 64 * 96);
  e = Error();
  EXPECT_NE(e.find("fits neither experts.gate_up_proj"), std::string::npos) << e;
  // Two updates of the same projection.
  tensors_ = all;
  for (RawTensor& t : tensors_) {
    if (absl::StrContains(t.name, "layers.0.mlp.experts.lora_")) {
      t = *Find("layers.0.mlp.experts.base_layer." + t.name.substr(t.name.find("lora_")));
      t.name = absl::StrReplaceAll(t.name, {{".base_layer", ""}});
    }
  }
  e = Error();
  EXPECT_NE(e.find("a second update for experts.gate_up"), std::string::npos) << e;
  // A truncated file: the safetensors reader's strict checks name it.
  tensors_ = all;
  std::ofstream(dir_ + "/adapter_config.json") << config_.dump();
  WriteAll(path_, tensors_);
  std::filesystem::resize_file(path_, std::filesystem::file_size(path_) - 7);
  auto a = LoadLoraAdapter(dir_, cfg_);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("adapter_model.safetensors"), std::string::npos) << a.status();
  // No files at all, or a pickle.
  std::filesystem::remove(path_);
  std::ofstream(dir_ + "/adapter_model.bin") << "x";
  a = LoadLoraAdapter(dir_, cfg_);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("adapter_model.bin"), std::string::npos) << a.status();
  EXPECT_FALSE(LoadLoraAdapter(dir_ + "/nothing", cfg_).ok());
}

}  // namespace
}  // namespace moeserve
