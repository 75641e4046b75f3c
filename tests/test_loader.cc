// config.json parsing and strict safetensors loading: the published gpt-oss
// config, generated checkpoints (single and sharded), zero-copy views, and
// deliberately broken files that must give errors naming file and tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace moeserve {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::TinyCheckpoint;

// gpt-oss-20b config.json as published (spec §1.1).
constexpr char k20bConfig[] = R"({
  "architectures": ["GptOssForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
  "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
  "intermediate_size": 2880,
  "layer_types": ["sliding_attention","full_attention","sliding_attention","full_attention",
    "sliding_attention","full_attention","sliding_attention","full_attention","sliding_attention",
    "full_attention","sliding_attention","full_attention","sliding_attention","full_attention",
    "sliding_attention","full_attention","sliding_attention","full_attention","sliding_attention",
    "full_attention","sliding_attention","full_attention","sliding_attention","full_attention"],
  "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
  "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
  "num_local_experts": 32, "output_router_logits": false, "pad_token_id": 199999,
  "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn",
    "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
    "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
  "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
  "tie_word_embeddings": false, "transformers_version": "4.55.0.dev0", "use_cache": true,
  "vocab_size": 201088})";

TEST(ConfigTest, ParsesPublishedGptOss20b) {
  auto c = ParseModelConfig(k20bConfig, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_hidden_layers, 24);
  EXPECT_EQ(c->hidden_size, 2880);
  EXPECT_EQ(c->num_local_experts, 32);
  EXPECT_EQ(c->num_experts_per_tok, 4);
  EXPECT_EQ(c->vocab_size, 201088);
  EXPECT_EQ(c->sliding_window, 128);
  EXPECT_DOUBLE_EQ(c->rope_theta, 150000);
  EXPECT_DOUBLE_EQ(c->swiglu_limit, 7.0);
  EXPECT_TRUE(c->has_rope_scaling);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_FALSE(c->rope_scaling.truncate);
  EXPECT_TRUE(c->experts_mxfp4());
  EXPECT_TRUE(c->is_sliding(0));
  EXPECT_FALSE(c->is_sliding(1));
  EXPECT_EQ(c->eos_token_id, 200002);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{200002});
  // Round trip through our own writer.
  auto again = ParseModelConfig(c->ToJson(), "again");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ToJson(), c->ToJson());
}

// Stop ids come from the model: config.json's eos_token_id (a number or a
// list) and generation_config.json's, in that order, without repeats.
TEST(ConfigTest, EosIdsFromConfigAndGenerationConfig) {
  const std::string dir = testing::TinyCheckpoint("eos", "f32", "f32");
  auto c = LoadModelConfig(dir);  // as generated: 200002, then [200002, 199999, 200012]
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{200002, 199999, 200012}));
  std::string text;
  {
    std::ifstream in(dir + "/config.json");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string key = "\"eos_token_id\": 200002";
  ASSERT_NE(text.find(key), std::string::npos);
  std::ofstream(dir + "/config.json") << std::string(text).replace(text.find(key), key.size(), "\"eos_token_id\": [5, 6]");
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": 6, "bos_token_id": 1})";
  c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(c->eos_token_id, 5);
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": "</s>"})";
  c = LoadModelConfig(dir);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(c.status().message()).find("generation_config.json"), std::string::npos) << c.status();
  std::ofstream(dir + "/generation_config.json") << "{not json";
  EXPECT_FALSE(LoadModelConfig(dir).ok());
  std::filesystem::remove(dir + "/generation_config.json");
  c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{5, 6}));
}

TEST(ConfigTest, RejectsBadConfigsWithClearErrors) {
  auto with = [](const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json j = nlohmann::json::parse(k20bConfig);
    f(j);
    return ParseModelConfig(j.dump(), "dir/config.json").status();
  };
  auto expect_error = [](const absl::Status& s, const std::string& needle) {
    EXPECT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
    EXPECT_NE(std::string(s.message()).find("dir/config.json"), std::string::npos) << s;
  };
  expect_error(ParseModelConfig("{not json", "dir/config.json").status(), "not valid JSON");
  expect_error(with([](auto& j) { j.erase("hidden_size"); }), "hidden_size");
  expect_error(with([](auto& j) { j["hidden_size"] = "2880"; }), "hidden_size");
  expect_error(with([](auto& j) { j["model_type"] = "llama"; }), "model_type");
  expect_error(with([](auto& j) { j["num_key_value_heads"] = 7; }), "multiple");
  expect_error(with([](auto& j) { j["layer_types"].erase(0); }), "layer_types");
  expect_error(with([](auto& j) { j["layer_types"][3] = "chunked"; }), "unknown layer type");
  expect_error(with([](auto& j) { j["rope_scaling"]["rope_type"] = "linear"; }), "rope_type");
  expect_error(with([](auto& j) { j["quantization_config"]["quant_method"] = "gptq"; }), "quant_method");
  expect_error(with([](auto& j) { j["num_hidden_layers"] = -1; }), "positive");
  expect_error(with([](auto& j) { j["num_experts_per_tok"] = 64; }), "num_experts_per_tok");
}

TEST(LoaderTest, GeneratedCheckpointLoadsZeroCopy) {
  const std::string dir = TinyCheckpoint("zerocopy", "mxfp4", "bf16");
  auto w = LoadModelWeights(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  const auto& ck = *(*w)->checkpoint;
  // Large weights point into the mapped file, not into a copy.
  const TensorView* embed = ck.Find("model.embed_tokens.weight");
  EXPECT_EQ((*w)->embed.data, embed->data);
  EXPECT_TRUE((*w)->embed.owned.empty());
  EXPECT_EQ((*w)->layers[0].q.data, ck.Find("model.layers.0.self_attn.q_proj.weight")->data);
  EXPECT_EQ((*w)->layers[1].gate_up.blocks, ck.Find("model.layers.1.mlp.experts.gate_up_proj_blocks")->data);
  EXPECT_EQ((*w)->layers.size(), 4u);
  // HF names, shapes and dtypes (spec §3.2 at the tiny shape).
  EXPECT_EQ(ck.Find("model.layers.0.mlp.experts.gate_up_proj_blocks")->ShapeString(), "[8, 128, 2, 16]");
  EXPECT_EQ(ck.Find("model.layers.0.mlp.experts.down_proj_scales")->ShapeString(), "[8, 64, 2]");
  EXPECT_EQ(ck.Find("model.layers.0.self_attn.sinks")->dtype, DType::kBF16);
  // Same seed, same bytes.
  const std::string again = TinyCheckpoint("zerocopy2", "mxfp4", "bf16");
  std::ifstream a(dir + "/model-00001-of-00001.safetensors", std::ios::binary),
      b(again + "/model-00001-of-00001.safetensors", std::ios::binary);
  EXPECT_TRUE(std::equal(std::istreambuf_iterator<char>(a), {}, std::istreambuf_iterator<char>(b)));
}

TEST(LoaderTest, ShardedCheckpointWithIndex) {
  const std::string dir = TempDir("sharded");
  CheckpointGenOptions o;
  o.config = *PresetConfig("tiny");
  o.max_shard_bytes = 100 * 1024;
  ASSERT_TRUE(GenerateCheckpoint(dir, o).ok());
  int shards = 0;
  for (auto& e : fs::directory_iterator(dir)) shards += e.path().extension() == ".safetensors";
  EXPECT_GE(shards, 3);
  auto w = LoadModelWeights(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  nlohmann::json idx = nlohmann::json::parse(std::ifstream(dir + "/model.safetensors.index.json"));
  size_t total = 0;
  for (const auto& f : (*w)->checkpoint->files())
    for (const auto& [n, v] : f->tensors()) total += v.nbytes;
  EXPECT_EQ(idx["metadata"]["total_size"].get<size_t>(), total);
}

// Writes a single-file checkpoint with `header` and `data_bytes` of data.
std::string WriteRaw(const std::string& dir, const std::string& header, size_t data_bytes, uint64_t len_override = 0) {
  fs::create_directories(dir);
  const std::string p = dir + "/model.safetensors";
  std::ofstream f(p, std::ios::binary);
  const uint64_t len = len_override ? len_override : header.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f << header;
  f << std::string(data_bytes, '\0');
  return p;
}

TEST(LoaderTest, BrokenSafetensorsGiveErrorsNamingFileAndTensor) {
  const std::string base = TempDir("broken");
  struct Bad {
    std::string name, header;
    size_t data;
    uint64_t len_override;
    std::string needle;
  };
  const std::vector<Bad> cases = {
      {"short", "", 0, 0, "too short"},
      {"hugelen", "{}", 0, 1ull << 40, "header length"},
      {"notjson", "{\"a\": [1, 2", 16, 0, "not a JSON object"},
      {"dtype", R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8, 0, "tensor w: unsupported dtype"},
      {"shape", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, 0, "tensor w: bad shape"},
      {"outside", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8, 0, "tensor w: data_offsets"},
      {"mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16, 0, "tensor w: holds 16 bytes"},
      {"overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, 0, "overlap"},
      {"offsets", R"({"w":{"dtype":"F32","shape":[2]}})", 8, 0, "tensor w: missing data_offsets"},
  };
  for (const Bad& b : cases) {
    std::string path = WriteRaw(base + "/" + b.name, b.header, b.data, b.len_override);
    if (b.name == "short") fs::resize_file(path, 5);
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok()) << b.name;
    EXPECT_NE(std::string(f.status().message()).find(b.needle), std::string::npos) << b.name << ": " << f.status();
    EXPECT_NE(std::string(f.status().message()).find(path), std::string::npos) << b.name << ": " << f.status();
  }
}

TEST(LoaderTest, TruncatedAndMismatchedCheckpoints) {
  // Truncated shard.
  {
    const std::string dir = TinyCheckpoint("trunc", "mxfp4", "bf16");
    const std::string shard = dir + "/model-00001-of-00001.safetensors";
    fs::resize_file(shard, fs::file_size(shard) - 1000);
    auto w = LoadModelWeights(dir);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(std::string(w.status().message()).find(shard), std::string::npos) << w.status();
    EXPECT_NE(std::string(w.status().message()).find("outside the data section"), std::string::npos) << w.status();
  }
  // Config that does not match the tensors (wrong hidden size).
  {
    const std::string dir = TinyCheckpoint("mismatch", "mxfp4", "bf16");
    nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
    j["hidden_size"] = 96;
    std::ofstream(dir + "/config.json") << j.dump();
    auto w = LoadModelWeights(dir);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(std::string(w.status().message()).find("model.embed_tokens.weight is BF16 [512, 64], expected BF16 [512, 96]"),
              std::string::npos)
        << w.status();
  }
  // A tensor missing from its shard although the index lists it.
  {
    const std::string dir = TinyCheckpoint("missing", "mxfp4", "bf16");
    nlohmann::json idx = nlohmann::json::parse(std::ifstream(dir + "/model.safetensors.index.json"));
    idx["weight_map"]["model.layers.9.extra"] = "model-00001-of-00001.safetensors";
    std::ofstream(dir + "/model.safetensors.index.json") << idx.dump();
    auto w = LoadModelWeights(dir);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(std::string(w.status().message()).find("model.layers.9.extra"), std::string::npos) << w.status();
  }
  // A config with more layers than the checkpoint holds.
  {
    const std::string dir = TinyCheckpoint("fewer", "mxfp4", "bf16");
    nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
    j["num_hidden_layers"] = 5;
    j["layer_types"].push_back("sliding_attention");
    std::ofstream(dir + "/config.json") << j.dump();
    auto w = LoadModelWeights(dir);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(std::string(w.status().message()).find("missing tensor model.layers.4."), std::string::npos) << w.status();
  }
  // A shard name that escapes the model directory.
  {
    const std::string dir = TinyCheckpoint("escape", "mxfp4", "bf16");
    nlohmann::json idx = nlohmann::json::parse(std::ifstream(dir + "/model.safetensors.index.json"));
    idx["weight_map"]["model.norm.weight"] = "../../etc/passwd";
    std::ofstream(dir + "/model.safetensors.index.json") << idx.dump();
    auto w = LoadModelWeights(dir);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(std::string(w.status().message()).find("leaves the model directory"), std::string::npos) << w.status();
  }
  // No checkpoint at all.
  EXPECT_EQ(LoadModelWeights(TempDir("empty")).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace moeserve
